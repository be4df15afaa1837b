"""Post-hoc checkpoint analysis: per-layer statistic shapes, invariants, caching, RNG isolation."""
import json
import os
import shutil

import pytest
import torch
import yaml

from gatelab.config import load_config
from gatelab.depth.routed import capacity_tokens
from gatelab.lab.analysis import ANALYSIS_FILE, per_layer, run_analysis, sink_per_layer
from gatelab.train import Trainer

B, T, E, K, N_LAYER = 4, 16, 4, 2, 2

TINY = {
    "data": {"corpus": {"name": "synthetic", "n_docs": 300}, "seq_len": T, "batch_size": B},
    "model": {"d_model": 16, "n_layer": N_LAYER, "block": {"mixer": {"name": "attention", "n_head": 2}}},
    "train": {"steps": 3},
    "eval": {"every": 0, "batches": 2},
    "log": {"every": 1, "progress": False},
}


def train_tiny(out_dir, overrides):
    cfg = load_config(None, overrides, base=TINY)
    Trainer(cfg, out_dir).fit()
    return out_dir


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("moe") / "run",
                      [("model.block.ffn.name", "moe"), ("model.block.ffn.n_experts", str(E)),
                       ("model.block.ffn.k", str(K))])


@pytest.fixture(scope="module")
def mod_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("mod") / "run",
                      [("model.depth.name", "mod"), ("model.depth.capacity", "0.5"), ("model.depth.every", "2"),
                       ("model.depth.sampling", "topk")])


def test_moe_analysis_shapes_and_invariants(moe_run):
    a = run_analysis(moe_run)
    assert (moe_run / ANALYSIS_FILE).is_file()
    assert a["checkpoint"] == "ckpt-0000003" and a["step"] == 3 and a["n_layer"] == N_LAYER
    assert a["batches"] == 2 and a["tokens_per_batch"] == B * T
    load = per_layer(a["stats"], "tokens_per_expert")
    assert sorted(load) == [(0, "ffn"), (1, "ffn")]
    for vec in load.values():
        assert len(vec) == E and sum(vec) == pytest.approx(B * T * K)  # every token to k experts
    hist = per_layer(a["stats"], "experts_per_token_hist")
    for (layer, _), h in hist.items():
        assert len(h) == E + 1 and sum(h) == pytest.approx(1.0)
        assert h[K] == pytest.approx(1.0)  # fixed top-k
        mean_k = sum(i * p for i, p in enumerate(h))
        assert mean_k == pytest.approx(a["stats"][f"layer{layer}/ffn/experts_per_token"])
    mi = per_layer(a["stats"], "domain_mi")
    assert len(mi) == N_LAYER and all(v >= 0 for v in mi.values())
    sink = sink_per_layer(a["sink"])
    assert sorted(sink) == [0, 1] and all(0 < v < 1 for v in sink.values())


def test_analysis_matches_a_direct_forward_over_the_eval_batches(moe_run):
    """The averaged load equals the load counted from the routers' decisions batch by batch."""
    a = run_analysis(moe_run)
    trainer = Trainer(load_config(str(moe_run / "config.yaml")), moe_run)
    from gatelab.train.checkpoint import load_weights

    load_weights(moe_run / "checkpoints" / "ckpt-0000003", trainer.model)
    trainer.model.eval()
    counts = torch.zeros(N_LAYER, E, dtype=torch.float64)
    decisions = []
    for i, block in enumerate(trainer.model.blocks):
        router = block.ffn.router
        router.register_forward_hook(lambda m, inp, out, i=i: decisions.append((i, out)))
    with torch.no_grad():
        for batch in trainer.eval_set:
            trainer.model(batch.x, domains_BT=batch.domains)
    for i, d in decisions:
        for e in d.expert_idx_A.tolist():
            counts[i, e] += 1
    counts /= len(trainer.eval_set)
    load = per_layer(a["stats"], "tokens_per_expert")
    for i in range(N_LAYER):
        assert load[(i, "ffn")] == pytest.approx(counts[i].tolist())


def test_mod_analysis_counts_processed_tokens_per_routed_layer(mod_run):
    a = run_analysis(mod_run)
    processed = per_layer(a["stats"], "processed")
    assert processed == {(1, ""): pytest.approx(capacity_tokens(T, 0.5) / T)}  # every=2: only block 1 routed


def test_analysis_is_cached_and_recomputed_for_a_newer_checkpoint(moe_run, monkeypatch):
    first = run_analysis(moe_run)
    import gatelab.lab.analysis as analysis

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although the cache is current")

    monkeypatch.setattr(analysis, "analyze_checkpoint", fail)
    assert run_analysis(moe_run) == first
    weights = moe_run / "checkpoints" / "ckpt-0000003" / "model.safetensors"
    later = (moe_run / ANALYSIS_FILE).stat().st_mtime + 10
    os.utime(weights, (later, later))
    with pytest.raises(AssertionError, match="recomputed"):
        run_analysis(moe_run)
    monkeypatch.undo()
    assert run_analysis(moe_run)["stats"] == first["stats"]
    assert json.loads((moe_run / ANALYSIS_FILE).read_text())["checkpoint"] == "ckpt-0000003"


def test_analysis_leaves_the_callers_rng_alone(moe_run):
    state = torch.get_rng_state()
    run_analysis(moe_run, refresh=True)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_gpu_runs_config_is_analysed_on_the_device_at_hand(moe_run, tmp_path):
    run = shutil.copytree(moe_run, tmp_path / "gpu_run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"].update(device="cuda", precision="bf16", compile=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    load = run_analysis(run, refresh=True)["stats"]["layer0/ffn/tokens_per_expert"]
    assert len(load) == E and sum(load) == pytest.approx(B * T * K)
    if not torch.cuda.is_available():  # the same fp32 CPU forward as the original config's
        assert load == run_analysis(moe_run)["stats"]["layer0/ffn/tokens_per_expert"]


def test_run_without_checkpoint_has_no_analysis(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    assert run_analysis(tmp_path) is None
    assert not (tmp_path / ANALYSIS_FILE).exists()


def test_per_layer_parses_scoped_names():
    stats = {"layer0/ffn/router_entropy": 1.0, "layer12/ffn/router_entropy": 2.0, "layer1/processed": 0.5,
             "layer1/processed/domain0": 0.4, "layer2/mixer_gate/processed": 0.3, "f_attn/layer0": 0.1,
             "router_entropy": 9.0}
    assert per_layer(stats, "router_entropy") == {(0, "ffn"): 1.0, (12, "ffn"): 2.0}
    assert per_layer(stats, "processed") == {(1, ""): 0.5, (2, "mixer_gate"): 0.3}
    assert sink_per_layer({"f_attn": 0.2, "f_attn/layer0": 0.1, "f_attn_max_head/layer0": 0.3}) == {0: 0.1}
