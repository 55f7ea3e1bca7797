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
    orders truncated to ``|m| <= mmax``.
    """

    def __init__(self, lmax: int, mmax: int, channels: int) -> None:
        super().__init__()
        self.lmax, self.channels = lmax, channels
        index = []
        for l in range(1, lmax + 1):
            index += [l - 1] * min(2 * l + 1, 2 * mmax + 1)
        self.register_buffer("gate_index", torch.tensor(index, dtype=torch.long), persistent=False)
        # the same for the order-major layout: m = 0 (l = 0..lmax), then +m and -m (l = m..lmax)
        degrees = list(range(lmax + 1))
        for m in range(1, mmax + 1):
            degrees += 2 * list(range(m, lmax + 1))
        self.register_buffer("gate_index_om", torch.tensor(degrees[1:]) - 1, persistent=False)

    def forward(
        self, gates: torch.Tensor, x: torch.Tensor, order_major: bool = False
    ) -> torch.Tensor:
        """``x`` degree-major, or order-major (``order_major``); its first row is l = 0 in both."""
        gates = torch.sigmoid(gates).view(-1, self.lmax, self.channels)
        gates = gates.index_select(1, self.gate_index_om if order_major else self.gate_index)
        return torch.cat((torch.nn.functional.silu(x[:, :1]), x[:, 1:] * gates), dim=1)


class S2Activation(nn.Module):
    """SiLU evaluated point-wise on an S² grid."""

    def __init__(self, grid: SphereGrid) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor, order_major: bool = False) -> torch.Tensor:
        """``[N, R, C]`` → ``[N, R, C]``, coefficients degree-major (or order-major)."""
        grid = self.grid.to_grid(x, order_major)
        grid = torch.nn.functional.silu(grid, inplace=not grid.requires_grad)
        return self.grid.from_grid(grid, order_major)


class SeparableS2Activation(nn.Module):
    """l = 0 from SiLU of separate scalars; l > 0 from the S2 activation of ``x``.

    ``scalars``: ``[N, C]``; ``x``: ``[N, R, C]`` → ``[N, R, C]``.
    """

    def __init__(self, grid: SphereGrid) -> None:
        super().__init__()
        self.s2 = S2Activation(grid)

    def forward(
        self, scalars: torch.Tensor, x: torch.Tensor, order_major: bool = False
    ) -> torch.Tensor:
        # the l = 0 coefficient is the first one in both layouts
        out = self.s2(x, order_major)
        return torch.cat((torch.nn.functional.silu(scalars).unsqueeze(1), out[:, 1:]), dim=1)
