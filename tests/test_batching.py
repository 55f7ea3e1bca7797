"""Tests for eqv2calc.batching: predict_many, predict_isolating, chunk_by_atoms."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from eqv2calc.batching import chunk_by_atoms, predict_isolating, predict_many
from eqv2calc.drivers.testing import CountingBatchCalculator


def _structures():
    cu = bulk("Cu", "fcc", a=3.65, cubic=True)
    cu.rattle(0.05, seed=0)
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.rattle(0.05, seed=1)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    co = molecule("CO")
    co.center(vacuum=4.0)
    return [cu, slab, co]


def _emt_reference(atoms):
    work = atoms.copy()
    work.calc = EMT()
    stress = work.get_stress() if work.pbc.all() else None
    return work.get_potential_energy(), work.get_forces(apply_constraint=False), stress


@pytest.mark.parametrize("batched", [False, True])
def test_predict_many_matches_ase(batched):
    calc = CountingBatchCalculator(EMT()) if batched else EMT()
    structures = _structures()
    positions = [a.positions.copy() for a in structures]
    results = predict_many(calc, structures)
    for atoms, res, pos in zip(structures, results, positions):
        energy, forces, stress = _emt_reference(atoms)
        assert res["energy"] == pytest.approx(energy, abs=1e-10)
        assert res["free_energy"] == pytest.approx(energy, abs=1e-10)
        assert res["forces"].dtype == np.float64
        np.testing.assert_allclose(res["forces"], forces, atol=1e-10)
        if stress is None:
            assert "stress" not in res
        else:
            np.testing.assert_allclose(res["stress"], stress, atol=1e-10)
        assert atoms.calc is None  # caller's structures untouched
        np.testing.assert_array_equal(atoms.positions, pos)
    if batched:
        assert calc.batch_calls == 1 and calc.single_calls == 0


def test_forces_are_raw_for_fixed_atoms():
    slab = _structures()[1]
    (res,) = predict_many(EMT(), [slab])
    # fixed atoms carry their (non-zero) forces; constraints are applied by the optimizer
    assert np.linalg.norm(res["forces"][:4], axis=1).max() > 1e-3


def test_stress_flag():
    cu = _structures()[0]
    assert "stress" not in predict_many(EMT(), [cu], stress=False)[0]
    assert predict_many(EMT(), [cu], stress=True)[0]["stress"].shape == (6,)


def test_predict_isolating_pins_failure_on_the_bad_structure():
    calc = CountingBatchCalculator(EMT())
    si = bulk("Si")
    good = _structures()
    out = predict_isolating(calc, [good[0], si, good[2]])
    assert isinstance(out[1], str) and "Si" in out[1]
    assert isinstance(out[0], dict) and isinstance(out[2], dict)
    energy, _, _ = _emt_reference(good[2])
    assert out[2]["energy"] == pytest.approx(energy)


def test_calculator_is_usable_after_a_failure():
    calc = EMT()
    for _ in range(2):  # the second attempt must fail the same way, not on broken state
        with pytest.raises(NotImplementedError, match="Si"):
            predict_many(calc, [bulk("Si")])
    cu = _structures()[0]
    assert predict_many(calc, [cu])[0]["energy"] == pytest.approx(_emt_reference(cu)[0])


def test_chunk_by_atoms():
    sizes = [4, 13, 2, 30, 5, 5]
    chunks = chunk_by_atoms(sizes, 20)
    assert [i for c in chunks for i in c] == list(range(len(sizes)))
    for chunk in chunks:
        total = sum(sizes[i] for i in chunk)
        assert total <= 20 or len(chunk) == 1
    assert [3] in chunks  # the 30-atom structure runs alone
    with pytest.raises(ValueError):
        chunk_by_atoms(sizes, 0)
