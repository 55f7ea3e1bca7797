"""Edge-frame rotations (eqv2calc.model.so3): closed-form Wigner blocks and their layouts.

The closed form ``D_l(alpha, beta, 0)ᵀ = J Z(-beta) Jᵀ Z(-alpha)`` is checked against e3nn's
``wigner_D`` (one matrix exponential per edge) evaluated with float64 generators; e3nn builds
its generators in the default dtype, so the comparison switches the default to float64 while
e3nn runs (with float32 generators e3nn itself is only good to ~1e-6).
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from eqv2calc.model.so3 import (
    CoefficientLayout,
    EdgeRotation,
    edge_frame_angles,
    edge_rotation_blocks,
)


def _edge_vectors(n: int = 200) -> torch.Tensor:
    vec = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(11)) * 3.0
    # edges on and next to the polar axis (alpha undefined / ill-conditioned), and along x and z
    vec[0] = torch.tensor([0.0, 2.5, 0.0])
    vec[1] = torch.tensor([0.0, -1.0, 0.0])
    vec[2] = torch.tensor([1e-9, 1.0, -1e-9])
    vec[3] = torch.tensor([1.0, 0.0, 0.0])
    vec[4] = torch.tensor([0.0, 0.0, -4.0])
    return vec


def _e3nn_blocks(vec: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """``wigner_D(l, alpha, beta, 0)ᵀ`` from e3nn with float64 generators."""
    alpha, beta = edge_frame_angles(vec)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return [
            o3.wigner_D(l, alpha, beta, torch.zeros_like(alpha)).transpose(-1, -2)
            for l in range(lmax + 1)
        ]
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("lmax", [4, 6])
def test_closed_form_wigner_blocks_match_e3nn_in_float64(lmax):
    vec = _edge_vectors()
    ours = edge_rotation_blocks(vec, lmax)
    ref = _e3nn_blocks(vec, lmax)
    for l in range(lmax + 1):
        assert ours[l].dtype == torch.float64 and ours[l].shape == (
            vec.shape[0],
            2 * l + 1,
            2 * l + 1,
        )
        torch.testing.assert_close(ours[l], ref[l], rtol=0, atol=1e-10)


def test_wigner_blocks_are_float64_and_orthogonal_and_rotations_follow_the_input_dtype():
    """Blocks are built in float64 from float32 input too; EdgeRotation casts them once."""
    vec = _edge_vectors(50).float()
    for l, block in enumerate(edge_rotation_blocks(vec, 4)):
        assert block.dtype == torch.float64
        eye = torch.eye(2 * l + 1, dtype=torch.float64).expand_as(block)
        torch.testing.assert_close(block @ block.transpose(1, 2), eye, rtol=0, atol=1e-13)
    layout = CoefficientLayout(4, 2)
    rot32, rot64 = EdgeRotation(vec, layout), EdgeRotation(vec.double(), layout.double())
    assert rot32.to_edge.dtype == torch.float32 and rot64.to_edge.dtype == torch.float64
    # float32 values are the float64 ones rounded once (not computed in float32)
    torch.testing.assert_close(rot32.to_edge, rot64.to_edge.float(), rtol=0, atol=0)
    torch.testing.assert_close(rot32.from_edge, rot64.from_edge.float(), rtol=0, atol=0)


def test_wigner_blocks_represent_the_frame_rotation():
    """D_l(R_e) Y_l(r) = Y_l(R_e r) for the 3x3 rotation R_e = D_1 (e3nn's l = 1 basis is x, y, z)."""
    vec = _edge_vectors(40)
    blocks = edge_rotation_blocks(vec, 4)
    rot = blocks[1]  # [E, 3, 3]
    unit = vec / vec.norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        torch.einsum("eij,ej->ei", rot, unit),
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(40, 3),
        rtol=0,
        atol=1e-12,
    )
    points = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for l in (2, 3, 4):
        y = o3.spherical_harmonics(l, points, normalize=True)  # [P, 2l+1]
        rotated = o3.spherical_harmonics(
            l, torch.einsum("eij,pj->epi", rot, points), normalize=True
        )  # [E, P, 2l+1]
        torch.testing.assert_close(
            torch.einsum("eij,pj->epi", blocks[l], y), rotated, rtol=0, atol=1e-12
        )


def _dense_reference(
    vec: torch.Tensor, layout: CoefficientLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced degree-major to_edge [E, R, K] / from_edge [E, K, R], built the obvious way."""
    blocks = edge_rotation_blocks(vec, layout.lmax)
    full = vec.new_zeros(vec.shape[0], layout.num_full, layout.num_full)
    for l, block in enumerate(blocks):
        full[:, l * l : (l + 1) ** 2, l * l : (l + 1) ** 2] = block
    to_edge = full[:, layout.reduced_index]
    from_edge = full.transpose(1, 2)[:, :, layout.reduced_index] * layout.inverse_rescale.to(
        vec.dtype
    )
    return to_edge, from_edge


@pytest.mark.parametrize("lmax,mmax", [(4, 2), (3, 3), (6, 2), (2, 1)])
def test_edge_rotation_layouts(lmax, mmax):
    layout = CoefficientLayout(lmax, mmax)
    vec = _edge_vectors(30)
    rot = EdgeRotation(vec, layout)
    to_edge, from_edge = _dense_reference(vec, layout)
    x = torch.randn(30, layout.num_full, 5, dtype=torch.float64)
    y = to_edge @ x  # [E, R, 5] reduced degree-major
    y_om = y[:, layout.to_order_major]
    torch.testing.assert_close(rot.rotate(x), y_om)
    torch.testing.assert_close(rot.rotate_back(y_om), from_edge @ y)
    # a view of some edges rotates like the whole
    part = rot.narrow(7, 19)
    torch.testing.assert_close(part.rotate(x[7:19]), y_om[7:19])


def test_rotate_back_zonal_equals_rotate_back_of_m0_only_features():
    layout = CoefficientLayout(4, 2)
    vec = _edge_vectors(25)
    rot = EdgeRotation(vec, layout)
    m0 = torch.randn(25, layout.lmax + 1, 6, dtype=torch.float64)
    order_major = m0.new_zeros(25, layout.num_reduced, 6)
    order_major[:, : layout.lmax + 1] = m0
    torch.testing.assert_close(rot.rotate_back_zonal(m0), rot.rotate_back(order_major))
    # the m = 0 coefficients of degree l sit at l*l + l in the reduced degree-major layout's source
    assert [int(layout.reduced_index[i]) for i in layout.to_order_major[: layout.lmax + 1]] == [
        l * l + l for l in range(layout.lmax + 1)
    ]
