"""Tests for eqv2calc.drivers.relax_batch: parity with ASE, one call per step, budgets."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.optimize import BFGS, FIRE, LBFGS

from eqv2calc.drivers import relax, relax_batch
from eqv2calc.drivers.testing import CountingBatchCalculator

ASE_OPTIMIZERS = {"FIRE": FIRE, "LBFGS": LBFGS, "BFGS": BFGS}


def _structures():
    """Mixed sizes, with and without fixed atoms, needing different numbers of steps."""
    out = []
    for seed in range(3):
        slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
        add_adsorbate(slab, "O", 1.6, "fcc")
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
        slab.rattle(0.04 * (seed + 1), seed=seed)
        out.append(slab)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    cu.rattle(0.05, seed=7)
    out.append(cu)
    co = molecule("CO")
    co.center(vacuum=4.0)
    co.positions[1, 2] += 0.1
    out.append(co)
    return out


def _ase_reference(atoms, opt_class, fmax, steps, cell=False):
    work = atoms.copy()
    work.calc = EMT()
    opt = opt_class(FrechetCellFilter(work) if cell else work, logfile=None)
    converged = opt.run(fmax=fmax, steps=steps)
    return work, opt.nsteps, converged


@pytest.mark.parametrize("optimizer", ["FIRE", "LBFGS"])
def test_matches_one_at_a_time_ase_and_calls_model_once_per_step(optimizer):
    structures = _structures()
    calc = CountingBatchCalculator(EMT())
    results = relax_batch(
        structures, calc, optimizer=optimizer, fmax=0.02, steps=300, progress=False
    )
    assert [r.label for r in results] == [
        f"{a.get_chemical_formula()}_{i}" for i, a in enumerate(structures)
    ]
    for atoms, res in zip(structures, results):
        ref, nsteps, converged = _ase_reference(atoms, ASE_OPTIMIZERS[optimizer], 0.02, 300)
        assert res.converged and converged
        assert res.steps == nsteps
        assert res.final_energy == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(res.atoms.positions, ref.positions, atol=1e-6)
    # one batched model call per step for the whole batch, none outside it
    steps = [r.steps for r in results]
    assert calc.batch_calls == max(steps) + 1
    assert calc.single_calls == 0
    # converged structures leave the batch
    assert calc.batch_sizes[0] == len(structures)
    assert calc.batch_sizes == sorted(calc.batch_sizes, reverse=True)
    assert sum(calc.batch_sizes) == sum(s + 1 for s in steps)


def test_bfgs_matches_ase():
    structures = _structures()[:2]
    results = relax_batch(
        structures,
        CountingBatchCalculator(EMT()),
        optimizer="BFGS",
        fmax=0.02,
        steps=300,
        progress=False,
    )
    for atoms, res in zip(structures, results):
        ref, nsteps, _ = _ase_reference(atoms, BFGS, 0.02, 300)
        assert res.steps == nsteps
        assert res.final_energy == pytest.approx(ref.get_potential_energy(), abs=1e-6)


def test_memory_budget_limits_atoms_per_call():
    structures = _structures()
    calc = CountingBatchCalculator(EMT())
    budget = 30  # two 13-atom slabs fit, three do not
    results = relax_batch(
        structures,
        calc,
        optimizer="FIRE",
        fmax=0.02,
        steps=300,
        max_atoms_per_batch=budget,
        progress=False,
    )
    assert max(calc.batch_atoms) <= budget
    assert calc.single_calls == 0
    for atoms, res in zip(structures, results):
        ref, nsteps, _ = _ase_reference(atoms, FIRE, 0.02, 300)
        assert res.steps == nsteps
        assert res.final_energy == pytest.approx(ref.get_potential_energy(), abs=1e-6)


def test_cell_relaxation_matches_ase():
    structures = [bulk("Cu", "fcc", a=a) * (2, 1, 1) for a in (3.5, 3.7)]
    for i, s in enumerate(structures):
        s.rattle(0.02, seed=i)
    calc = CountingBatchCalculator(EMT())
    results = relax_batch(
        structures, calc, optimizer="LBFGS", fmax=0.01, steps=100, relax_cell=True, progress=False
    )
    assert calc.single_calls == 0
    for atoms, res in zip(structures, results):
        ref, nsteps, _ = _ase_reference(atoms, LBFGS, 0.01, 100, cell=True)
        assert res.converged and res.steps == nsteps
        assert res.final_energy == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(res.atoms.cell[:], ref.cell[:], atol=1e-6)
        assert res.max_stress is not None


def test_bad_structures_are_reported_and_the_rest_relaxed():
    good = _structures()[:2]
    silicon = bulk("Si", "diamond", a=5.43)  # EMT has no Si: NotImplementedError
    overlapping = Atoms("Cu2", positions=[[0, 0, 0], [0.2, 0, 0]], cell=[6, 6, 6], pbc=True)
    nan = good[0].copy()
    nan.positions[5] = np.nan
    inputs = [good[0], silicon, overlapping, Atoms(), nan, good[1]]
    finished = []
    results = relax_batch(
        inputs,
        CountingBatchCalculator(EMT()),
        fmax=0.05,
        steps=200,
        progress=False,
        on_result=lambda i, r: finished.append(i),
    )
    assert sorted(finished) == list(range(len(inputs)))
    assert results[0].converged and results[5].converged
    assert "Si" in results[1].error
    assert "atoms 0 (Cu) and 1 (Cu) overlap" in results[2].error
    assert "empty" in results[3].error
    assert "atom 5" in results[4].error and "non-finite" in results[4].error
    assert all(not r.ok for r in results[1:5])
    assert all("FAILED" in r.summary_line() for r in results[1:5])


def test_non_converged_is_reported():
    (res,) = relax_batch(_structures()[:1], EMT(), fmax=0.001, steps=3, progress=False)
    assert res.ok and not res.converged and res.steps == 3
    assert "NOT CONVERGED" in res.summary_line()
    assert res.to_dict()["status"] == "not_converged"


def test_restart_from_trajectories(tmp_path):
    structures = _structures()[:3]
    kwargs = dict(optimizer="LBFGS", fmax=0.01, trajectory_dir=tmp_path, progress=False)
    partial = relax_batch(structures, EMT(), steps=3, **kwargs)
    assert all(r.steps == 3 and not r.converged for r in partial)
    resumed = relax_batch(structures, EMT(), steps=300, restart=True, **kwargs)
    fresh = relax_batch(structures, EMT(), optimizer="LBFGS", fmax=0.01, steps=300, progress=False)
    for r, f in zip(resumed, fresh):
        assert r.restarted_from == 3
        assert r.steps == f.steps
        assert r.final_energy == pytest.approx(f.final_energy, abs=1e-8)
        frames = read(r.trajectory, ":")
        assert len(frames) == f.steps + 1
        assert frames[-1].get_potential_energy() == pytest.approx(r.final_energy)
        log = (tmp_path / f"{r.label}.log").read_text()
        assert log.count("LBFGS:") == f.steps + 1


def test_line_search_optimizer_runs_one_at_a_time():
    structures = _structures()[:2]
    calc = CountingBatchCalculator(EMT())
    results = relax_batch(
        structures, calc, optimizer="BFGSLineSearch", fmax=0.05, steps=100, progress=False
    )
    assert calc.batch_calls == 0  # not batched: plain ASE calls
    for atoms, res in zip(structures, results):
        single = relax(atoms, EMT(), optimizer="BFGSLineSearch", fmax=0.05, steps=100)
        assert res.converged
        assert res.final_energy == pytest.approx(single.final_energy, abs=1e-8)


def test_relax_cell_needs_stress():
    class NoStress(EMT):
        implemented_properties = ["energy", "free_energy", "forces"]

    with pytest.raises(ValueError, match="no stress head"):
        relax_batch([bulk("Cu")], NoStress(), relax_cell=True, progress=False)


def test_equiformer_batched_matches_one_at_a_time(monkeypatch):
    """With the EquiformerV2 fixture model, batched and single relaxations agree."""
    from pathlib import Path

    from eqv2calc.calculator import EquiformerV2Calculator

    checkpoint = Path(__file__).parent / "data/eqv2/checkpoints/eq2_small_oc20_classic.pt"
    calc = EquiformerV2Calculator(model=checkpoint, device="cpu")
    structures = _structures()[:2]
    sizes = []
    predict_batch = calc.predict_batch

    def counted(atoms_list):
        sizes.append(len(atoms_list))
        return predict_batch(atoms_list)

    monkeypatch.setattr(calc, "predict_batch", counted)
    batched = relax_batch(structures, calc, optimizer="FIRE", fmax=1e-6, steps=4, progress=False)
    assert sizes == [2] * 5  # one model call for both structures per step
    for atoms, res in zip(structures, batched):
        single = relax(atoms, calc, optimizer="FIRE", fmax=1e-6, steps=4)
        assert res.steps == single.steps == 4
        assert res.final_energy == pytest.approx(single.final_energy, abs=1e-4)
        np.testing.assert_allclose(res.atoms.positions, single.atoms.positions, atol=1e-4)
