"""The Gaussian distance basis: the windowed evaluation equals the dense formula."""

from __future__ import annotations

import torch

from eqv2calc.model.radial import GaussianDistanceBasis


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
