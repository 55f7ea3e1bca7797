"""The SO(2) convolution and the value non-linearities in both coefficient layouts.

Inside the attention block features stay in the order-major layout (the rotation matrices
produce it directly); the public default is the reduced degree-major layout. Both paths must
give the same map, up to the permutation ``CoefficientLayout.to_order_major``.
"""

from __future__ import annotations

import pytest
import torch

from eqv2calc.model.activation import GateActivation, S2Activation, SeparableS2Activation
from eqv2calc.model.radial import RadialMLP
from eqv2calc.model.s2_grid import SphereGrid
from eqv2calc.model.so2_conv import SO2Convolution
from eqv2calc.model.so3 import CoefficientLayout


@pytest.fixture(params=[(4, 2), (3, 3), (6, 3)], ids=lambda p: f"lmax{p[0]}_mmax{p[1]}")
def layout(request):
    return CoefficientLayout(*request.param)


def test_so2_convolution_layouts_agree(layout):
    torch.manual_seed(0)
    conv = SO2Convolution(layout, 6, 5, edge_channels=[7, 8], extra_scalars=3).double()
    x = torch.randn(11, layout.num_reduced, 6, dtype=torch.float64)
    inv = torch.randn(11, 7, dtype=torch.float64)
    y, extra = conv(x, inv)
    y_om, extra_om = conv(x[:, layout.to_order_major], inv, order_major=True)
    torch.testing.assert_close(y_om, y[:, layout.to_order_major])
    torch.testing.assert_close(extra_om, extra)
    assert (
        isinstance(conv.radial, RadialMLP)
        and y.shape == (11, layout.num_reduced, 5)
        and extra.shape == (11, 3)
    )


def test_so2_convolution_commutes_with_rotation_about_the_edge(layout):
    """Turning every (+m, -m) pair by m·phi before the map is the same as after it."""
    torch.manual_seed(1)
    conv = SO2Convolution(layout, 4, 3).double()
    x = torch.randn(5, layout.num_reduced, 4, dtype=torch.float64)
    phi = 0.83

    def turn(v: torch.Tensor) -> torch.Tensor:  # order-major: m = 0 block, then (+m, -m) blocks
        out, offset = v.clone(), layout.order_sizes[0]
        for m, n in enumerate(layout.order_sizes[1:], start=1):
            plus, minus = v[:, offset : offset + n], v[:, offset + n : offset + 2 * n]
            c, s = torch.cos(torch.tensor(m * phi)), torch.sin(torch.tensor(m * phi))
            out[:, offset : offset + n] = c * plus - s * minus
            out[:, offset + n : offset + 2 * n] = s * plus + c * minus
            offset += 2 * n
        return out

    x_om = x[:, layout.to_order_major]
    torch.testing.assert_close(
        conv(turn(x_om), order_major=True)[0], turn(conv(x_om, order_major=True)[0])
    )


def test_sphere_grid_matches_its_dense_definition(layout):
    grid = SphereGrid(layout.lmax, layout.mmax, 2 * layout.lmax + 4).double()
    x = torch.randn(3, layout.num_reduced, 4, dtype=torch.float64)
    values = torch.einsum("bai,nic->nbac", grid.to_mat, x)
    torch.testing.assert_close(grid.to_grid(x), values)
    torch.testing.assert_close(
        grid.from_grid(values), torch.einsum("bai,nbac->nic", grid.from_mat, values)
    )
    torch.testing.assert_close(grid.to_grid(x[:, layout.to_order_major], order_major=True), values)
    torch.testing.assert_close(
        grid.from_grid(values, order_major=True), grid.from_grid(values)[:, layout.to_order_major]
    )


def test_value_activations_layouts_agree(layout):
    grid = SphereGrid(layout.lmax, layout.mmax, 2 * layout.lmax + 4).double()
    x = torch.randn(4, layout.num_reduced, 3, dtype=torch.float64)
    x_om, order = x[:, layout.to_order_major], layout.to_order_major
    scalars = torch.randn(4, 3, dtype=torch.float64)
    gates = torch.randn(4, layout.lmax * 3, dtype=torch.float64)
    gate = GateActivation(layout.lmax, layout.mmax, 3)
    torch.testing.assert_close(gate(gates, x_om, order_major=True), gate(gates, x)[:, order])
    s2 = S2Activation(grid)
    torch.testing.assert_close(s2(x_om, order_major=True), s2(x)[:, order])
    sep = SeparableS2Activation(grid)
    torch.testing.assert_close(sep(scalars, x_om, order_major=True), sep(scalars, x)[:, order])
    torch.testing.assert_close(sep(scalars, x)[:, 0], torch.nn.functional.silu(scalars))
