"""The bundled default model (issue 17) is the conservative model its recipe says it is.

models/train_default/README.md (seventh run): gradient forces and stress, cutoff 4.5 Å with
the smooth envelope and a cap that never binds, distance-basis Gaussians 12 spacings wide; its
forces must be the derivative of its energy, which is the reason it is the default.
"""

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100

from eqv2calc import EquiformerV2Calculator


@pytest.fixture(scope="module")
def calc():
    return EquiformerV2Calculator(device="cpu", dtype="float64")  # the bundled default


def test_default_loads_as_a_conservative_model(calc):
    assert calc.forces_kind == "gradient"
    assert calc.has_stress
    assert calc.cutoff == pytest.approx(4.5)
    config = calc.model.config
    assert config.envelope == "polynomial" and config.max_neighbors == 100
    assert config.distance_basis_width == 12.0


def test_default_forces_are_minus_the_energy_gradient(calc):
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


def test_default_card_accuracy_is_the_committed_check_report():
    """The card's accuracy block is what card_accuracy.py makes of the bundled run's committed
    summary and check_physics report: no number on the card is typed by hand."""
    import json
    import sys
    from pathlib import Path

    from eqv2calc import registry

    recipe = Path(__file__).resolve().parents[1] / "models" / "train_default"
    sys.path.append(str(recipe))
    import card_accuracy

    summary = json.loads((recipe / "candidates" / "conservative-run10.summary.json").read_text())
    check = json.loads(
        (recipe / "candidates" / "conservative-run10.check_physics.json").read_text()
    )
    card = registry.get_card(registry.DEFAULT_MODEL_NAME)
    test_set = card.accuracy[0].dataset
    expected = card_accuracy.entries(summary, check, "2026-12-03", test_set)
    assert len(card.accuracy) == len(expected) == 3 + 4 + 4 + 1 + 1
    for entry, want in zip(card.accuracy, expected):
        assert (entry.metric, entry.unit) == (want["metric"], want["unit"])
        assert entry.value == pytest.approx(want["value"], abs=0)
    assert check["forces_kind"] == "gradient"
    assert sum(r["ok"] for r in check["modes_meV"].values()) == 4  # what the notes say
