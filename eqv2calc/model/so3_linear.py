"""Degree-wise linear map on spherical-harmonic features (equivariant channel mixing)."""

from __future__ import annotations

import math

import torch
from torch import nn


class DegreeWiseLinear(nn.Module):
    """``y_l = W_l x_l`` for each degree ``l`` (shared across orders m), bias on ``l = 0`` only.

    ``weight`` is ``[lmax + 1, out, in]``; input ``[N, (lmax+1)**2, in]`` → ``[N, (lmax+1)**2, out]``.
    A per-degree weight keeps the map equivariant; the bias may only touch the invariant part.
    """

    def __init__(self, in_features: int, out_features: int, lmax: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.lmax = in_features, out_features, lmax
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(
            torch.empty(lmax + 1, out_features, in_features).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], x.shape[1], self.out_features, dtype=x.dtype, device=x.device)
        for l in range(self.lmax + 1):  # lmax + 1 small matmuls, no per-m copy
            sl = slice(l * l, (l + 1) ** 2)
            out[:, sl] = x[:, sl] @ self.weight[l].t()
        out[:, 0] += self.bias
        return out
