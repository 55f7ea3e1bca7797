"""Batched device MD (eqv2calc.engine.md) against ASE's integrators."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.md.verlet import VelocityVerlet

from eqv2calc.engine.md import MDSettings, run_md_engine


def _systems():
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    b = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    b.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    out = []
    for k, s in enumerate((a, b)):
        rng = np.random.default_rng(k)
        m = s.get_masses()[:, None]
        s.set_momenta(np.sqrt(m * 400 * units.kB) * rng.normal(size=(len(s), 3)))
        out.append(s)
    return out


def test_nve_matches_ase_velocity_verlet(tmp_path):
    systems = _systems()
    res = run_md_engine(
        systems,
        EMT(),
        MDSettings(ensemble="nve", timestep_fs=2.0, steps=15, log_interval=5),
        trajectories=[tmp_path / "a.traj", tmp_path / "b.traj"],
        logfiles=[tmp_path / "a.log", tmp_path / "b.log"],
    )
    for r, s in zip(res, systems):
        a = s.copy()
        a.calc = EMT()
        VelocityVerlet(a, timestep=2.0 * units.fs).run(15)
        np.testing.assert_allclose(r.atoms.get_positions(), a.get_positions(), atol=1e-9)
        np.testing.assert_allclose(r.atoms.get_velocities(), a.get_velocities(), atol=1e-9)
        assert abs(r.potential_energies[-1] - a.get_potential_energy()) < 1e-9
        assert r.steps == 15 and len(r.potential_energies) == 4
    from ase.io import read

    assert len(read(tmp_path / "b.traj", ":")) == 4
    rows = [x for x in (tmp_path / "a.log").read_text().splitlines() if not x.startswith("#")]
    assert [int(x.split()[0]) for x in rows] == [0, 5, 10, 15]
    fixed = res[1].atoms.constraints[0].get_indices()
    np.testing.assert_array_equal(res[1].atoms.positions[fixed], systems[1].positions[fixed])


def test_langevin_zero_friction_is_velocity_verlet():
    systems = _systems()
    nve = run_md_engine(systems, EMT(), MDSettings(ensemble="nve", steps=10))
    nvt = run_md_engine(
        systems, EMT(), MDSettings(ensemble="nvt", steps=10, friction_per_fs=0.0, temperature_K=0)
    )
    for a, b in zip(nve, nvt):
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=1e-12)


def test_langevin_reaches_each_systems_temperature():
    """Two copies of one crystal held at 200 K and 600 K (per-system thermostats)."""
    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    systems = [base.copy(), base.copy()]
    res = run_md_engine(
        systems,
        EMT(),
        MDSettings(
            ensemble="nvt",
            timestep_fs=5.0,
            steps=200,
            temperature_K=[200.0, 600.0],
            friction_per_fs=0.1,
            log_interval=2,
            seed=3,
        ),
    )
    for r, target in zip(res, (200.0, 600.0)):
        mean_t = float(np.mean(r.temperatures[25:]))
        assert abs(mean_t - target) < 0.15 * target, (mean_t, target)


def test_bad_settings():
    with pytest.raises(ValueError, match="nve"):
        run_md_engine(_systems(), EMT(), MDSettings(ensemble="npt"))


def test_cli_md_several_inputs_run_together(tmp_path):
    from ase.io import read, write
    from click.testing import CliRunner

    from eqv2calc.cli import main

    files = []
    for name, a in (("a", bulk("Cu", "fcc", a=3.6, cubic=True)), ("b", bulk("Au", "fcc", a=4.1))):
        write(tmp_path / f"{name}.extxyz", a)
        files.append(str(tmp_path / f"{name}.extxyz"))
    res = CliRunner().invoke(
        main,
        [
            "md",
            *files,
            "--model",
            "emt",
            "--ensemble",
            "nve",
            "--steps",
            "6",
            "--log-interval",
            "3",
            "--seed",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    for name in ("a", "b"):
        assert len(read(tmp_path / f"{name}_md.traj", ":")) == 3
        assert (tmp_path / f"{name}_md_final.extxyz").is_file()
    bad = CliRunner().invoke(main, ["md", *files, "--model", "emt", "--ensemble", "npt"])
    assert bad.exit_code != 0 and "nve or nvt" in bad.output


def test_log_has_single_input_columns_and_nve_drift_summary(tmp_path):
    """The batched log carries the single-system log's columns (step first) and a
    ``# summary`` line with the NVE drift fitted to its own Etot column."""
    from eqv2calc.drivers.md import run_md

    systems = _systems()
    res = run_md_engine(
        systems,
        EMT(),
        MDSettings(ensemble="nve", timestep_fs=2.0, steps=10, log_interval=2, seed=123),
        logfiles=[tmp_path / "a.log", tmp_path / "b.log"],
    )
    single = systems[0].copy()
    single.calc = EMT()
    run_md(single, EMT(), ensemble="nve", steps=2, logfile=tmp_path / "one.log")
    columns = [x for x in (tmp_path / "one.log").read_text().splitlines() if "Epot[eV]" in x]
    for r, name in zip(res, ("a.log", "b.log")):
        lines = (tmp_path / name).read_text().splitlines()
        assert "# seed 123" in lines
        assert columns[0] in lines
        rows = np.array([[float(v) for v in x.split()] for x in lines if not x.startswith("#")])
        np.testing.assert_array_equal(rows[:, 0], np.arange(0, 11, 2))
        np.testing.assert_allclose(rows[:, 4], rows[:, 2] + rows[:, 3], atol=2e-6)
        slope = np.polyfit(rows[:, 1], rows[:, 4], 1)[0]
        summary = [x for x in lines if x.startswith("# summary:")]
        assert len(summary) == 1 and "drift" in summary[0]
        logged = float(summary[0].split("drift ")[1].split()[0])
        assert abs(logged - slope) <= 1e-3 * abs(slope) + 1e-4
        assert abs(r.drift_ev_per_ps - slope) <= 1e-3 * abs(slope) + 1e-4
