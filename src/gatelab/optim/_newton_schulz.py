"""Quintic Newton-Schulz orthogonalisation (Muon's LMO for the spectral norm).

``zeropower(G)`` approximates ``U V^T`` of ``G = U S V^T`` with 5 iterations of
``X <- a X + (b A + c A^2) X``, ``A = X X^T``, ``(a, b, c) = (3.4445, -4.7750, 2.0315)``
(Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024). The
coefficients trade accuracy for speed: singular values land in roughly [0.7, 1.2], not at 1.
X is first scaled to Frobenius norm <= 1 (so its spectral norm is <= 1) and the iteration
runs on the wide orientation (rows <= cols), so ``A`` is the smaller Gram matrix.

``zeropower_batched`` does the same for a stack ``(k, m, n)`` of equally shaped matrices with
batched matmuls: the multi-tensor path of the optimizers.
"""
from __future__ import annotations

import torch
from torch import Tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def zeropower(G: Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> Tensor:
    """Approximate orthogonalisation of a 2-D tensor (computed in G's dtype)."""
    if G.ndim != 2:
        raise ValueError(f"zeropower needs a 2-D tensor, got shape {tuple(G.shape)}")
    return zeropower_batched(G.unsqueeze(0), steps, eps).squeeze(0)


def zeropower_batched(G_KMN: Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> Tensor:
    """`zeropower` of each matrix of a ``(k, m, n)`` stack."""
    a, b, c = NS_COEFFS
    X = G_KMN / (torch.linalg.matrix_norm(G_KMN, keepdim=True) + eps)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT  # (k, n, m): rows <= cols
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X
