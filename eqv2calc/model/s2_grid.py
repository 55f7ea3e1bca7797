"""Sampling spherical-harmonic features on a grid over the sphere S² and back.

Point-wise non-linearities on S² (the "S2 activation" of eSCN/EquiformerV2) evaluate the
function ``f(r) = Σ_lm x_lm Y_lm(r)`` on a ``res × res`` (latitude × longitude) grid, apply the
non-linearity there, and project back onto the spherical harmonics. The matrices come from
e3nn's ``ToS2Grid`` / ``FromS2Grid`` (component normalization), built in float64.

The grid is ``res × res`` when a checkpoint gives ``grid_resolution``. Without it the reference
sizes each grid from the degrees it serves: ``2 (lmax + 1)`` latitudes and ``2 mmax + 1``
longitudes, or ``2 lmax + 3`` longitudes when ``mmax = lmax`` (:func:`grid_shape`).
"""

from __future__ import annotations

import functools
import math

import torch
from e3nn import o3

from eqv2calc.model.constants import ExactConstants
from eqv2calc.model.so3 import CoefficientLayout


def grid_shape(lmax: int, mmax: int, resolution: int | None) -> tuple[int, int]:
    """``(latitudes, longitudes)`` of the grid for degrees ``<= lmax`` and orders ``<= mmax``."""
    if resolution is not None:
        return resolution, resolution
    return 2 * (lmax + 1), 2 * mmax + 1 + (2 if lmax == mmax else 0)


def grid_matrices(
    lmax: int, mmax: int, resolution: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`_grid_matrices` (this returns copies of the cached matrices)."""
    to_mat, from_mat = _grid_matrices(lmax, mmax, resolution)
    return to_mat.clone(), from_mat.clone()


@functools.lru_cache(maxsize=64)
def _grid_matrices(
    lmax: int, mmax: int, resolution: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 matrices ``to_grid [res_lat, res_lon, R]`` and ``from_grid [res_lat, res_lon, R]``.

    ``R`` counts the coefficients with ``|m| <= mmax`` (degree-major). For ``mmax < lmax`` the
    columns of degrees ``l > mmax`` are scaled by ``sqrt((2l+1)/(2mmax+1))``, matching the
    rescaling applied when truncated edge features are rotated back.
    """
    shape = grid_shape(lmax, mmax, resolution)
    # e3nn computes part of its quadrature weights in the default dtype whatever ``dtype`` says
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        to_grid = o3.ToS2Grid(lmax, shape, normalization="component", dtype=torch.float64)
        from_grid = o3.FromS2Grid(shape, lmax, normalization="component", dtype=torch.float64)
    finally:
        torch.set_default_dtype(previous)
    # e3nn stores sha [res_alpha, 2l+1-ish] and shb [*, res_beta, K]; combine into dense maps.
    to_mat = torch.einsum("mbi,am->bai", to_grid.shb, to_grid.sha)
    from_mat = torch.einsum("am,mbi->bai", from_grid.sha, from_grid.shb)
    layout = CoefficientLayout(lmax, min(mmax, lmax))  # the reference also builds m > l
    scale = torch.ones((lmax + 1) ** 2, dtype=torch.float64)
    for l in range(mmax + 1, lmax + 1):
        scale[l * l : (l + 1) ** 2] = math.sqrt((2 * l + 1) / (2 * mmax + 1))
    to_mat = (to_mat * scale)[:, :, layout.reduced_index]
    from_mat = (from_mat * scale)[:, :, layout.reduced_index]
    return to_mat, from_mat


class SphereGrid(ExactConstants):
    """Fixed projections between truncated coefficients ``[..., R, C]`` and grid values.

    Coefficients are ordered as in the frame the grid serves: node features (degree-major), or,
    with ``edge_frame``, edge-frame features in the SO(2) convolutions' order-major layout.

    ``to_grid(x)``: ``[N, R, C]`` → ``[N, res_lat, res_lon, C]``;
    ``from_grid(g)``: the reverse projection.

    Both are one matrix product per row (``[P, R] @ [R, C]`` with ``P = res_lat * res_lon``),
    so the grid values come out channel-last and contiguous, ready for point-wise maps.
    """

    def __init__(self, lmax: int, mmax: int, resolution: int | None, *, edge_frame: bool) -> None:
        super().__init__()
        to_mat, from_mat = grid_matrices(lmax, mmax, resolution)
        self.shape = grid_shape(lmax, mmax, resolution)
        num_points = self.shape[0] * self.shape[1]
        to_flat = to_mat.reshape(num_points, -1)  # [P, R]
        from_flat = from_mat.reshape(num_points, -1).t()  # [R, P]
        if edge_frame:  # coefficients in the edge frame's order-major layout (CoefficientLayout)
            order = CoefficientLayout(lmax, mmax).to_order_major
            to_flat, from_flat = to_flat[:, order], from_flat[order]
        self.register_constant("to_flat", to_flat)
        self.register_constant("from_flat", from_flat)
        self.lmax, self.mmax, self.resolution = lmax, mmax, resolution
        self.edge_frame = edge_frame

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, R, C]`` → ``[N, res_lat, res_lon, C]``."""
        points = torch.matmul(self.to_flat, x)  # [N, P, C]
        return points.view(x.shape[0], *self.shape, x.shape[2])

    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """``[N, res_lat, res_lon, C]`` → ``[N, R, C]``."""
        points = grid.reshape(grid.shape[0], -1, grid.shape[-1])  # [N, P, C]
        return torch.matmul(self.from_flat, points)
