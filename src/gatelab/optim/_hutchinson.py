"""Hutchinson's estimate of the Hessian diagonal, ``z * (H z)`` with Rademacher z (shared by
SANIA and OASIS).

The optimizer's closure must build a differentiable gradient::

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=True)
        return loss

``hutchinson_diag`` then takes one Hessian-vector product for all parameters at once
(``autograd.grad(grads, params, z)``), returns ``z * Hz`` per parameter and detaches the
``.grad`` tensors (breaking the param -> grad -> graph cycle that ``create_graph`` leaves).

Each z is drawn from its own generator seeded with (seed, step, parameter index), so the draws
are reproducible, identical on the loop and foreach paths, and survive ``state_dict``
round trips without saving generator state.
"""
from __future__ import annotations

import torch
from torch import Tensor


def rademacher(p: Tensor, seed: int, step: int, index: int) -> Tensor:
    """A ±1 tensor shaped like p, determined by (seed, step, index)."""
    gen = torch.Generator(device=p.device)
    gen.manual_seed((seed * 1_000_003 + step * 10_007 + index) % (2**63 - 1))
    z = torch.randint(0, 2, p.shape, generator=gen, device=p.device)
    return z.to(p.dtype).mul_(2).sub_(1)


def hutchinson_diag(params: list[Tensor], zs: list[Tensor]) -> list[Tensor]:
    """``z * (H z)`` for each param from one HVP through the params' graph-carrying ``.grad``.

    Parameters whose gradient does not depend on any parameter (no graph, e.g. a linear
    term) get zeros. Raises RuntimeError when no gradient carries a graph: the closure
    forgot ``backward(create_graph=True)``.
    """
    grads = [p.grad for p in params]
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    if params and not live:
        raise RuntimeError(
            "this optimizer needs Hessian-vector products: the closure must call "
            "loss.backward(create_graph=True) (see the optimizer's docstring)")
    out = [torch.zeros_like(p) for p in params]
    if live:
        with torch.enable_grad():
            hz = torch.autograd.grad([grads[i] for i in live], params, [zs[i] for i in live],
                                     allow_unused=True)
        for i, (h, z) in enumerate(zip(hz, zs)):
            if h is not None:
                out[i] = (z * h).detach()
    for p in params:
        p.grad = p.grad.detach()
    return out
