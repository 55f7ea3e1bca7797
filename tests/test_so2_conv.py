"""The SO(2) convolution, the S² grids and the value non-linearities.

Edge-frame features use the order-major layout (``CoefficientLayout.to_order_major``); node
features the degree-major one. Grids and gates are built for one of the two and must give the
same map up to that permutation.
"""

from __future__ import annotations

import pytest
import torch

from eqv2calc.model.activation import GateActivation, S2Activation, SeparableS2Activation
from eqv2calc.model.s2_grid import SphereGrid, grid_matrices
from eqv2calc.model.so2_conv import SO2Convolution
from eqv2calc.model.so3 import CoefficientLayout


@pytest.fixture(params=[(4, 2), (3, 3), (6, 3), (2, 0)], ids=lambda p: f"lmax{p[0]}_mmax{p[1]}")
def layout(request):
    return CoefficientLayout(*request.param)


def _turn(layout: CoefficientLayout, v: torch.Tensor, phi: float) -> torch.Tensor:
    """Rotate order-major edge-frame features by ``phi`` about the edge: (+m, -m) turn by m·phi."""
    out, offset = v.clone(), layout.order_sizes[0]
    for m, n in enumerate(layout.order_sizes[1:], start=1):
        plus, minus = v[:, offset : offset + n], v[:, offset + n : offset + 2 * n]
        c, s = torch.cos(torch.tensor(m * phi)), torch.sin(torch.tensor(m * phi))
        out[:, offset : offset + n] = c * plus - s * minus
        out[:, offset + n : offset + 2 * n] = s * plus + c * minus
        offset += 2 * n
    return out


def test_so2_convolution_commutes_with_rotation_about_the_edge(layout):
    """Turning every (+m, -m) pair by m·phi before the map is the same as after it, and the
    extra scalars (attention logits, gates) do not change at all."""
    torch.manual_seed(1)
    conv = SO2Convolution(layout, 4, 3, edge_channels=[5, 6], extra_scalars=2).double()
    x = torch.randn(5, layout.num_reduced, 4, dtype=torch.float64)
    inv = torch.randn(5, 5, dtype=torch.float64)
    y, extra = conv(x, inv)
    y_turned, extra_turned = conv(_turn(layout, x, 0.83), inv)
    torch.testing.assert_close(y_turned, _turn(layout, y, 0.83), rtol=0, atol=1e-12)
    torch.testing.assert_close(extra_turned, extra, rtol=0, atol=1e-12)
    assert y.shape == (5, layout.num_reduced, 3) and extra.shape == (5, 2)


@pytest.mark.parametrize("given", [False, True], ids=["grid_omitted", "grid_given"])
def test_sphere_grids_match_their_dense_definition_in_both_frames(layout, given):
    resolution = 2 * layout.lmax + 4 if given else None
    to_mat, from_mat = grid_matrices(layout.lmax, layout.mmax, resolution)
    x = torch.randn(3, layout.num_reduced, 4, dtype=torch.float64)  # reduced degree-major
    values = torch.einsum("bai,nic->nbac", to_mat, x)
    back = torch.einsum("bai,nbac->nic", from_mat, values)
    node = SphereGrid(layout.lmax, layout.mmax, resolution, edge_frame=False).double()
    edge = SphereGrid(layout.lmax, layout.mmax, resolution, edge_frame=True).double()
    order = layout.to_order_major
    torch.testing.assert_close(node.to_grid(x), values, rtol=0, atol=1e-12)
    torch.testing.assert_close(node.from_grid(values), back, rtol=0, atol=1e-12)
    torch.testing.assert_close(edge.to_grid(x[:, order]), values, rtol=0, atol=1e-12)
    torch.testing.assert_close(edge.from_grid(values), back[:, order], rtol=0, atol=1e-12)


def test_grid_round_trip_is_exact_for_band_limited_functions(layout):
    """The grid holds degree <= lmax exactly: to_grid then from_grid is the identity when no
    degree is rescaled (mmax = lmax); with truncation, each degree comes back scaled by the
    square of its rescale factor."""
    to_mat, from_mat = grid_matrices(layout.lmax, layout.mmax, None)
    x = torch.randn(2, layout.num_reduced, 3, dtype=torch.float64)
    back = torch.einsum("bai,nbac->nic", from_mat, torch.einsum("bai,nic->nbac", to_mat, x))
    scale = layout.double().inverse_rescale.view(1, -1, 1)
    torch.testing.assert_close(back, x * scale**2, rtol=0, atol=1e-10)


def test_value_activations_agree_between_frames(layout):
    node_grid = SphereGrid(layout.lmax, layout.mmax, None, edge_frame=False).double()
    edge_grid = SphereGrid(layout.lmax, layout.mmax, None, edge_frame=True).double()
    x = torch.randn(4, layout.num_reduced, 3, dtype=torch.float64)
    order = layout.to_order_major
    scalars = torch.randn(4, 3, dtype=torch.float64)
    gates = torch.randn(4, max(layout.lmax, 1) * 3, dtype=torch.float64)
    if layout.lmax:
        node_gate = GateActivation(layout.lmax, layout.mmax, 3, edge_frame=False)
        edge_gate = GateActivation(layout.lmax, layout.mmax, 3, edge_frame=True)
        torch.testing.assert_close(edge_gate(gates, x[:, order]), node_gate(gates, x)[:, order])
    torch.testing.assert_close(
        S2Activation(edge_grid)(x[:, order]), S2Activation(node_grid)(x)[:, order]
    )
    sep_edge, sep_node = SeparableS2Activation(edge_grid), SeparableS2Activation(node_grid)
    torch.testing.assert_close(sep_edge(scalars, x[:, order]), sep_node(scalars, x)[:, order])
    torch.testing.assert_close(sep_node(scalars, x)[:, 0], torch.nn.functional.silu(scalars))
