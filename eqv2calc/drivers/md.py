"""Molecular dynamics with any ASE calculator: NVE, NVT and NPT, with logs and restarts.

Integrators (all from ASE):

* ``nve``: ``VelocityVerlet``.
* ``nvt``: ``Langevin`` (``thermostat="langevin"``, friction in 1/fs) or the Nosé–Hoover
  chain ``NoseHooverChainNVT`` (``thermostat="nose-hoover"``, damping time in fs).
* ``npt``: the Martyna–Tobias–Klein integrator with Nosé–Hoover chains
  (``IsotropicMTKNPT`` for isotropic volume changes, ``MTKNPT`` for a fully flexible
  cell); needs a calculator with stress and a 3D-periodic structure without constraints.

Energy conservation: EquiformerV2 predicts forces directly; they are **not** gradients of
the predicted energy, so the total energy of an NVE run drifts even with a small time step.
:func:`run_md` measures the drift (slope of a straight-line fit of the total energy, or of the
integrator's conserved energy for NVT/NPT, against time) and reports it in eV/ps and
meV/atom/ps.

Units: time step and damping times in fs, temperature in K, pressure in eV/Å³ (logged in
GPa), energies in eV.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator

from eqv2calc.checks import StructureError, check_stress_support, validate_structure
from eqv2calc.drivers.relax import read_restart
from eqv2calc.io import calculator_label

__all__ = [
    "DIRECT_FORCES_NOTE",
    "ENSEMBLES",
    "MD_INFO_KEYS",
    "THERMOSTATS",
    "MDResult",
    "MDSettings",
    "RestartMismatch",
    "run_md",
]

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover")

#: Printed in the help and at the top of the MD log of a direct-force model.
DIRECT_FORCES_NOTE = (
    "Released EquiformerV2 models predict forces directly; they are not gradients of the "
    "predicted energy, so the total energy is not exactly conserved and drifts in NVE runs "
    "(models fine-tuned with 'eqv2calc train --forces gradient' conserve it). The measured "
    "drift (linear fit of energy against time) is reported at the end."
)
#: ... of a gradient-force (conservative) model.
GRADIENT_FORCES_NOTE = (
    "This model's forces are gradients of its energy (forces: gradient): NVE runs conserve the "
    "total energy up to the integrator's error. The measured drift is reported at the end."
)


class RestartMismatch(ValueError):
    """A restart asked for other integrator settings than the trajectory was run with."""


def forces_note(calculator: Calculator) -> str:
    """The note for the log header: gradient forces (conservative model) or direct ones."""
    if getattr(calculator, "forces_kind", None) == "gradient":
        return GRADIENT_FORCES_NOTE
    return DIRECT_FORCES_NOTE


@dataclass
class MDResult:
    """Outcome of an MD run; the series hold one entry per logged step.

    Attributes:
        label: Name of the structure.
        atoms: Final structure (positions, cell, momenta) with its energy (eV), forces
            (eV/Å) and, if computed, stress (eV/Å³) attached.
        ensemble: ``nve``, ``nvt`` or ``npt``.
        integrator: Name of the ASE integrator class.
        steps: MD steps done in total (including those before a restart).
        timestep_fs: Time step, fs.
        steps_logged: MD step of each logged point.
        times_ps: Time of each logged point, ps.
        potential_energies: eV.
        kinetic_energies: eV.
        temperatures: K.
        pressures_gpa: Pressure including the kinetic part, GPa (NPT only, else None).
        volumes: Cell volume, Å³ (NPT only, else None).
        conserved_energies: The integrator's conserved quantity, eV (thermostatted runs
            whose integrator provides it, else None).
        drift_ev_per_ps: Slope of the drift fit, eV/ps (None with fewer than 2 points).
        drift_quantity: What was fitted: ``"total energy"`` or ``"conserved energy"``.
        trajectory: Trajectory file, if written.
        logfile: Log file, if written.
        restarted_from: MD step the run continued from (0: fresh start).
    """

    label: str
    atoms: Atoms
    ensemble: str
    integrator: str
    steps: int
    timestep_fs: float
    steps_logged: list[int] = field(default_factory=list)
    times_ps: list[float] = field(default_factory=list)
    potential_energies: list[float] = field(default_factory=list)
    kinetic_energies: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    pressures_gpa: list[float] | None = None
    volumes: list[float] | None = None
    conserved_energies: list[float] | None = None
    drift_ev_per_ps: float | None = None
    drift_quantity: str | None = None
    trajectory: Path | None = None
    logfile: Path | None = None
    restarted_from: int = 0

    @property
    def total_energies(self) -> list[float]:
        """Potential plus kinetic energy per logged point, eV."""
        return [p + k for p, k in zip(self.potential_energies, self.kinetic_energies)]

    @property
    def drift_mev_per_atom_per_ps(self) -> float | None:
        """Drift per atom, meV/atom/ps."""
        if self.drift_ev_per_ps is None:
            return None
        return 1000.0 * self.drift_ev_per_ps / len(self.atoms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        temps = self.temperatures
        return {
            "label": self.label,
            "ensemble": self.ensemble,
            "integrator": self.integrator,
            "n_atoms": len(self.atoms),
            "steps": self.steps,
            "timestep_fs": self.timestep_fs,
            "simulated_time_ps": (
                self.times_ps[-1] if self.times_ps else self.steps * self.timestep_fs / 1000.0
            ),
            "mean_temperature_K": float(np.mean(temps)) if temps else None,
            "final_potential_energy_eV": self.potential_energies[-1] if temps else None,
            "drift_eV_per_ps": self.drift_ev_per_ps,
            "drift_meV_per_atom_per_ps": self.drift_mev_per_atom_per_ps,
            "drift_quantity": self.drift_quantity,
            "mean_pressure_GPa": float(np.mean(self.pressures_gpa)) if self.pressures_gpa else None,
            "restarted_from_step": self.restarted_from,
            "trajectory": str(self.trajectory) if self.trajectory else None,
            "logfile": str(self.logfile) if self.logfile else None,
        }

    def summary_line(self) -> str:
        """One human-readable line."""
        line = (
            f"{self.label}: {self.ensemble.upper()} ({self.integrator}) {self.steps} steps "
            f"x {self.timestep_fs} fs"
        )
        if self.temperatures:
            line += f", mean T {np.mean(self.temperatures):.1f} K"
        if self.pressures_gpa:
            line += f", mean P {np.mean(self.pressures_gpa):.3f} GPa"
        if self.drift_ev_per_ps is not None:
            line += (
                f", {self.drift_quantity} drift {self.drift_ev_per_ps:+.4g} eV/ps "
                f"({self.drift_mev_per_atom_per_ps:+.4g} meV/atom/ps)"
            )
        return line


def linear_drift(times_ps: list[float], energies: list[float]) -> float | None:
    """Slope (eV/ps) of a least-squares straight line through energy against time."""
    if len(times_ps) < 2 or np.ptp(times_ps) == 0:
        return None
    slope, _ = np.polyfit(np.asarray(times_ps, float), np.asarray(energies, float), 1)
    return float(slope)


class _Log:
    """Plain-text MD log: a commented header, one line per logged step, a summary."""

    def __init__(self, path: Path | None, npt: bool, conserved: bool, append: bool):
        self.path = path
        self.npt = npt
        self.conserved = conserved
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                path.unlink(missing_ok=True)

    def write(self, text: str) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)

    def header(self, lines: list[str]) -> None:
        cols = f"{'step':>9} {'time[ps]':>10} {'Epot[eV]':>15} {'Ekin[eV]':>12} {'Etot[eV]':>15} {'T[K]':>9}"
        if self.npt:
            cols += f" {'P[GPa]':>10} {'V[A^3]':>12}"
        if self.conserved:
            cols += f" {'Econs[eV]':>15}"
        self.write("".join(f"# {line}\n" for line in lines) + "#" + cols[1:] + "\n")

    def row(
        self,
        step: int,
        t: float,
        epot: float,
        ekin: float,
        temp: float,
        pressure: float | None,
        volume: float | None,
        econs: float | None,
    ) -> None:
        line = f"{step:9d} {t:10.4f} {epot:15.6f} {ekin:12.6f} {epot + ekin:15.6f} {temp:9.2f}"
        if self.npt:
            line += f" {pressure:10.4f} {volume:12.4f}"
        if self.conserved:
            line += f" {econs:15.6f}"
        self.write(line + "\n")


def _thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta at ``temperature_K`` (K)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta  # ASE >= 3.29
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    else:
        thermalize_momenta(atoms, temperature_K, rng=rng)


def _nose_hoover_module() -> Any:
    try:
        import ase.md.nose_hoover_chain as module
    except ImportError as err:
        import ase

        raise ValueError(
            "Nosé–Hoover chain and MTK NPT integrators need a newer ASE "
            f"(ase.md.nose_hoover_chain is missing in ASE {ase.__version__})"
        ) from err
    return module


@dataclass(frozen=True)
class MDSettings:
    """What an MD run does (everything except where its files go).

    Attributes:
        ensemble: ``nve``, ``nvt`` or ``npt``.
        temperature_K: Target temperature (NVT/NPT) and temperature of the initial
            Maxwell–Boltzmann velocities, K.
        timestep_fs: Time step, fs.
        steps: Total number of MD steps (steps done before a restart count).
        thermostat: For NVT: ``langevin`` or ``nose-hoover`` (NPT always uses Nosé–Hoover
            chains).
        friction_per_fs: Langevin friction, 1/fs.
        tdamp_fs: Nosé–Hoover thermostat damping time, fs (None: 100 time steps).
        pressure: External pressure for NPT, eV/Å³ (1 GPa = 0.0062415 eV/Å³).
        pdamp_fs: Barostat damping time, fs (None: 1000 time steps).
        cell_dof: NPT cell freedom: ``isotropic`` (volume only) or ``full``.
        seed: Seed for the initial velocities and the Langevin noise.
        init_velocities: Draw Maxwell–Boltzmann velocities at ``temperature_K`` (centre of
            mass motion removed, and rotation for non-periodic structures). False keeps the
            momenta stored in the structure.
        log_interval: Log and write a trajectory frame every this many steps.
    """

    ensemble: str = "nvt"
    temperature_K: float = 300.0
    timestep_fs: float = 1.0
    steps: int = 1000
    thermostat: str = "langevin"
    friction_per_fs: float = 0.01
    tdamp_fs: float | None = None
    pressure: float = 0.0
    pdamp_fs: float | None = None
    cell_dof: str = "isotropic"
    seed: int | None = None
    init_velocities: bool = True
    log_interval: int = 10

    def checked(self) -> MDSettings:
        """These settings with names normalised (``NVT`` → ``nvt``); raises ValueError for
        values that cannot work, naming the setting."""
        ensemble = self.ensemble.lower()
        thermostat = self.thermostat.lower().replace("_", "-")
        if ensemble not in ENSEMBLES:
            raise ValueError(
                f"unknown ensemble {self.ensemble!r}; choose one of {', '.join(ENSEMBLES)}"
            )
        if thermostat not in THERMOSTATS:
            raise ValueError(
                f"unknown thermostat {self.thermostat!r}; choose one of {', '.join(THERMOSTATS)}"
            )
        if self.cell_dof not in ("isotropic", "full"):
            raise ValueError(f"cell_dof must be 'isotropic' or 'full', got {self.cell_dof!r}")
        if not self.timestep_fs > 0:
            raise ValueError(f"timestep must be positive, got {self.timestep_fs} fs")
        if not self.temperature_K >= 0:
            raise ValueError(f"temperature must be >= 0 K, got {self.temperature_K}")
        if ensemble != "nve" and self.temperature_K == 0:
            raise ValueError(f"{ensemble.upper()} needs a temperature above 0 K")
        if self.log_interval < 1:
            raise ValueError(f"log_interval must be at least 1, got {self.log_interval}")
        return replace(self, ensemble=ensemble, thermostat=thermostat)

    @property
    def npt(self) -> bool:
        return self.ensemble == "npt"

    def run_record(self) -> dict[str, Any]:
        """The settings that make one continuous trajectory, as stored in every trajectory
        frame's ``info`` (keys ``md_<setting>``) and compared on a restart: the ensemble, the
        time step and what drives the integrator of that ensemble (damping times as used,
        defaults resolved). Seed, step count and log interval may change on a restart."""
        record: dict[str, Any] = {"md_ensemble": self.ensemble, "md_timestep_fs": self.timestep_fs}
        tdamp = self.tdamp_fs if self.tdamp_fs is not None else 100.0 * self.timestep_fs
        if self.ensemble != "nve":
            record["md_temperature_K"] = self.temperature_K
        if self.ensemble == "nvt":
            record["md_thermostat"] = self.thermostat
            if self.thermostat == "langevin":
                record["md_friction_per_fs"] = self.friction_per_fs
            else:
                record["md_tdamp_fs"] = tdamp
        elif self.ensemble == "npt":
            record.update(
                md_tdamp_fs=tdamp,
                md_pressure_GPa=self.pressure / units.GPa,
                md_pdamp_fs=self.pdamp_fs
                if self.pdamp_fs is not None
                else 1000.0 * self.timestep_fs,
                md_cell_dof=self.cell_dof,
            )
        # floats throughout, so that 300 and 300.0 compare and print alike
        return {k: v if isinstance(v, str) else float(v) for k, v in record.items()}


#: ``info`` keys of MD trajectory frames: step, elapsed time (fs), the integrator's conserved
#: energy (eV) and :meth:`MDSettings.run_record`.
MD_INFO_KEYS = (
    "md_step",
    "time_fs",
    "conserved_energy_eV",
    "md_ensemble",
    "md_thermostat",
    "md_timestep_fs",
    "md_temperature_K",
    "md_friction_per_fs",
    "md_tdamp_fs",
    "md_pressure_GPa",
    "md_pdamp_fs",
    "md_cell_dof",
)


def _settings_changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"name: was X, now Y"`` for each setting of ``now`` that differs from ``recorded``
    (settings the frame does not record are not compared)."""
    changes = []
    if "md_ensemble" in recorded and recorded["md_ensemble"] != now["md_ensemble"]:
        # another ensemble: only the time step is comparable besides
        now = {k: now[k] for k in ("md_ensemble", "md_timestep_fs")}
    for key, value in now.items():
        if key not in recorded:
            continue
        old = recorded[key]
        same = (
            math.isclose(float(old), float(value), rel_tol=1e-9, abs_tol=1e-12)
            if isinstance(value, float) and isinstance(old, (int, float))
            else old == value
        )
        if not same:
            name = key.removeprefix("md_")
            changes.append(f"{name}: was {old}, now {value}")
    return changes


def _make_integrator(work: Atoms, settings: MDSettings, rng: np.random.Generator) -> Any:
    """The ASE integrator for ``settings`` acting on ``work``."""
    s = settings
    dt = s.timestep_fs * units.fs
    if s.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(work, timestep=dt)
    tdamp = (s.tdamp_fs if s.tdamp_fs is not None else 100.0 * s.timestep_fs) * units.fs
    if s.ensemble == "nvt":
        if s.thermostat == "langevin":
            from ase.md.langevin import Langevin

            return Langevin(
                work,
                timestep=dt,
                temperature_K=s.temperature_K,
                friction=s.friction_per_fs / units.fs,
                rng=rng,
                fixcm=False,
            )
        nhc = _nose_hoover_module()
        return nhc.NoseHooverChainNVT(work, timestep=dt, temperature_K=s.temperature_K, tdamp=tdamp)
    nhc = _nose_hoover_module()
    pdamp = (s.pdamp_fs if s.pdamp_fs is not None else 1000.0 * s.timestep_fs) * units.fs
    cls = nhc.IsotropicMTKNPT if s.cell_dof == "isotropic" else nhc.MTKNPT
    return cls(
        work,
        timestep=dt,
        temperature_K=s.temperature_K,
        pressure_au=s.pressure,
        tdamp=tdamp,
        pdamp=pdamp,
    )


class _MDRun:
    """One MD run in four steps: :meth:`prepare` (checks, restart, velocities, integrator,
    log header), :meth:`run` (the integrator, with :meth:`observe` every ``log_interval``
    steps), :meth:`finish` (drift, final structure, log summary)."""

    def __init__(
        self,
        atoms: Atoms,
        calculator: Calculator,
        settings: MDSettings,
        *,
        trajectory: Path | None,
        logfile: Path | None,
        label: str,
    ) -> None:
        self.atoms, self.calculator, self.settings = atoms, calculator, settings
        self.traj_path, self.log_path, self.label = trajectory, logfile, label
        self.frames: list[Atoms] = []
        self.start_step = 0
        self.time_offset_fs = 0.0  # time of a step: offset + step x time step (fs)
        self.last_observed: int | None = None

    # --- prepare -----------------------------------------------------------------------------
    def prepare(self, restart: bool) -> None:
        s = self.settings
        if s.npt:
            check_stress_support(self.calculator, "NPT molecular dynamics")
        validate_structure(
            self.atoms, relax_cell=s.npt, cell_what="NPT molecular dynamics (the cell varies)"
        )
        if s.npt and self.atoms.constraints:
            raise StructureError("NPT (MTK integrator) does not support constraints; remove them")
        self.work = self.atoms.copy()
        for key in MD_INFO_KEYS:  # e.g. from an earlier run's final structure
            self.work.info.pop(key, None)
        if restart and self.traj_path is not None:
            self.frames = read_restart(self.traj_path)
        rng = np.random.default_rng(s.seed)
        if self.frames:
            self._continue_from(self.frames[-1])
        else:
            self._fresh_start(rng)
        self.work.calc = self.calculator
        self.dyn = _make_integrator(self.work, s, rng)
        self.dyn.nsteps = self.start_step
        self.has_conserved = s.ensemble != "nve" and hasattr(self.dyn, "get_conserved_energy")
        self.log = _Log(self.log_path, s.npt, self.has_conserved, append=bool(self.frames))
        self.result = MDResult(
            label=self.label,
            atoms=self.work,
            ensemble=s.ensemble,
            integrator=type(self.dyn).__name__,
            steps=self.start_step,
            timestep_fs=s.timestep_fs,
            pressures_gpa=[] if s.npt else None,
            volumes=[] if s.npt else None,
            conserved_energies=[] if self.has_conserved else None,
            trajectory=self.traj_path,
            logfile=self.log_path,
            restarted_from=self.start_step,
        )
        for frame in self.frames[:-1]:
            step = int(frame.info.get("md_step", 0))
            t_fs = float(frame.info.get("time_fs", step * s.timestep_fs))
            econs = frame.info.get("conserved_energy_eV")
            self.add_point(step, t_fs, frame, econs, write_log=False)
        self.log.header(self._header())

    def _continue_from(self, last: Atoms) -> None:
        work, s = self.work, self.settings
        if len(last) != len(work) or not np.array_equal(last.numbers, work.numbers):
            raise StructureError(
                "cannot restart: the trajectory holds a different structure "
                f"({last.get_chemical_formula()} vs {work.get_chemical_formula()})"
            )
        # A restart continues the same trajectory: another ensemble, time step or thermostat
        # would make one file of two different runs (and a wrong time axis). Frames written
        # before the settings were recorded (no "md_ensemble" key) are accepted as they are.
        changes = _settings_changes(last.info, s.run_record())
        if changes:
            raise RestartMismatch(
                f"cannot restart from {self.traj_path} with other settings than it was run "
                f"with ({'; '.join(changes)}); a restart continues the same run: give the "
                "earlier settings, or start a new run (other --traj/--log/--output, or "
                "--overwrite)"
            )
        work.set_cell(last.cell, scale_atoms=False)
        work.set_positions(last.positions, apply_constraint=False)
        work.set_momenta(last.get_momenta(), apply_constraint=False)
        fallback = (len(self.frames) - 1) * s.log_interval
        self.start_step = int(last.info.get("md_step", fallback))
        self.last_observed = self.start_step
        if "time_fs" in last.info:  # time goes on from the last frame's own time
            self.time_offset_fs = float(last.info["time_fs"]) - self.start_step * s.timestep_fs

    def _fresh_start(self, rng: np.random.Generator) -> None:
        s, work = self.settings, self.work
        if self.traj_path is not None:
            self.traj_path.parent.mkdir(parents=True, exist_ok=True)
            self.traj_path.unlink(missing_ok=True)
        if not s.init_velocities:
            return
        from ase.md.velocitydistribution import Stationary, ZeroRotation

        work.set_momenta(np.zeros((len(work), 3)))
        if s.temperature_K > 0:
            _thermalize(work, s.temperature_K, rng)
            if len(work) > 1 and not work.constraints:
                Stationary(work)
                if not work.pbc.any() and len(work) > 2:
                    ZeroRotation(work)

    def _header(self) -> list[str]:
        s = self.settings
        if self.frames:
            return [
                f"restarted from {self.traj_path} at step {self.start_step} "
                "(thermostat/barostat variables start from zero)"
            ]
        langevin = s.ensemble == "nvt" and s.thermostat == "langevin"
        return [
            f"eqv2calc md: {self.label}, {len(self.work)} atoms, ensemble "
            f"{s.ensemble.upper()}, integrator {type(self.dyn).__name__}, time step "
            f"{s.timestep_fs} fs, {s.steps} steps",
            f"temperature {s.temperature_K} K"
            + (f", Langevin friction {s.friction_per_fs} 1/fs" if langevin else "")
            + (f", pressure {s.pressure / units.GPa:.4f} GPa" if s.npt else "")
            + f", seed {s.seed}",
            f"calculator: {calculator_label(self.calculator)}",
            f"Note: {forces_note(self.calculator)}",
        ]

    # --- observe -----------------------------------------------------------------------------
    def time_fs(self, step: int) -> float:
        """Elapsed time at MD step ``step``, fs."""
        return self.time_offset_fs + step * self.settings.timestep_fs

    def add_point(
        self, step: int, t_fs: float, frame: Atoms, econs: float | None, write_log: bool
    ) -> None:
        """Record one logged point (time fs; energies eV, temperature K; pressure GPa for NPT)."""
        result, s = self.result, self.settings
        epot = float(frame.get_potential_energy())
        if not math.isfinite(epot):
            raise RuntimeError(f"{self.label}: potential energy became {epot} at MD step {step}")
        ekin = float(frame.get_kinetic_energy())
        temp = float(frame.get_temperature())
        t_ps = t_fs / 1000.0
        pressure_gpa = volume = None
        result.steps_logged.append(step)
        result.times_ps.append(t_ps)
        result.potential_energies.append(epot)
        result.kinetic_energies.append(ekin)
        result.temperatures.append(temp)
        if s.npt:
            stress = frame.get_stress(include_ideal_gas=True)
            pressure_gpa = -float(np.mean(stress[:3])) / units.GPa
            volume = float(frame.get_volume())
            result.pressures_gpa.append(pressure_gpa)
            result.volumes.append(volume)
        if self.has_conserved:
            result.conserved_energies.append(econs if econs is not None else math.nan)
        if write_log:
            self.log.row(step, t_ps, epot, ekin, temp, pressure_gpa, volume, econs)

    def observe(self) -> None:
        """Called by the integrator every ``log_interval`` steps, and once more for the last
        step of the run: log line + trajectory frame (with step, time and settings)."""
        step = int(self.dyn.nsteps)
        if step == self.last_observed:
            return  # already logged and written (no duplicate frames)
        econs = float(self.dyn.get_conserved_energy()) if self.has_conserved else None
        t_fs = self.time_fs(step)
        self.add_point(step, t_fs, self.work, econs, write_log=True)
        self.last_observed = step
        if self.traj_path is not None:
            from ase.io.trajectory import Trajectory

            self.work.info.update(self.settings.run_record(), md_step=step, time_fs=t_fs)
            if econs is not None:
                self.work.info["conserved_energy_eV"] = econs
            with Trajectory(str(self.traj_path), "a") as traj:
                traj.write(self.work)

    # --- run ---------------------------------------------------------------------------------
    def run(self, progress: bool) -> None:
        s, dyn, start = self.settings, self.dyn, self.start_step
        dyn.attach(self.observe, interval=s.log_interval)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=s.steps, initial=start, desc=f"MD {self.label}", unit="step")
            dyn.attach(lambda: bar.update(1) if dyn.nsteps > start else None, interval=1)
        try:
            if self.frames:
                # ASE does not call observers at the start of a continued run; the restart
                # point (already in the log and the trajectory) is added to the series here.
                econs = float(dyn.get_conserved_energy()) if self.has_conserved else None
                self.add_point(start, self.time_fs(start), self.work, econs, write_log=False)
            remaining = max(s.steps - start, 0)
            if remaining or not self.frames:
                dyn.run(steps=remaining)  # a fresh start logs step 0 (also with 0 steps)
            # The last step is always logged and written, also off the log interval, so a
            # restart continues from where this run stopped.
            self.observe()
        except KeyboardInterrupt:
            self.log.write(
                f"# interrupted at step {int(dyn.nsteps)}; the trajectory holds the steps "
                "logged so far (continue with restart=True / --restart)\n"
            )
            raise
        finally:
            if bar is not None:
                bar.close()
            if hasattr(dyn, "close"):
                dyn.close()

    # --- finish ------------------------------------------------------------------------------
    def finish(self) -> MDResult:
        from ase.calculators.singlepoint import SinglePointCalculator

        result, work, s = self.result, self.work, self.settings
        result.steps = int(self.dyn.nsteps)
        if self.has_conserved:
            series, what = result.conserved_energies, "conserved energy"
        elif s.ensemble == "nve":
            series, what = result.total_energies, "total energy"
        else:
            series, what = None, None
        if series is not None:
            finite = [(t, e) for t, e in zip(result.times_ps, series) if math.isfinite(e)]
            result.drift_ev_per_ps = linear_drift([t for t, _ in finite], [e for _, e in finite])
            result.drift_quantity = what if result.drift_ev_per_ps is not None else None
        final = work.copy()
        res = {
            "energy": work.get_potential_energy(),
            "forces": work.get_forces(apply_constraint=False),
        }
        if s.npt:
            res["stress"] = work.get_stress()
        final.calc = SinglePointCalculator(final, **res)
        for key in MD_INFO_KEYS:
            final.info.pop(key, None)
        work.calc = None
        result.atoms = final
        summary = [f"summary: {result.summary_line()}"]
        if result.drift_ev_per_ps is None and s.ensemble != "nve":
            summary.append(
                f"summary: {type(self.dyn).__name__} has no conserved energy; no drift reported"
            )
        self.log.write("".join(f"# {line}\n" for line in summary))
        return result


def run_md(
    atoms: Atoms,
    calculator: Calculator,
    settings: MDSettings | None = None,
    *,
    trajectory: str | os.PathLike | None = None,
    logfile: str | os.PathLike | None = None,
    restart: bool = False,
    label: str | None = None,
    progress: bool = False,
    **options: Any,
) -> MDResult:
    """Run molecular dynamics of one structure.

    Args:
        atoms: Starting structure (not modified). Fixed atoms (``FixAtoms``) stay fixed
            (not allowed for NPT).
        calculator: Any ASE calculator (NPT needs stress).
        settings: What to run (:class:`MDSettings`; default: NVT Langevin, 300 K, 1 fs,
            1000 steps).
        trajectory: ASE ``.traj`` file for frames (positions, momenta, cell, energies).
        logfile: Text log (time, energies, temperature; pressure and volume for NPT).
        restart: Continue from the last readable frame of ``trajectory`` if it exists
            (positions, momenta, cell and step count; thermostat/barostat variables restart
            from zero). A damaged trajectory is moved aside, never deleted.
        label: Name for messages (default: chemical formula).
        progress: Show a tqdm progress bar over steps.
        **options: Fields of :class:`MDSettings` (``ensemble="npt"``, ``steps=200``...),
            applied on top of ``settings``.

    Returns:
        The :class:`MDResult`, with the drift of the total energy (NVE) or of the
        integrator's conserved energy (Nosé–Hoover NVT/NPT) in eV/ps.

    Raises:
        ValueError: Bad options, a calculator without stress for NPT, or a bad structure
            (:class:`~eqv2calc.checks.StructureError`).
        RuntimeError: The energy became non-finite during the run.
    """
    unknown = sorted(set(options) - {f.name for f in fields(MDSettings)})
    if unknown:
        raise TypeError(f"run_md() got unknown option(s) {', '.join(unknown)}")
    settings = replace(settings or MDSettings(), **options).checked()
    run = _MDRun(
        atoms,
        calculator,
        settings,
        trajectory=Path(trajectory) if trajectory is not None else None,
        logfile=Path(logfile) if logfile else None,
        label=label or atoms.get_chemical_formula(),
    )
    run.prepare(restart)
    run.run(progress)
    return run.finish()
