"""Spherical-harmonic coefficient layouts and Wigner-D rotations into edge frames.

Node features are arrays of real spherical-harmonic coefficients, shape
``[num_nodes, (lmax + 1)**2, channels]``, ordered *degree-major*: index ``l**2 + l + m`` holds
degree ``l`` and order ``m`` (``m = -l..l``), in e3nn's real basis (the ``l = 1`` block is
``(x, y, z)``).

EquiformerV2 (like eSCN) rotates each edge's features so that the edge points along the
e3nn polar axis (+y). In that frame a rotation about the edge mixes only the ``+m``/``-m``
pair of each order, so orders ``|m| > mmax`` can be dropped and the remaining ones convolved
with SO(2)-equivariant linear maps. :class:`CoefficientLayout` holds the index bookkeeping for
that truncation and for the *order-major* layout the SO(2) convolution uses.
"""

from __future__ import annotations

import functools
import math

import torch
from e3nn import o3

from eqv2calc.model.constants import ExactConstants


def degree_index(lmax: int, start: int = 0) -> torch.Tensor:
    """Degree ``l - start`` of every degree-major coefficient with ``l >= start`` (long tensor).

    Used to expand per-degree weights ``[lmax + 1 - start, C]`` to every coefficient.
    """
    return torch.tensor(
        [l - start for l in range(start, lmax + 1) for _ in range(2 * l + 1)], dtype=torch.long
    )


class CoefficientLayout(ExactConstants):
    """Index bookkeeping for degree ``lmax`` features truncated to orders ``|m| <= mmax``.

    Buffers (all long tensors unless noted):

    * ``reduced_index`` ``[R]``: positions in the full degree-major layout that survive the
      truncation, kept in degree-major order ("reduced" layout, ``R`` coefficients).
    * ``to_order_major`` ``[R]``: ``x_reduced[:, to_order_major]`` is the order-major layout:
      all ``m = 0`` coefficients (``l = 0..lmax``), then for ``m = 1..mmax`` the ``+m``
      coefficients (``l = m..lmax``) followed by the ``-m`` coefficients.
    * ``to_degree_major`` ``[R]``: the inverse permutation.
    * ``inverse_rescale`` (float) ``[R]``: ``sqrt((2l + 1) / (2 mmax + 1))`` for ``l > mmax``
      and 1 otherwise; EquiformerV2 applies it when rotating truncated features back, to keep
      their magnitude comparable with untruncated degrees.
    """

    def __init__(self, lmax: int, mmax: int) -> None:
        super().__init__()
        if not 0 <= mmax <= lmax:
            raise ValueError(f"need 0 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
        self.lmax = lmax
        self.mmax = mmax

        degrees, orders, reduced = [], [], []
        for l in range(lmax + 1):
            for m in range(-l, l + 1):
                if abs(m) <= mmax:
                    reduced.append(l * l + l + m)
                    degrees.append(l)
                    orders.append(m)
        order_major = []
        for m in range(mmax + 1):
            signs = (1,) if m == 0 else (1, -1)
            for sign in signs:
                order_major += [
                    i for i, (l, mm) in enumerate(zip(degrees, orders)) if mm == sign * m
                ]
        to_order_major = torch.tensor(order_major, dtype=torch.long)
        to_degree_major = torch.empty_like(to_order_major)
        to_degree_major[to_order_major] = torch.arange(len(order_major))

        rescale = [math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0 for l in degrees]

        self.register_buffer("reduced_index", torch.tensor(reduced), persistent=False)
        self.register_buffer("to_order_major", to_order_major, persistent=False)
        self.register_buffer("to_degree_major", to_degree_major, persistent=False)
        self.register_constant("inverse_rescale", torch.tensor(rescale, dtype=torch.float64))
        #: number of coefficients of each order m >= 0 (counting +m only): lmax + 1 - m
        self.order_sizes = [lmax + 1 - m for m in range(mmax + 1)]

    @property
    def num_full(self) -> int:
        return (self.lmax + 1) ** 2

    @property
    def num_reduced(self) -> int:
        return int(self.reduced_index.numel())


def edge_frame_angles(edge_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler angles (alpha, beta) that carry the polar axis +y onto each edge direction.

    The frame's roll about the edge is fixed at zero. The reference implementation draws a
    random roll per edge; because the SO(2) convolution commutes with rotations about the
    edge axis, the outputs do not depend on that roll beyond float rounding, so a fixed rule
    makes results deterministic without changing them.

    ``alpha = atan2(x, z)`` and ``beta = atan2(sqrt(x² + z²), y)`` (e3nn's convention; e3nn
    computes ``beta = acos(y / |r|)``, which loses half the digits next to the poles).

    Args:
        edge_vec: ``[E, 3]`` edge vectors (any length > 0), Å.
    """
    x, y, z = edge_vec.unbind(1)
    return torch.atan2(x, z), torch.atan2(torch.hypot(x, z), y)


@functools.cache
@torch.inference_mode(False)  # cached: must stay usable by autograd (gradient forces)
def _x_to_y_swap(l: int) -> torch.Tensor:
    """``J_l`` ``[2l+1, 2l+1]`` float64: the Wigner matrix of the rotation by -90° about z.

    That rotation carries +y onto +x, so a rotation by ``beta`` about x is
    ``J_l Z_l(beta) J_lᵀ`` with ``Z_l`` the (cheap) rotation about the polar axis y. Fitted
    exactly from e3nn's float64 spherical harmonics: ``Y_l(r Rᵀ) = Y_l(r) Dᵀ``.
    """
    rot = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    points = torch.randn(
        4 * l + 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    y = o3.spherical_harmonics(l, points, normalize=True)
    y_rot = o3.spherical_harmonics(l, points @ rot.T, normalize=True)
    return torch.linalg.lstsq(y, y_rot).solution.T.contiguous()


@torch.compiler.disable  # a cached constant: torch.compile calls it, does not trace it
@functools.cache
@torch.inference_mode(False)  # cached: must stay usable by autograd (gradient forces)
def _tilt_basis(l: int) -> torch.Tensor:
    """Constant ``[2(2l+1), (2l+1)**2]`` float64 matrix ``B`` with
    ``J Z(t) Jᵀ = ([cos(f t), sin(f t)] @ B).view(2l+1, 2l+1)`` (see :func:`polar_phases`)."""
    swap = _x_to_y_swap(l)
    cos_part = torch.einsum("ai,bi->iab", swap, swap)
    sin_part = torch.einsum("ai,bi->iab", swap, swap.flip(1))
    return torch.cat((cos_part, sin_part)).reshape(2 * (2 * l + 1), -1)


def polar_phases(l: int, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos(f angle)``, ``sin(f angle)`` ``[..., 2l+1]`` with ``f_i = l - i``.

    They define ``Z_l(angle)``, the degree-``l`` Wigner matrix of a rotation about the polar
    axis +y: in e3nn's real basis index ``i`` (order ``m = i - l``) mixes only with ``2l - i``
    (order ``-m``), ``Z[i, i] = cos(f_i angle)`` and ``Z[i, 2l - i] = sin(f_i angle)``.
    """
    freq = torch.arange(l, -l - 1, -1, dtype=angle.dtype, device=angle.device)
    phase = angle.unsqueeze(-1) * freq
    return phase.cos(), phase.sin()


def edge_rotation_blocks(edge_vec: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """Per-degree Wigner-D blocks of the rotation taking each edge direction onto +y.

    Returns a list over ``l = 0..lmax`` of ``[E, 2l+1, 2l+1]`` tensors ``D_l(R_e)`` with
    ``R_e`` the rotation that maps edge ``e``'s direction to the +y axis (float64 whatever the
    input's dtype), so that
    ``D_l(R_e) @ x_l`` expresses a degree-``l`` feature in the edge frame.

    ``D_l(alpha, beta, 0) = Z(alpha) J Z(beta) Jᵀ`` maps +y onto the edge (e3nn's
    ``wigner_D``, without its per-edge matrix exponentials); we need its transpose
    ``M Z(-alpha)`` with ``M = J Z(-beta) Jᵀ`` a fixed linear combination of ``cos``/``sin``
    of multiples of ``beta``. Right-multiplying by ``Z`` mixes columns ``j`` and ``2l - j``:
    ``(M Z)[:, j] = M[:, j] cos_j - M[:, 2l - j] sin_j``.
    """
    vec64 = edge_vec.to(torch.float64)  # not detached: gradient forces differentiate the frames
    alpha, beta = edge_frame_angles(vec64)
    blocks = []
    for l in range(lmax + 1):
        n = 2 * l + 1
        cos_b, sin_b = polar_phases(l, -beta)
        tilt = (torch.cat((cos_b, sin_b), dim=1) @ _tilt_basis(l).to(vec64.device)).view(-1, n, n)
        cos_a, sin_a = polar_phases(l, -alpha)
        d = tilt * cos_a.unsqueeze(1) - tilt.flip(2) * sin_a.unsqueeze(1)
        blocks.append(d.contiguous())
    return blocks


class EdgeRotation:
    """Rotations of node features into (and out of) every edge's frame, with truncation.

    Built once per forward pass and shared by the edge-degree embedding and every attention
    block (they all use the same edge frames).

    ``to_edge`` is ``[E, R, K]``: full degree-major features (``K = (lmax+1)**2``) to the reduced
    edge-frame coefficients, rows in *order-major* layout (the layout the SO(2) convolution
    works in, so no permutation is needed between the two). ``from_edge`` is ``[E, K, R]``: the
    inverse rotation restricted to the kept coefficients (columns order-major), with the
    ``inverse_rescale`` factors folded in. Both are block-diagonal by degree; they are stored
    dense because one batched product over all degrees is faster than one per degree.
    """

    def __init__(self, edge_vec: torch.Tensor, layout: CoefficientLayout) -> None:
        blocks = edge_rotation_blocks(edge_vec, layout.lmax)  # float64
        num_edges, mmax = edge_vec.shape[0], layout.mmax
        # rows degree-major, then permuted to order-major
        to_edge = blocks[0].new_zeros(num_edges, layout.num_reduced, layout.num_full)
        row = 0
        for l, block in enumerate(blocks):
            kept = min(l, mmax)  # orders -kept..kept of degree l survive
            to_edge[:, row : row + 2 * kept + 1, l * l : (l + 1) ** 2] = block[
                :, l - kept : l + kept + 1
            ]
            row += 2 * kept + 1
        order = layout.to_order_major.to(to_edge.device)
        to_edge = to_edge.index_select(1, order)
        rescale = layout.exact("inverse_rescale", to_edge.device)[order]
        self.layout = layout
        # built in float64, cast once
        self.to_edge = to_edge.to(edge_vec.dtype)
        self.from_edge = (to_edge.transpose(1, 2) * rescale).to(edge_vec.dtype)

    def narrow(self, start: int, stop: int) -> EdgeRotation:
        """The rotations of edges ``start..stop-1`` (views, no copy)."""
        part = EdgeRotation.__new__(EdgeRotation)
        part.layout = self.layout
        part.to_edge = self.to_edge[start:stop]
        part.from_edge = self.from_edge[start:stop]
        return part

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``[E, K, C]`` node-frame features → ``[E, R, C]`` edge-frame, truncated, order-major."""
        return torch.bmm(self.to_edge, x)

    def rotate_back(self, x: torch.Tensor) -> torch.Tensor:
        """``[E, R, C]`` edge-frame features (order-major) → ``[E, K, C]`` node frame."""
        return torch.bmm(self.from_edge, x)

    def rotate_back_zonal(self, x: torch.Tensor) -> torch.Tensor:
        """Edge-frame features with only ``m = 0`` coefficients, ``[E, lmax+1, C]`` → ``[E, K, C]``.

        (The ``m = 0`` coefficients are the first ``lmax + 1`` of the order-major layout.)
        """
        return torch.bmm(self.from_edge[:, :, : x.shape[1]], x)
