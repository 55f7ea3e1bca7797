"""Tests for eqv2calc.drivers.relax: one-at-a-time relaxation, fix_below, restarts."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.eos import EquationOfState
from ase.io import read
from ase.optimize import FIRE

from eqv2calc.drivers import StructureError, fix_below, relax


class _EMTNoStress(EMT):
    implemented_properties = ["energy", "free_energy", "forces"]


def _slab(seed=0):
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.rattle(0.05, seed=seed)
    return slab


def test_relax_matches_plain_ase_fire():
    slab = _slab()
    ref = slab.copy()
    ref.calc = EMT()
    opt = FIRE(ref, logfile=None)
    opt.run(fmax=0.03, steps=200)

    result = relax(slab, EMT(), optimizer="FIRE", fmax=0.03, steps=200)
    assert result.converged and result.ok
    assert result.steps == opt.nsteps
    assert result.final_energy == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    assert len(result.energies) == result.steps + 1
    start = slab.copy()
    start.calc = EMT()
    assert result.initial_energy == pytest.approx(start.get_potential_energy(), abs=1e-9)
    assert result.max_force < 0.03
    # the caller's structure is not touched; the result carries its energy
    assert slab.calc is None
    assert result.atoms.get_potential_energy() == pytest.approx(result.final_energy)


def test_fix_below_keeps_bottom_layers_in_place():
    slab = _slab()
    tags = slab.get_tags()  # fcc111 layers: 1 top ... 3 bottom, 4 the adsorbate
    z_cut = 0.5 * (slab.positions[tags == 2, 2].max() + slab.positions[tags == 1, 2].min())
    newly_fixed = fix_below(slab, z_cut)
    assert newly_fixed == [int(i) for i in np.flatnonzero(slab.positions[:, 2] < z_cut)]
    assert len(newly_fixed) == 8
    result = relax(slab, EMT(), fmax=0.05, steps=200)
    np.testing.assert_allclose(result.atoms.positions[newly_fixed], slab.positions[newly_fixed])
    # max_force is over free atoms only, although the fixed ones feel forces
    raw = result.atoms.get_forces(apply_constraint=False)
    assert np.linalg.norm(raw[newly_fixed], axis=1).max() > result.max_force
    assert result.max_force < 0.05


def test_fix_below_merges_with_existing_constraints():
    slab = _slab()
    slab.set_constraint(FixAtoms(indices=[11]))
    fix_below(slab, slab.positions[slab.get_tags() == 3, 2].max() + 0.5)
    (constraint,) = slab.constraints
    assert sorted(constraint.get_indices()) == [0, 1, 2, 3, 11]


def test_restart_continues_from_trajectory(tmp_path):
    slab = _slab(seed=3)
    traj = tmp_path / "slab.traj"
    log = tmp_path / "slab.log"
    first = relax(slab, EMT(), optimizer="LBFGS", fmax=0.01, steps=4, trajectory=traj, logfile=log)
    assert not first.converged and first.steps == 4
    assert len(read(traj, ":")) == 5
    second = relax(
        slab,
        EMT(),
        optimizer="LBFGS",
        fmax=0.01,
        steps=200,
        trajectory=traj,
        logfile=log,
        restart=True,
    )
    fresh = relax(slab, EMT(), optimizer="LBFGS", fmax=0.01, steps=200)
    assert second.converged and second.restarted_from == 4
    # LBFGS history is rebuilt from the trajectory, so the run is the uninterrupted one
    assert second.steps == fresh.steps
    assert second.final_energy == pytest.approx(fresh.final_energy, abs=1e-8)
    np.testing.assert_allclose(second.energies, fresh.energies, atol=1e-8)
    assert len(read(traj, ":")) == fresh.steps + 1
    assert log.read_text().count("LBFGS:") == fresh.steps + 1


def test_relax_cell_reaches_emt_lattice_constant():
    atoms = bulk("Cu", "fcc", a=3.75)
    result = relax(atoms, EMT(), optimizer="LBFGS", fmax=0.005, steps=200, relax_cell=True)
    assert result.converged
    # independent reference: equation-of-state fit of EMT energies
    volumes, energies = [], []
    for a in np.linspace(3.5, 3.7, 7):
        probe = bulk("Cu", "fcc", a=a)
        probe.calc = EMT()
        volumes.append(probe.get_volume())
        energies.append(probe.get_potential_energy())
    v0, _, _ = EquationOfState(volumes, energies).fit()
    assert result.atoms.get_volume() == pytest.approx(v0, rel=2e-3)
    assert result.max_stress is not None and result.max_stress < 0.005


def test_relax_cell_errors():
    with pytest.raises(ValueError, match="stress"):
        relax(bulk("Cu"), _EMTNoStress(), relax_cell=True)
    slab = _slab()
    slab.pbc = [True, True, False]
    with pytest.raises(StructureError, match="periodic in all three"):
        relax(slab, EMT(), relax_cell=True)


def test_bfgs_line_search_and_unknown_optimizer():
    result = relax(_slab(), EMT(), optimizer="BFGSLineSearch", fmax=0.05, steps=100)
    assert result.converged and result.optimizer == "BFGSLineSearch"
    with pytest.raises(ValueError, match="unknown optimizer"):
        relax(_slab(), EMT(), optimizer="SteepestDescent")


def test_calculator_without_stress_is_fine_without_cell_relaxation():
    calc: Calculator = _EMTNoStress()
    result = relax(bulk("Cu", a=3.7, cubic=True), calc, steps=5)
    assert result.converged  # symmetric: no forces


def test_settings_object_and_keyword_options_agree():
    from eqv2calc.drivers import RelaxSettings, relax_batch

    settings = RelaxSettings(optimizer="BFGS", fmax=0.02, steps=40)
    by_object = relax(_slab(), EMT(), settings)
    by_keywords = relax(_slab(), EMT(), optimizer="BFGS", fmax=0.02, steps=40)
    assert by_object.steps == by_keywords.steps and by_object.optimizer == "BFGS"
    assert by_object.final_energy == by_keywords.final_energy
    (batched,) = relax_batch([_slab()], EMT(), settings, progress=False)
    assert batched.steps == by_object.steps
    # an override on top of the settings object; unknown names are refused by name
    assert relax(_slab(), EMT(), settings, steps=2).steps == 2
    with pytest.raises(TypeError, match="unknown relaxation option.*fmx"):
        relax(_slab(), EMT(), fmx=0.1)
