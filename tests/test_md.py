"""Tests for eqv2calc.drivers.md: integrators, drift measurement, logs, restarts."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import read
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from eqv2calc.drivers import StructureError, run_md
from eqv2calc.drivers.md import DIRECT_FORCES_NOTE, linear_drift


def _cu(n=2):
    return bulk("Cu", "fcc", a=3.6, cubic=True) * (n, n, n)


class _DriftingEMT(EMT):
    """EMT whose energy grows by ``rate`` eV with every new evaluation (forces unchanged).

    With one evaluation per MD step, the total energy of an NVE run then drifts by
    ``rate / dt`` on top of EMT's (conserving) dynamics.
    """

    def __init__(self, rate):
        super().__init__()
        self.rate = rate
        self.count = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] += self.rate * self.count
        self.results["free_energy"] = self.results["energy"]
        self.count += 1


def test_nve_reproduces_ase_velocity_verlet():
    atoms = _cu()
    result = run_md(
        atoms,
        EMT(),
        ensemble="nve",
        temperature_K=300,
        timestep_fs=2.0,
        steps=60,
        seed=4,
        log_interval=10,
    )
    ref = atoms.copy()
    thermalize_momenta(ref, 300, rng=np.random.default_rng(4))
    Stationary(ref)
    ref.calc = EMT()
    VelocityVerlet(ref, timestep=2.0 * units.fs).run(60)
    np.testing.assert_allclose(result.atoms.positions, ref.positions, atol=1e-10)
    np.testing.assert_allclose(result.atoms.get_momenta(), ref.get_momenta(), atol=1e-10)
    assert result.steps == 60
    assert result.steps_logged == [0, 10, 20, 30, 40, 50, 60]
    assert result.drift_quantity == "total energy"
    # EMT forces are exact gradients: the drift is tiny
    assert abs(result.drift_mev_per_atom_per_ps) < 1.0


def test_drift_is_measured():
    rate = 1e-3  # eV per step
    dt_fs = 1.0
    result = run_md(
        _cu(),
        _DriftingEMT(rate),
        ensemble="nve",
        temperature_K=200,
        timestep_fs=dt_fs,
        steps=100,
        seed=1,
        log_interval=5,
    )
    expected = rate / (dt_fs / 1000.0)  # eV/ps
    assert result.drift_ev_per_ps == pytest.approx(expected, rel=0.02)


def test_linear_drift():
    t = [0.0, 0.1, 0.2, 0.3]
    assert linear_drift(t, [1.0 + 2.5 * x for x in t]) == pytest.approx(2.5)
    assert linear_drift([0.0], [1.0]) is None


def test_langevin_nvt_thermalises_and_keeps_fixed_atoms():
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    result = run_md(
        slab,
        EMT(),
        ensemble="nvt",
        temperature_K=500,
        timestep_fs=2.0,
        steps=400,
        friction_per_fs=0.05,
        seed=0,
        log_interval=10,
    )
    np.testing.assert_allclose(result.atoms.positions[:4], slab.positions[:4])
    late = result.temperatures[len(result.temperatures) // 2 :]
    assert 250 < np.mean(late) < 750
    assert result.drift_ev_per_ps is None  # Langevin has no conserved energy


def test_nose_hoover_conserved_energy():
    result = run_md(
        _cu(),
        EMT(),
        ensemble="nvt",
        thermostat="nose-hoover",
        temperature_K=300,
        timestep_fs=2.0,
        steps=100,
        seed=2,
        log_interval=5,
    )
    assert result.integrator == "NoseHooverChainNVT"
    assert result.drift_quantity == "conserved energy"
    assert abs(result.drift_mev_per_atom_per_ps) < 1.0


def test_npt_changes_volume_and_logs_pressure(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)  # expanded: EMT pulls it together
    log = tmp_path / "npt.log"
    result = run_md(
        atoms,
        EMT(),
        ensemble="npt",
        temperature_K=100,
        timestep_fs=2.0,
        steps=60,
        pdamp_fs=100.0,
        seed=3,
        log_interval=10,
        logfile=log,
    )
    assert result.integrator == "IsotropicMTKNPT"
    assert len(result.pressures_gpa) == len(result.volumes) == 7
    assert result.volumes[-1] < result.volumes[0]
    header = log.read_text().splitlines()
    assert any("P[GPa]" in line for line in header)


def test_npt_errors():
    class NoStress(EMT):
        implemented_properties = ["energy", "free_energy", "forces"]

    with pytest.raises(ValueError, match="stress"):
        run_md(_cu(1), NoStress(), ensemble="npt", steps=1)
    water = molecule("H2O")
    with pytest.raises(StructureError, match="periodic"):
        run_md(water, EMT(), ensemble="npt", steps=1)
    fixed = _cu(1)
    fixed.set_constraint(FixAtoms(indices=[0]))
    with pytest.raises(StructureError, match="constraints"):
        run_md(fixed, EMT(), ensemble="npt", steps=1)
    with pytest.raises(ValueError, match="unknown ensemble"):
        run_md(_cu(1), EMT(), ensemble="nph", steps=1)


def test_log_and_restart(tmp_path):
    traj, log = tmp_path / "md.traj", tmp_path / "md.log"
    kwargs = dict(
        ensemble="nve",
        temperature_K=300,
        timestep_fs=2.0,
        seed=5,
        log_interval=10,
        trajectory=traj,
        logfile=log,
    )
    run_md(_cu(), EMT(), steps=40, **kwargs)
    text = log.read_text()
    assert DIRECT_FORCES_NOTE in text
    assert "Etot[eV]" in text and "T[K]" in text
    assert "drift" in text.splitlines()[-1]
    assert len(read(traj, ":")) == 5

    resumed = run_md(_cu(), EMT(), steps=80, restart=True, **kwargs)
    straight = run_md(
        _cu(),
        EMT(),
        steps=80,
        ensemble="nve",
        temperature_K=300,
        timestep_fs=2.0,
        seed=5,
        log_interval=10,
    )
    assert resumed.restarted_from == 40 and resumed.steps == 80
    np.testing.assert_allclose(resumed.atoms.positions, straight.atoms.positions, atol=1e-10)
    assert resumed.steps_logged == straight.steps_logged
    np.testing.assert_allclose(resumed.total_energies, straight.total_energies, atol=1e-10)
    frames = read(traj, ":")
    assert [f.info["md_step"] for f in frames] == list(range(0, 81, 10))
    assert "restarted from" in log.read_text()


def test_md_settings_object_and_checks():
    from eqv2calc.drivers import MDSettings

    settings = MDSettings(ensemble="NVE", timestep_fs=2.0, steps=10, log_interval=5, seed=1)
    assert settings.checked().ensemble == "nve"
    by_object = run_md(_cu(1), EMT(), settings)
    by_keywords = run_md(
        _cu(1), EMT(), ensemble="nve", timestep_fs=2.0, steps=10, log_interval=5, seed=1
    )
    np.testing.assert_array_equal(by_object.atoms.positions, by_keywords.atoms.positions)
    assert by_object.steps_logged == [0, 5, 10]
    with pytest.raises(ValueError, match="timestep must be positive"):
        MDSettings(timestep_fs=float("nan")).checked()
    with pytest.raises(TypeError, match="unknown option.*temperature"):
        run_md(_cu(1), EMT(), temperature=300)
