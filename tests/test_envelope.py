"""The smooth cutoff (``envelope="polynomial"``): eqv2calc's own option for conservative models.

Without it an EquiformerV2 energy jumps when an atom crosses the cutoff (its Gaussian distance
basis does not vanish there and attention renormalises over the neighbours present); with it the
energy and its gradient forces are continuous. Both halves are tested: the plain model's jump is
what makes the envelope model's continuity check meaningful.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces

from eqv2calc.calculator import EquiformerV2Calculator
from eqv2calc.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from eqv2calc.model.envelope import log_weight, polynomial_envelope
from eqv2calc.testing import assert_potential_equivariant, tiny_config, tiny_graph, tiny_model

CUTOFF = 4.0  # Å, tiny_config's


def test_envelope_shape():
    x = torch.cat([torch.linspace(0.0, 1.2, 121), torch.tensor([1.0 - 1e-4])])
    x = x.to(torch.float64).requires_grad_(True)
    u = polynomial_envelope(x * CUTOFF, CUTOFF)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), x)
    assert u[0].item() == 1.0 and torch.all(u[x >= 1.0] == 0)
    assert torch.all(torch.diff(u[:121][x[:121] <= 1.0]) <= 0)  # decreasing inside the cutoff
    # u ~ 35 (1 − x)³ near x = 1: u, u′ and u″ all vanish at the cutoff (C²)
    assert u[-1] < 1e-10 and abs(du[-1]) < 1e-5 and abs(d2u[-1]) < 0.05
    assert torch.isfinite(log_weight(torch.zeros(3))).all()


def calculator(tmp_path, envelope: str, *, forces: str = "gradient") -> EquiformerV2Calculator:
    model = tiny_model(tiny_config(envelope=envelope, max_neighbors=100), dtype=torch.float64)
    path = save_checkpoint(model, tmp_path / f"tiny_{envelope}.pt")
    return EquiformerV2Calculator(path, device="cpu", dtype="float64", forces=forces)


def trimer(x: float) -> Atoms:
    """H, O and C; the C atom at ``x`` Å from the H atom (crossing the cutoff at x = 4)."""
    return Atoms("HOC", positions=[[0, 0, 0], [1.5, 0.5, 0], [x, 0.0, 0.0]])


def energy_and_forces(calc, x: float) -> tuple[float, np.ndarray]:
    atoms = trimer(x)
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_plain_model_jumps_at_the_cutoff(tmp_path):
    calc = calculator(tmp_path, "none")
    below, _ = energy_and_forces(calc, CUTOFF - 1e-6)
    above, _ = energy_and_forces(calc, CUTOFF + 1e-6)
    assert abs(below - above) > 1e-4  # eV (5e-4 here): the jump the envelope removes


def test_envelope_model_is_continuous_at_the_cutoff(tmp_path):
    calc = calculator(tmp_path, "polynomial")
    below, f_below = energy_and_forces(calc, CUTOFF - 1e-6)
    above, f_above = energy_and_forces(calc, CUTOFF + 1e-6)
    assert np.abs(f_below).max() > 1e-2  # the forces are not trivially zero
    assert abs(below - above) < 2e-6 * np.abs(f_below).max() + 1e-10  # ~ slope × step, eV
    np.testing.assert_allclose(f_below, f_above, rtol=0, atol=1e-6)  # eV/Å


def test_envelope_gradient_forces_match_finite_differences(tmp_path):
    calc = calculator(tmp_path, "polynomial")
    atoms = bulk("Mg", "fcc", a=4.0, cubic=True)  # Z ≤ 19 for the tiny model
    atoms.set_chemical_symbols("MgOMgO")
    atoms.rattle(0.05, seed=1)
    atoms.calc = calc
    forces = atoms.get_forces()
    numerical = calculate_numerical_forces(atoms, eps=1e-5, iatoms=[0, 2])
    assert np.abs(forces).max() > 1e-3
    np.testing.assert_allclose(forces[[0, 2]], numerical, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_envelope_model_is_equivariant(dtype):
    # a fine S² grid: point-wise activations on coarse grids are equivariant only to ~1e-2
    options = dict(envelope="polynomial", max_neighbors=100, grid_resolution=64)
    model = tiny_model(tiny_config(**options), dtype=dtype)
    assert_potential_equivariant(model, tiny_graph(dtype=dtype, max_neighbors=None))


def test_envelope_survives_save_and_load(tmp_path):
    model = tiny_model(tiny_config(envelope="polynomial"), dtype=torch.float64)
    path = save_checkpoint(model, tmp_path / "env.pt")
    assert load_checkpoint(path, device="cpu").model.config.envelope == "polynomial"
    data = torch.load(path, weights_only=False)
    data["config"]["eqv2calc"]["envelope"] = "cosine"
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="envelope is 'cosine'"):
        load_checkpoint(tmp_path / "bad.pt", device="cpu")


def test_unknown_envelope_is_refused():
    with pytest.raises(ValueError, match="envelope 'smooth'"):
        tiny_config(envelope="smooth")
