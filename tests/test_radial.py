"""The Gaussian distance basis (windowed = dense) and the radial MLP on split invariants."""

from __future__ import annotations

import torch

from eqv2calc.model.radial import GaussianDistanceBasis, RadialMLP, SplitInvariants


def dense(basis: GaussianDistanceBasis, distance: torch.Tensor) -> torch.Tensor:
    diff = distance.view(-1, 1) - basis.centres.to(distance.dtype).view(1, -1)
    return torch.exp(basis.coeff * diff.pow(2))


def test_windowed_basis_equals_the_dense_gaussians():
    basis = GaussianDistanceBasis(0.0, 6.0, 600, 2.0).double()
    # across the range, at both ends and beyond the cutoff (edges are cut at <= cutoff)
    distance = torch.cat([torch.rand(2000, dtype=torch.float64) * 6.2, torch.tensor([0.0, 6.0])])
    distance.requires_grad_(True)
    got, expected = basis(distance), dense(basis, distance)
    assert (got - expected).abs().max() < 1e-20  # everything dropped is below exp(-50)
    weights = torch.randn(600, dtype=torch.float64)
    (g_got,) = torch.autograd.grad((got * weights).sum(), distance)
    (g_expected,) = torch.autograd.grad((expected * weights).sum(), distance)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-12, atol=1e-12)


def test_few_wide_gaussians_keep_every_centre():
    basis = GaussianDistanceBasis(0.0, 5.0, 10, 2.0)  # window wider than the basis
    distance = torch.linspace(0.0, 5.0, 11)
    torch.testing.assert_close(basis(distance), dense(basis, distance), rtol=1e-6, atol=1e-7)


def test_second_derivatives_through_the_windowed_basis():
    # gradient-force training differentiates the forces (first derivatives) once more
    basis = GaussianDistanceBasis(0.0, 6.0, 600, 2.0).double()
    distance = (torch.rand(50, dtype=torch.float64) * 6.0).requires_grad_(True)
    weights = torch.randn(600, dtype=torch.float64)
    for f in (basis, lambda d: dense(basis, d)):
        (g,) = torch.autograd.grad((f(distance) * weights).sum(), distance, create_graph=True)
        (h,) = torch.autograd.grad(g.pow(2).sum(), distance)
        if f is basis:
            h_got = h
    torch.testing.assert_close(h_got, h, rtol=1e-10, atol=1e-12)


def test_radial_mlp_on_split_invariants_equals_the_concatenation():
    torch.manual_seed(0)
    mlp = RadialMLP([600 + 2 * 8, 16, 16, 24]).double()
    split = SplitInvariants(
        torch.rand(40, 600, dtype=torch.float64),
        torch.randn(40, 8, dtype=torch.float64),
        torch.randn(40, 8, dtype=torch.float64),
    )
    whole = mlp(split.cat())
    torch.testing.assert_close(mlp(split), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mlp(split[5:17]), whole[5:17], rtol=1e-12, atol=1e-12)
