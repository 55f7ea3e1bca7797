"""The conservative candidate kept in models/train_default/candidates (issue 17) stays usable.

It is committed so that a later training run can continue it; these checks make sure the file
loads as the recipe says (gradient forces and stress, cutoff 4.5 Å) and that its forces are the
derivative of its energy, which is the reason it exists.
"""

from pathlib import Path

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100

from eqv2calc import EquiformerV2Calculator

CANDIDATE = (
    Path(__file__).resolve().parents[1]
    / "models"
    / "train_default"
    / "candidates"
    / "conservative-run6.pt"
)


@pytest.fixture(scope="module")
def calc():
    return EquiformerV2Calculator(str(CANDIDATE), device="cpu", dtype="float64")


def test_candidate_loads_as_a_conservative_model(calc):
    assert calc.forces_kind == "gradient"
    assert calc.has_stress
    assert calc.cutoff == pytest.approx(4.5)


def test_candidate_forces_are_minus_the_energy_gradient(calc):
    slab = fcc100("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.0, "hollow")
    slab.rattle(0.05, seed=3)
    slab.calc = calc
    forces = slab.get_forces()
    h = 1e-4  # Å; central difference error ~h² times the third derivative
    for atom, axis in [(len(slab) - 1, 0), (len(slab) - 1, 2), (5, 1)]:
        energies = []
        for sign in (1, -1):
            moved = slab.copy()
            moved.positions[atom, axis] += sign * h
            moved.calc = calc
            energies.append(moved.get_potential_energy())
        numeric = -(energies[0] - energies[1]) / (2 * h)
        assert numeric == pytest.approx(forces[atom, axis], abs=1e-5), (atom, axis)
    assert np.abs(forces).max() > 1e-2  # a rattled slab: the comparison is not of zeros
