"""Sampling spherical-harmonic features on a grid over the sphere S² and back.

Point-wise non-linearities on S² (the "S2 activation" of eSCN/EquiformerV2) evaluate the
function ``f(r) = Σ_lm x_lm Y_lm(r)`` on a ``res × res`` (latitude × longitude) grid, apply the
non-linearity there, and project back onto the spherical harmonics. The matrices come from
e3nn's ``ToS2Grid`` / ``FromS2Grid`` (component normalization).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from eqv2calc.model.so3 import CoefficientLayout


def grid_matrices(lmax: int, mmax: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices ``to_grid [res_lat, res_lon, R]`` and ``from_grid [res_lat, res_lon, R]``.

    ``R`` counts the coefficients with ``|m| <= mmax`` (degree-major). For ``mmax < lmax`` the
    columns of degrees ``l > mmax`` are scaled by ``sqrt((2l+1)/(2mmax+1))``, matching the
    rescaling applied when truncated edge features are rotated back.
    """
    to_grid = o3.ToS2Grid(lmax, (resolution, resolution), normalization="component")
    from_grid = o3.FromS2Grid((resolution, resolution), lmax, normalization="component")
    # e3nn stores sha [res_alpha, 2l+1-ish] and shb [*, res_beta, K]; combine into dense maps.
    to_mat = torch.einsum("mbi,am->bai", to_grid.shb, to_grid.sha).to(torch.float64)
    from_mat = torch.einsum("am,mbi->bai", from_grid.sha, from_grid.shb).to(torch.float64)
    layout = CoefficientLayout(lmax, mmax)
    scale = torch.ones((lmax + 1) ** 2, dtype=torch.float64)
    for l in range(mmax + 1, lmax + 1):
        scale[l * l : (l + 1) ** 2] = math.sqrt((2 * l + 1) / (2 * mmax + 1))
    to_mat = (to_mat * scale)[:, :, layout.reduced_index]
    from_mat = (from_mat * scale)[:, :, layout.reduced_index]
    return to_mat.float(), from_mat.float()


class SphereGrid(nn.Module):
    """Fixed projections between truncated coefficients ``[..., R, C]`` and grid values.

    ``to_grid(x)``: ``[N, R, C]`` → ``[N, res_lat, res_lon, C]``;
    ``from_grid(g)``: the reverse projection.

    Both are one matrix product per row (``[P, R] @ [R, C]`` with ``P = res_lat * res_lon``),
    so the grid values come out channel-last and contiguous, ready for point-wise maps.
    """

    def __init__(self, lmax: int, mmax: int, resolution: int) -> None:
        super().__init__()
        to_mat, from_mat = grid_matrices(lmax, mmax, resolution)
        self.register_buffer("to_mat", to_mat, persistent=False)
        self.register_buffer("from_mat", from_mat, persistent=False)
        num_points = resolution * resolution
        # the same matrices flattened over grid points: to_flat [P, R], from_flat [R, P]
        self.register_buffer(
            "to_flat", to_mat.reshape(num_points, -1).contiguous(), persistent=False
        )
        self.register_buffer(
            "from_flat", from_mat.reshape(num_points, -1).t().contiguous(), persistent=False
        )
        # ... and with the coefficients in the order-major layout (see CoefficientLayout)
        order = CoefficientLayout(lmax, mmax).to_order_major
        self.register_buffer("to_flat_om", self.to_flat[:, order].contiguous(), persistent=False)
        self.register_buffer("from_flat_om", self.from_flat[order].contiguous(), persistent=False)
        self.lmax, self.mmax, self.resolution = lmax, mmax, resolution

    def to_grid(self, x: torch.Tensor, order_major: bool = False) -> torch.Tensor:
        """``[N, R, C]`` (degree-major, or order-major) → ``[N, res_lat, res_lon, C]``."""
        res = self.resolution
        points = torch.matmul(self.to_flat_om if order_major else self.to_flat, x)  # [N, P, C]
        return points.view(x.shape[0], res, res, x.shape[2])

    def from_grid(self, grid: torch.Tensor, order_major: bool = False) -> torch.Tensor:
        """``[N, res_lat, res_lon, C]`` → ``[N, R, C]`` (degree-major, or order-major)."""
        points = grid.reshape(grid.shape[0], -1, grid.shape[-1])  # [N, P, C]
        return torch.matmul(self.from_flat_om if order_major else self.from_flat, points)
