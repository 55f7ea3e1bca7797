"""Equivariant normalisation of spherical-harmonic features (EquiformerV2 §4.2).

All three variants normalise each node's features ``[N, (lmax+1)**2, C]`` by one invariant
scale per node, so they commute with rotations:

* ``layer_norm``: each degree normalised separately (l = 0 also centred).
* ``layer_norm_sh`` (*separable layer norm*, the released models): an ordinary LayerNorm on
  the l = 0 channels, and one shared RMS over all degrees l > 0, each degree weighted equally
  ("balanced") whatever its 2l+1 components.
* ``rms_norm_sh``: one balanced RMS over all degrees (l = 0 centred), affine per degree.
"""

from __future__ import annotations

import torch
from torch import nn

from eqv2calc.model.constants import ExactConstants
from eqv2calc.model.so3 import degree_index


def _degree_balance(lmax: int, start: int) -> torch.Tensor:
    """Weights ``1 / ((2l+1) * n_degrees)`` per coefficient for degrees ``start..lmax`` (float64)."""
    weights = []
    n_deg = lmax + 1 - start
    for l in range(start, lmax + 1):
        weights += [1.0 / ((2 * l + 1) * n_deg)] * (2 * l + 1)
    return torch.tensor(weights, dtype=torch.float64)


class SeparableLayerNorm(ExactConstants):
    """``layer_norm_sh``: LayerNorm on l = 0, balanced RMS norm shared by all l > 0."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.lmax, self.channels, self.eps = lmax, channels, eps
        self.scalar_norm = nn.LayerNorm(channels, eps=eps)
        self.degree_weight = nn.Parameter(torch.ones(lmax, channels))  # for l = 1..lmax
        self.register_constant("balance", _degree_balance(lmax, 1))
        self.register_buffer("degree_of", degree_index(lmax, start=1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars = self.scalar_norm(x[:, :1])
        if self.lmax == 0:
            return scalars
        vectors = x[:, 1:]
        # balanced mean square over coefficients, then mean over channels → [N, 1, 1]
        ms = torch.einsum("nic,i->nc", vectors.pow(2), self.balance.to(x.dtype)).mean(dim=1)
        inv_rms = (ms + self.eps).rsqrt().view(-1, 1, 1)
        weight = self.degree_weight.index_select(0, self.degree_of).unsqueeze(0)
        return torch.cat((scalars, vectors * inv_rms * weight), dim=1)


class DegreeLayerNorm(nn.Module):
    """``layer_norm``: every degree normalised on its own; l = 0 centred and biased."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.lmax, self.channels, self.eps = lmax, channels, eps
        self.degree_weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for l in range(self.lmax + 1):
            feat = x[:, l * l : (l + 1) ** 2]
            if l == 0:
                feat = feat - feat.mean(dim=2, keepdim=True)
            ms = feat.pow(2).mean(dim=1, keepdim=True).mean(dim=2, keepdim=True)
            feat = feat * (ms + self.eps).rsqrt() * self.degree_weight[l].view(1, 1, -1)
            if l == 0:
                feat = feat + self.bias.view(1, 1, -1)
            out.append(feat)
        return torch.cat(out, dim=1)


class BalancedRMSNorm(ExactConstants):
    """``rms_norm_sh``: l = 0 centred, one balanced RMS over all degrees, affine per degree."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.lmax, self.channels, self.eps = lmax, channels, eps
        self.degree_weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_constant("balance", _degree_balance(lmax, 0))
        self.register_buffer("degree_of", degree_index(lmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars = x[:, :1] - x[:, :1].mean(dim=2, keepdim=True)
        x = torch.cat((scalars, x[:, 1:]), dim=1)
        ms = torch.einsum("nic,i->nc", x.pow(2), self.balance.to(x.dtype)).mean(dim=1)
        inv_rms = (ms + self.eps).rsqrt().view(-1, 1, 1)
        out = x * inv_rms * self.degree_weight.index_select(0, self.degree_of).unsqueeze(0)
        out[:, 0] = out[:, 0] + self.bias
        return out


def make_norm(norm_type: str, lmax: int, channels: int) -> nn.Module:
    """The normalisation named by a checkpoint's ``norm_type``."""
    classes = {
        "layer_norm": DegreeLayerNorm,
        "layer_norm_sh": SeparableLayerNorm,
        "rms_norm_sh": BalancedRMSNorm,
    }
    if norm_type not in classes:
        raise ValueError(
            f"norm_type {norm_type!r} is not supported; expected one of {sorted(classes)}"
        )
    return classes[norm_type](lmax, channels)
