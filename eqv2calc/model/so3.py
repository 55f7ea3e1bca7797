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

import math

import torch
from e3nn import o3


class CoefficientLayout(torch.nn.Module):
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
    * ``degree_of`` ``[(lmax+1)**2]``: degree ``l`` of every full coefficient.
    """

    def __init__(self, lmax: int, mmax: int) -> None:
        super().__init__()
        if not 0 <= mmax <= lmax:
            raise ValueError(f"need 0 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
        self.lmax = lmax
        self.mmax = mmax

        degrees, orders, reduced = [], [], []
        for l in range(lmax + 1):  # noqa: E741
            for m in range(-l, l + 1):
                if abs(m) <= mmax:
                    reduced.append(l * l + l + m)
                    degrees.append(l)
                    orders.append(m)
        order_major = []
        for m in range(mmax + 1):
            signs = (1,) if m == 0 else (1, -1)
            for sign in signs:
                order_major += [i for i, (l, mm) in enumerate(zip(degrees, orders)) if mm == sign * m]
        to_order_major = torch.tensor(order_major, dtype=torch.long)
        to_degree_major = torch.empty_like(to_order_major)
        to_degree_major[to_order_major] = torch.arange(len(order_major))

        rescale = [math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0 for l in degrees]
        degree_of = [l for l in range(lmax + 1) for _ in range(2 * l + 1)]

        self.register_buffer("reduced_index", torch.tensor(reduced), persistent=False)
        self.register_buffer("to_order_major", to_order_major, persistent=False)
        self.register_buffer("to_degree_major", to_degree_major, persistent=False)
        self.register_buffer("inverse_rescale", torch.tensor(rescale), persistent=False)
        self.register_buffer("degree_of", torch.tensor(degree_of), persistent=False)
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

    Args:
        edge_vec: ``[E, 3]`` edge vectors (any length > 0), Å.
    """
    unit = edge_vec / edge_vec.norm(dim=1, keepdim=True)
    alpha, beta = o3.xyz_to_angles(unit)
    return alpha, beta


def edge_rotation_blocks(edge_vec: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """Per-degree Wigner-D blocks of the rotation taking each edge direction onto +y.

    Returns a list over ``l = 0..lmax`` of ``[E, 2l+1, 2l+1]`` tensors ``D_l(R_e)`` with
    ``R_e`` the rotation that maps edge ``e``'s direction to the +y axis, so that
    ``D_l(R_e) @ x_l`` expresses a degree-``l`` feature in the edge frame. Computed with
    e3nn's ``wigner_D`` in float64 and cast back to the input dtype.
    """
    vec64 = edge_vec.detach().to(torch.float64)
    alpha, beta = edge_frame_angles(vec64)
    zero = torch.zeros_like(alpha)
    blocks = []
    for l in range(lmax + 1):  # noqa: E741
        # D(alpha, beta, 0) maps +y onto the edge; its transpose (inverse) maps the edge onto +y.
        d = o3.wigner_D(l, alpha, beta, zero).transpose(-1, -2)
        blocks.append(d.to(edge_vec.dtype).contiguous())
    return blocks


class EdgeRotation:
    """Rotations of node features into (and out of) every edge's frame, with truncation.

    Built once per forward pass and shared by the edge-degree embedding and every attention
    block (they all use the same edge frames).

    ``to_edge`` is ``[E, R, K]``: full degree-major features (``K = (lmax+1)**2``) to the reduced
    edge-frame coefficients. ``from_edge`` is ``[E, K, R]``: the inverse rotation restricted to
    the kept coefficients, with the ``inverse_rescale`` factors folded in.
    """

    def __init__(self, edge_vec: torch.Tensor, layout: CoefficientLayout) -> None:
        blocks = edge_rotation_blocks(edge_vec, layout.lmax)
        num_edges = edge_vec.shape[0]
        full = edge_vec.new_zeros(num_edges, layout.num_full, layout.num_full)
        for l, block in enumerate(blocks):  # noqa: E741
            sl = slice(l * l, (l + 1) ** 2)
            full[:, sl, sl] = block
        self.to_edge = full.index_select(1, layout.reduced_index)  # [E, R, K]
        inverse = full.transpose(1, 2).index_select(2, layout.reduced_index)  # [E, K, R]
        self.from_edge = inverse * layout.inverse_rescale.to(inverse.dtype).view(1, 1, -1)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``[E, K, C]`` node-frame features → ``[E, R, C]`` edge-frame, truncated."""
        return torch.bmm(self.to_edge, x)

    def rotate_back(self, x: torch.Tensor) -> torch.Tensor:
        """``[E, R, C]`` edge-frame features → ``[E, K, C]`` node frame."""
        return torch.bmm(self.from_edge, x)
