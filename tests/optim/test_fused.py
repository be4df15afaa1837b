"""The fused path's grouping (`_functional._run_fused`): one compiled call per param group and
dtype, eager fallback for tensors whose layouts differ; it must equal the loop path."""
import pytest
import torch
from harness import assert_optimizers_match

from gatelab.optim import _functional
from gatelab.optim.adabelief import AdaBelief
from gatelab.optim.amsgrad import AMSGrad


def _mixed_params():
    """float64 and float32 params in one group, plus one whose grad layout differs."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(7, generator=g),
          torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn((), generator=g)]
    return [p.requires_grad_() for p in ps]


def _set_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if i == 2:  # contiguous param, transposed (non-contiguous) grad: not flattenable
            grad = torch.randn(p.shape[::-1], generator=g, dtype=p.dtype).t()
        p.grad = grad


def _run(opt_cls, kwargs, steps=7):
    ref = _mixed_params()
    fused = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = opt_cls(ref, foreach=False, **kwargs)
    opt_fused = opt_cls(fused, fused=True, **kwargs)
    for t in range(steps):
        for ps, opt in ((ref, opt_ref), (fused, opt_fused)):
            _set_grads(ps, t)
            opt.step()
    assert not fused[2].grad.is_contiguous()
    # float32 params: the compiled kernel may reassociate float ops, hence fp32 rounding
    assert_optimizers_match(opt_ref, opt_fused, ref[::2], fused[::2], atol=1e-12)
    assert_optimizers_match(opt_ref, opt_fused, ref[1::2], fused[1::2], atol=1e-6)


@pytest.mark.parametrize("opt_cls, kwargs", [(AMSGrad, dict(lr=0.1, weight_decay=0.1)),
                                             (AdaBelief, dict(lr=0.1))])
def test_fused_plumbing_mixed_dtypes_and_layouts(opt_cls, kwargs, monkeypatch):
    """Eager group runner (no compile): the bucketing by dtype, the (K, n) scalars and the
    layout fallback give the loop path's result."""
    calls = []

    def eager(fn):
        def run(tensor_lists, scalars_KN, names, consts):
            calls.append((len(tensor_lists[0]), tensor_lists[0][0].dtype, scalars_KN.shape))
            return fn(tensor_lists, scalars_KN, names, consts)
        return run

    monkeypatch.setattr(_functional, "_compiled", eager)
    _run(opt_cls, kwargs)
    # the (4, 6) float64 param falls back to the eager kernel: per step one float64 call
    # with 1 tensor and one float32 call with 2
    assert (1, torch.float64) in {(n, d) for n, d, _ in calls}
    assert (2, torch.float32) in {(n, d) for n, d, _ in calls}


@pytest.mark.slow
def test_fused_compiled_mixed_dtypes_and_layouts():
    ok, why = _functional._compile_available()
    if not ok:
        pytest.skip(why)
    _run(AMSGrad, dict(lr=0.1, weight_decay=0.1))
