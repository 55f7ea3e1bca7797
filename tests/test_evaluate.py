"""Tests for eqv2calc.drivers.evaluate: batched single points with per-structure errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from eqv2calc.drivers import evaluate
from eqv2calc.drivers.testing import CountingBatchCalculator


def _structures():
    cu = bulk("Cu", "fcc", a=3.65, cubic=True) * (2, 1, 1)
    cu.rattle(0.05, seed=0)
    slab = fcc111("Au", (2, 2, 3), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    slab.rattle(0.05, seed=1)
    water = molecule("H2O")
    water.center(vacuum=4.0)
    return [cu, slab, water]


def _emt(atoms):
    work = atoms.copy()
    work.calc = EMT()
    return work


def test_matches_emt_single_points():
    structures = _structures()
    results = evaluate(structures, EMT())
    for atoms, res in zip(structures, results):
        ref = _emt(atoms)
        assert res.ok
        assert res.energy == pytest.approx(ref.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(res.forces, ref.get_forces(apply_constraint=False), atol=1e-10)
        assert res.atoms.get_potential_energy() == pytest.approx(res.energy)
        assert res.max_force == pytest.approx(np.linalg.norm(ref.get_forces(), axis=1).max())
    np.testing.assert_allclose(results[0].stress, _emt(structures[0]).get_stress(), atol=1e-10)
    assert results[1].stress is None and results[2].stress is None  # not 3D-periodic
    assert results[0].to_dict()["stress_eV_per_A3"] is not None


def test_batches_by_atom_budget():
    structures = _structures() * 3  # 8, 12, 3 atoms, three times
    calc = CountingBatchCalculator(EMT())
    results = evaluate(structures, calc, max_atoms_per_batch=25)
    assert max(calc.batch_atoms) <= 25
    assert sum(calc.batch_sizes) == len(structures)
    assert calc.batch_calls == 3  # [8, 12, 3], [8, 12, 3], [8, 12, 3]
    energies = [r.energy for r in results]
    np.testing.assert_allclose(energies, [_emt(a).get_potential_energy() for a in structures])


def test_bad_structures_do_not_stop_the_rest():
    good = _structures()
    si = bulk("Si", "diamond", a=5.43)
    overlap = Atoms("Cu2", positions=[[0, 0, 0], [0.1, 0, 0]])
    seen = []
    results = evaluate(
        [good[0], si, overlap, good[2]],
        CountingBatchCalculator(EMT()),
        labels=["cu", "si", "overlap", "water"],
        on_result=lambda i, r: seen.append(r.label),
    )
    assert sorted(seen) == ["cu", "overlap", "si", "water"]
    assert results[0].ok and results[3].ok
    assert "Si" in results[1].error
    assert "overlap" in results[2].error
    assert results[1].to_dict()["status"] == "error"
    assert "FAILED" in results[1].summary_line()
