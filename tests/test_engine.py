"""The batched device engine against ASE's own FIRE / LBFGS (and FrechetCellFilter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms, FixBondLength
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE, LBFGS
from eqv2_reference import DEMO_MODEL as DEMO

from eqv2calc.engine import EngineSettings, relax_engine
from eqv2calc.engine.optimizers import make_optimizer
from eqv2calc.engine.state import BatchedStructures

ASE_OPT = {"FIRE": FIRE, "LBFGS": LBFGS}


def _slabs(count: int = 3, size=(2, 2, 3)):
    out = []
    for k in range(count):
        s = fcc111("Cu", size=size, vacuum=6.0)
        add_adsorbate(s, ("Au", "Ni", "Ag")[k % 3], 2.0, ("fcc", "hcp")[k % 2])
        s.set_constraint(FixAtoms(indices=list(range(size[0] * size[1]))))
        s.rattle(0.05, seed=k)
        out.append(s)
    return out


def _bulks(count: int = 2):
    out = []
    for k in range(count):
        b = bulk("Cu", "fcc", a=3.65 + 0.05 * k, cubic=True)
        b.rattle(0.03, seed=k)
        strain = np.eye(3) + 0.02 * np.random.default_rng(k).normal(size=(3, 3))
        b.set_cell(b.cell.array @ strain, scale_atoms=True)
        out.append(b)
    return out


def _ase_reference(structs, calc_factory, name, fmax, steps, cell=False, **kw):
    ref = []
    for a in structs:
        a = a.copy()
        a.calc = calc_factory()
        opt = ASE_OPT[name](FrechetCellFilter(a) if cell else a, logfile=None, **kw)
        converged = opt.run(fmax=fmax, steps=steps)
        ref.append((a.get_potential_energy(), opt.nsteps, converged, a.get_positions()))
    return ref


@pytest.mark.parametrize("name", ["FIRE", "LBFGS"])
def test_matches_ase_optimizers_emt(name):
    """Same energies, positions and step counts as ASE (EMT, FixAtoms, different structures)."""
    structs = _slabs(3)
    kw = {"maxstep": 0.15} if name == "LBFGS" else {"dt": 0.08}
    ref = _ase_reference(structs, EMT, name, 0.02, 300, **kw)
    res = relax_engine(
        structs, EMT(), EngineSettings(optimizer=name, fmax=0.02, steps=300, optimizer_kwargs=kw)
    )
    for k, (r, (e, n, conv, pos)) in enumerate(zip(res, ref)):
        assert r.error is None
        assert r.converged == conv
        assert r.steps == n
        assert abs(r.final_energy - e) < 1e-8
        np.testing.assert_allclose(r.atoms.get_positions(), pos, atol=1e-8)
        # fixed atoms did not move
        fixed = r.atoms.constraints[0].get_indices()
        np.testing.assert_array_equal(r.atoms.positions[fixed], structs[k].positions[fixed])


@pytest.mark.parametrize("name", ["FIRE", "LBFGS"])
def test_frechet_cell_filter_matches_ase(name):
    structs = _bulks(2)
    ref = _ase_reference(structs, EMT, name, 0.01, 300, cell=True)
    res = relax_engine(
        structs, EMT(), EngineSettings(optimizer=name, fmax=0.01, steps=300, relax_cell=True)
    )
    for r, (e, n, conv, pos) in zip(res, ref):
        assert r.error is None and r.converged == conv
        assert r.steps == n
        assert abs(r.final_energy - e) < 1e-8
        np.testing.assert_allclose(r.atoms.get_positions(), pos, atol=1e-7)


def test_in_flight_refill_under_atom_budget_gives_same_results():
    """A budget of two slabs at a time: structures enter as others finish, results unchanged."""
    structs = _slabs(5)
    full = relax_engine(structs, EMT(), EngineSettings(optimizer="LBFGS", fmax=0.03, steps=200))
    small = relax_engine(
        structs,
        EMT(),
        EngineSettings(optimizer="LBFGS", fmax=0.03, steps=200, max_atoms_per_batch=26),
    )
    for a, b in zip(full, small):
        assert a.steps == b.steps
        assert abs(a.final_energy - b.final_energy) < 1e-10


def test_step_limit_and_bad_structures_reported():
    structs = _slabs(2)
    bad = structs[1].copy()
    bad.set_constraint(FixBondLength(0, 1))
    res = relax_engine([structs[0], bad], EMT(), EngineSettings(fmax=1e-6, steps=3))
    assert res[0].steps == 3 and not res[0].converged and res[0].error is None
    assert "FixBondLength" in res[1].error


def test_trajectory_and_log_per_structure(tmp_path):
    from ase.io import read

    structs = _slabs(2)
    trajs = [tmp_path / f"s{i}.traj" for i in range(2)]
    logs = [tmp_path / f"s{i}.log" for i in range(2)]
    res = relax_engine(
        structs, EMT(), EngineSettings(fmax=0.05, steps=100), trajectories=trajs, logfiles=logs
    )
    for r, t, lg in zip(res, trajs, logs):
        frames = read(t, ":")
        assert len(frames) == r.steps + 1
        assert abs(frames[-1].get_potential_energy() - r.final_energy) < 1e-12
        assert len(lg.read_text().splitlines()) == r.steps + 2


def test_optimizer_options_are_checked():
    with pytest.raises(ValueError, match="unknown FIRE option"):
        make_optimizer("FIRE", bogus=1)
    with pytest.raises(ValueError, match="FIRE and LBFGS"):
        make_optimizer("BFGS")


@pytest.mark.parametrize("name", ["FIRE", "LBFGS"])
def test_demo_model_float64_matches_ase(name):
    """The bundled model in float64 through predict_state (device graph) and through ASE."""
    from eqv2calc import EquiformerV2Calculator

    calc = EquiformerV2Calculator(str(DEMO), device="cpu", dtype="float64")
    structs = _slabs(2, size=(2, 2, 2))
    ref = _ase_reference(structs, lambda: calc, name, 0.1, 80)
    res = relax_engine(structs, calc, EngineSettings(optimizer=name, fmax=0.1, steps=80))
    for r, (e, n, conv, _) in zip(res, ref):
        assert r.error is None and r.converged == conv
        assert abs(r.final_energy - e) < 1e-4
        assert abs(r.steps - n) <= 3


def test_predict_state_equals_predict_batch():
    from eqv2calc import EquiformerV2Calculator

    calc = EquiformerV2Calculator(str(DEMO), device="cpu", dtype="float64")
    structs = _slabs(2) + _bulks(1)
    ref = calc.predict_batch(structs)
    st = BatchedStructures.from_atoms(structs)
    out = calc.predict_state(st.positions, st.cells, st.numbers, st.batch, st.pbc)
    np.testing.assert_allclose(out["energy"].numpy(), [r["energy"] for r in ref], atol=1e-10)
    np.testing.assert_allclose(
        out["forces"].numpy(), np.concatenate([r["forces"] for r in ref]), atol=1e-10
    )
    assert out["energy"].dtype == torch.float64


def test_per_structure_fmax():
    """Each structure converges to its own threshold, as separate ASE runs would."""
    structs = _slabs(2)
    fmaxes = [0.1, 0.01]
    res = relax_engine(structs, EMT(), EngineSettings(optimizer="FIRE", fmax=fmaxes, steps=300))
    for s, r, f in zip(structs, res, fmaxes):
        ((e, n, conv, _),) = _ase_reference([s], EMT, "FIRE", f, 300)
        assert r.fmax == f and r.converged == conv and r.steps == n
        assert abs(r.final_energy - e) < 1e-8
