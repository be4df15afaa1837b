"""Expert parallelism on 2 gloo processes equals the single-process MoE layer (float64):
outputs, input / router / expert gradients, the global load-balance loss and load
statistics, zero-token experts; and clear errors. One spawn runs every distributed case; tests compare."""
import pytest
import torch
from torch import nn

from gatelab.core.aux import AuxOutputs, ForwardContext
from gatelab.core.errors import ConfigError
from gatelab.moe.dispatch import dispatch_reference
from gatelab.moe.expert_parallel import MoEParallel, parallelize_moe
from gatelab.moe.experts import Experts
from gatelab.moe.layer import MoEConfig, MoELayer
from gatelab.routing.decision import RoutingDecision
from gatelab.train.distributed import spawn_local

WORLD, T, D = 2, 6, 16  # T tokens per rank


def _layer(backend: str) -> MoELayer:
    torch.manual_seed(0)
    layer = MoELayer(D, MoEConfig(n_experts=4, k=2, hidden=24, backend=backend, lb_coef=0.1, z_coef=0.0))
    return layer.double()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * T, D, generator=g, dtype=torch.float64), \
        torch.randn(WORLD * T, D, generator=g, dtype=torch.float64)


def _run_layer(layer: MoELayer, x_TD: torch.Tensor, g_TD: torch.Tensor, lb_scale: float):
    """Output, aux lb loss, gradients of  sum(y * g) + lb_scale * lb_loss, and load statistics."""
    x_TD = x_TD.clone().requires_grad_(True)
    aux = AuxOutputs()
    y_TD = layer(x_TD.unsqueeze(0), ForwardContext(aux=aux)).squeeze(0)
    lb = aux.losses["lb_loss"]
    ((y_TD * g_TD).sum() + lb_scale * lb).backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    loads = {k: aux.stats[k] for k in ("tokens_per_expert", "load_cv", "max_vio")}
    return y_TD.detach(), lb.detach(), x_TD.grad, grads, loads


def _zero_token_decisions():
    """Global decision over 2T tokens: rank 0's tokens use expert 0 only (rank 1 receives
    nothing from rank 0); no token uses expert 2 (an expert with zero tokens anywhere)."""
    tok = torch.arange(WORLD * T).repeat_interleave(2)
    exp0 = torch.tensor([0, 1]).repeat(T)
    exp1 = torch.tensor([0, 1, 3, 1, 3, 3] * (T // 3))[: 2 * T]
    weight = torch.linspace(0.1, 0.9, 2 * WORLD * T, dtype=torch.float64)
    return tok, torch.cat([exp0, exp1]), weight


def _worker(rank: int, out_path: str) -> None:
    import torch.distributed as dist

    torch.distributed.init_process_group("gloo")
    x_TD, g_TD = _inputs()
    rows = slice(rank * T, (rank + 1) * T)
    res = {}
    for backend in ("dropless", "reference"):
        layer = _layer(backend)
        parallelize_moe(layer)
        res[backend] = _run_layer(layer, x_TD[rows], g_TD[rows], lb_scale=1 / WORLD)
    # hand-made routing with zero-token experts, through MoEParallel.dispatch directly
    torch.manual_seed(0)
    experts = Experts(4, D, 24).double()
    par = MoEParallel()
    local = par.shard(experts)
    tok, exp, w = _zero_token_decisions()
    mine = slice(rank * 2 * T, (rank + 1) * 2 * T)
    x = x_TD[rows].clone().requires_grad_(True)
    wr = w[mine].clone().requires_grad_(True)
    dec = RoutingDecision(tok[mine] - rank * T, exp[mine], wr, T, 4)
    y = par.dispatch(x, dec, local, "dropless")
    (y * g_TD[rows]).sum().backward()
    res["zero"] = (y.detach(), x.grad, wr.grad, local.w_in.grad, local.w_out.grad)
    try:
        par.local_experts(3)
    except ConfigError as e:
        res["not_divisible"] = str(e)
    dist.barrier()
    torch.save(res, f"{out_path}.{rank}")


@pytest.fixture(scope="module")
def ep_results(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ep") / "res")
    spawn_local(_worker, WORLD, path)
    return [torch.load(f"{path}.{r}") for r in range(WORLD)]


@pytest.mark.parametrize("backend", ["dropless", "reference"])
def test_layer_matches_single_process(ep_results, backend):
    x_TD, g_TD = _inputs()
    y_ref, lb_ref, gx_ref, grads_ref, loads_ref = _run_layer(_layer(backend), x_TD, g_TD, lb_scale=1.0)
    y = torch.cat([r[backend][0] for r in ep_results])
    gx = torch.cat([r[backend][2] for r in ep_results])
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-12)
    # global-balance loss: the mean of the per-rank losses is the single-process loss
    torch.testing.assert_close(sum(r[backend][1] for r in ep_results) / WORLD, lb_ref, rtol=0, atol=1e-12)
    for name, g_ref in grads_ref.items():
        if name.startswith("experts."):  # rank r holds rows [2r, 2r + 2)
            got = torch.cat([r[backend][3][name] for r in ep_results])
        else:  # replicated (router): a data-parallel all-reduce sums the ranks' gradients
            got = sum(r[backend][3][name] for r in ep_results)
        torch.testing.assert_close(got, g_ref, rtol=0, atol=1e-12, msg=name)
    for r in ep_results:  # load statistics of the global batch on every rank
        for key, value in loads_ref.items():
            torch.testing.assert_close(r[backend][4][key], value, rtol=0, atol=1e-6, msg=key)


def test_zero_token_experts_match_reference(ep_results):
    x_TD, g_TD = _inputs()
    torch.manual_seed(0)
    experts = Experts(4, D, 24).double()
    tok, exp, w = _zero_token_decisions()
    x = x_TD.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    y_ref = dispatch_reference(x, RoutingDecision(tok, exp, w, WORLD * T, 4), experts)
    (y_ref * g_TD).sum().backward()
    got = [torch.cat([r["zero"][i] for r in ep_results]) for i in range(5)]
    for a, b in zip(got, (y_ref.detach(), x.grad, w.grad, experts.w_in.grad, experts.w_out.grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert experts.w_in.grad[2].abs().max() == 0  # expert 2 saw no token


def test_errors(ep_results):
    assert "n_experts (3) divisible by the number of ranks (2)" in ep_results[0]["not_divisible"]
    with pytest.raises(ConfigError, match="needs torch.distributed initialised"):
        parallelize_moe(nn.Sequential(_layer("dropless")))


def test_shard_keeps_ternary_quantisation():
    """A sharded expert block keeps its `quant` (ternary experts do not silently run in fp)."""
    import torch.distributed as dist

    from gatelab.quant import ExpertQuant

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        experts = Experts(4, 8, 16, "swiglu")
        experts.quant = ExpertQuant()
        local = MoEParallel().shard(experts)
        assert local.quant is experts.quant
        x = torch.randn(5, 8)
        assert torch.equal(local.forward_one(1, x), experts.forward_one(1, x))
        local.quant = None
        assert not torch.allclose(local.forward_one(1, x), experts.forward_one(1, x))
    finally:
        dist.destroy_process_group()
