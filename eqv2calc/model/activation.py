"""Non-linearities for spherical-harmonic features (EquiformerV2 §4.1, §4.3).

* :class:`SmoothLeakyReLU` on invariant attention logits.
* :class:`GateActivation`: SiLU on l = 0, sigmoid gates (from extra scalars) on l > 0.
* :class:`S2Activation`: SiLU applied point-wise to the function the coefficients describe on
  the sphere (project to an S² grid, apply, project back).
* :class:`SeparableS2Activation`: SiLU on separate invariant scalars for l = 0, the S2
  activation for l > 0 — the "separable S2 activation" of the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from eqv2calc.model.s2_grid import SphereGrid


class SmoothLeakyReLU(nn.Module):
    """``((1+a)/2) x + ((1-a)/2) x (2 sigmoid(x) - 1)``, a smooth leaky ReLU with slope ``a``."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        return 0.5 * (1 + a) * x + 0.5 * (1 - a) * x * (2 * torch.sigmoid(x) - 1)


class GateActivation(nn.Module):
    """Gate: SiLU on the l = 0 row, each degree l > 0 scaled by ``sigmoid(gate_l)``.

    ``gates``: ``[N, lmax * C]`` (one gate per degree and channel); ``x``: ``[N, R, C]`` with
    orders truncated to ``|m| <= mmax``: node features (degree-major), or with ``edge_frame``
    edge-frame features (order-major: m = 0 for l = 0..lmax, then +m and -m for l = m..lmax).
    The first row is l = 0 in both layouts.
    """

    def __init__(self, lmax: int, mmax: int, channels: int, *, edge_frame: bool) -> None:
        super().__init__()
        self.lmax, self.channels = lmax, channels
        if edge_frame:
            degrees = list(range(lmax + 1))
            for m in range(1, mmax + 1):
                degrees += 2 * list(range(m, lmax + 1))
        else:
            degrees = [l for l in range(lmax + 1) for _ in range(min(2 * l + 1, 2 * mmax + 1))]
        index = torch.tensor(degrees[1:], dtype=torch.long) - 1
        self.register_buffer("gate_index", index, persistent=False)

    def forward(self, gates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(gates).view(-1, self.lmax, self.channels)
        gates = gates.index_select(1, self.gate_index)
        return torch.cat((torch.nn.functional.silu(x[:, :1]), x[:, 1:] * gates), dim=1)


class S2Activation(nn.Module):
    """SiLU evaluated point-wise on an S² grid."""

    def __init__(self, grid: SphereGrid) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, R, C]`` → ``[N, R, C]``, coefficients in the grid's layout."""
        grid = self.grid.to_grid(x)
        grid = torch.nn.functional.silu(grid, inplace=not grid.requires_grad)
        return self.grid.from_grid(grid)


class SeparableS2Activation(nn.Module):
    """l = 0 from SiLU of separate scalars; l > 0 from the S2 activation of ``x``.

    ``scalars``: ``[N, C]``; ``x``: ``[N, R, C]`` → ``[N, R, C]``.
    """

    def __init__(self, grid: SphereGrid) -> None:
        super().__init__()
        self.s2 = S2Activation(grid)

    def forward(self, scalars: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # the l = 0 coefficient is the first one in both layouts
        out = self.s2(x)
        return torch.cat((torch.nn.functional.silu(scalars).unsqueeze(1), out[:, 1:]), dim=1)
