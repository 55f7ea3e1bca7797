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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator

from eqv2calc.drivers.relax import read_restart
from eqv2calc.drivers.validate import StructureError, check_stress_support, validate_structure
from eqv2calc.io import calculator_label

__all__ = ["DIRECT_FORCES_NOTE", "ENSEMBLES", "THERMOSTATS", "MDResult", "run_md"]

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover")

#: Printed in the help and at the top of every MD log.
DIRECT_FORCES_NOTE = (
    "EquiformerV2 predicts forces directly; they are not gradients of the predicted energy, "
    "so the total energy is not exactly conserved and drifts in NVE runs. The measured drift "
    "(linear fit of energy against time) is reported at the end."
)


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
            "simulated_time_ps": self.steps * self.timestep_fs / 1000.0,
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


def _make_integrator(
    work: Atoms,
    ensemble: str,
    thermostat: str,
    dt: float,
    temperature_K: float,
    friction_per_fs: float,
    tdamp_fs: float | None,
    pressure: float,
    pdamp_fs: float | None,
    cell_dof: str,
    rng: np.random.Generator,
    timestep_fs: float,
) -> Any:
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(work, timestep=dt)
    tdamp = (tdamp_fs if tdamp_fs is not None else 100.0 * timestep_fs) * units.fs
    if ensemble == "nvt":
        if thermostat == "langevin":
            from ase.md.langevin import Langevin

            return Langevin(
                work,
                timestep=dt,
                temperature_K=temperature_K,
                friction=friction_per_fs / units.fs,
                rng=rng,
                fixcm=False,
            )
        nhc = _nose_hoover_module()
        return nhc.NoseHooverChainNVT(work, timestep=dt, temperature_K=temperature_K, tdamp=tdamp)
    nhc = _nose_hoover_module()
    pdamp = (pdamp_fs if pdamp_fs is not None else 1000.0 * timestep_fs) * units.fs
    cls = nhc.IsotropicMTKNPT if cell_dof == "isotropic" else nhc.MTKNPT
    return cls(
        work,
        timestep=dt,
        temperature_K=temperature_K,
        pressure_au=pressure,
        tdamp=tdamp,
        pdamp=pdamp,
    )


def run_md(
    atoms: Atoms,
    calculator: Calculator,
    *,
    ensemble: str = "nvt",
    temperature_K: float = 300.0,
    timestep_fs: float = 1.0,
    steps: int = 1000,
    thermostat: str = "langevin",
    friction_per_fs: float = 0.01,
    tdamp_fs: float | None = None,
    pressure: float = 0.0,
    pdamp_fs: float | None = None,
    cell_dof: str = "isotropic",
    seed: int | None = None,
    init_velocities: bool = True,
    log_interval: int = 10,
    trajectory: str | os.PathLike | None = None,
    logfile: str | os.PathLike | None = None,
    restart: bool = False,
    label: str | None = None,
    progress: bool = False,
) -> MDResult:
    """Run molecular dynamics of one structure.

    Args:
        atoms: Starting structure (not modified). Fixed atoms (``FixAtoms``) stay fixed
            (not allowed for NPT).
        calculator: Any ASE calculator (NPT needs stress).
        ensemble: ``nve``, ``nvt`` or ``npt``.
        temperature_K: Target temperature (NVT/NPT) and temperature of the initial
            Maxwell–Boltzmann velocities, K.
        timestep_fs: Time step, fs.
        steps: Total number of MD steps (steps done before a restart count).
        thermostat: For NVT: ``langevin`` or ``nose-hoover`` (NPT always uses Nosé–Hoover
            chains).
        friction_per_fs: Langevin friction, 1/fs.
        tdamp_fs: Nosé–Hoover thermostat damping time, fs (default 100 time steps).
        pressure: External pressure for NPT, eV/Å³ (1 GPa = 0.0062415 eV/Å³).
        pdamp_fs: Barostat damping time, fs (default 1000 time steps).
        cell_dof: NPT cell freedom: ``isotropic`` (volume only) or ``full``.
        seed: Seed for the initial velocities and the Langevin noise.
        init_velocities: Draw Maxwell–Boltzmann velocities at ``temperature_K`` (centre of
            mass motion removed, and rotation for non-periodic structures). False keeps the
            momenta stored in ``atoms``.
        log_interval: Log and write a trajectory frame every this many steps.
        trajectory: ASE ``.traj`` file for frames (positions, momenta, cell, energies).
        logfile: Text log (time, energies, temperature; pressure and volume for NPT).
        restart: Continue from the last frame of ``trajectory`` if it exists (positions,
            momenta, cell and step count; thermostat/barostat variables restart from zero).
        label: Name for messages (default: chemical formula).
        progress: Show a tqdm progress bar over steps.

    Returns:
        The :class:`MDResult`, with the drift of the total energy (NVE) or of the
        integrator's conserved energy (Nosé–Hoover NVT/NPT) in eV/ps.

    Raises:
        ValueError: Bad options, a calculator without stress for NPT, or a bad structure
            (:class:`~eqv2calc.drivers.validate.StructureError`).
        RuntimeError: The energy became non-finite during the run.
    """
    ensemble = ensemble.lower()
    thermostat = thermostat.lower().replace("_", "-")
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {', '.join(ENSEMBLES)}")
    if thermostat not in THERMOSTATS:
        raise ValueError(
            f"unknown thermostat {thermostat!r}; choose one of {', '.join(THERMOSTATS)}"
        )
    if cell_dof not in ("isotropic", "full"):
        raise ValueError(f"cell_dof must be 'isotropic' or 'full', got {cell_dof!r}")
    if timestep_fs <= 0:
        raise ValueError(f"timestep must be positive, got {timestep_fs} fs")
    if temperature_K < 0:
        raise ValueError(f"temperature must be >= 0 K, got {temperature_K}")
    if ensemble != "nve" and temperature_K == 0:
        raise ValueError(f"{ensemble.upper()} needs a temperature above 0 K")
    if log_interval < 1:
        raise ValueError(f"log_interval must be at least 1, got {log_interval}")
    label = label or atoms.get_chemical_formula()
    npt = ensemble == "npt"
    if npt:
        check_stress_support(calculator, "NPT molecular dynamics")
    validate_structure(atoms, relax_cell=npt, cell_what="NPT molecular dynamics (the cell varies)")
    if npt and atoms.constraints:
        raise StructureError("NPT (MTK integrator) does not support constraints; remove them")

    work = atoms.copy()
    traj_path = Path(trajectory) if trajectory is not None else None
    frames = read_restart(traj_path) if (restart and traj_path is not None) else []
    rng = np.random.default_rng(seed)
    start_step = 0
    if frames:
        last = frames[-1]
        if len(last) != len(work) or not np.array_equal(last.numbers, work.numbers):
            raise StructureError(
                "cannot restart: the trajectory holds a different structure "
                f"({last.get_chemical_formula()} vs {work.get_chemical_formula()})"
            )
        work.set_cell(last.cell, scale_atoms=False)
        work.set_positions(last.positions, apply_constraint=False)
        work.set_momenta(last.get_momenta(), apply_constraint=False)
        start_step = int(last.info.get("md_step", (len(frames) - 1) * log_interval))
    else:
        if traj_path is not None:
            traj_path.parent.mkdir(parents=True, exist_ok=True)
            traj_path.unlink(missing_ok=True)
        if init_velocities:
            from ase.md.velocitydistribution import Stationary, ZeroRotation

            work.set_momenta(np.zeros((len(work), 3)))
            if temperature_K > 0:
                _thermalize(work, temperature_K, rng)
                if len(work) > 1 and not work.constraints:
                    Stationary(work)
                    if not work.pbc.any() and len(work) > 2:
                        ZeroRotation(work)

    work.calc = calculator
    dt = timestep_fs * units.fs
    dyn = _make_integrator(
        work,
        ensemble,
        thermostat,
        dt,
        temperature_K,
        friction_per_fs,
        tdamp_fs,
        pressure,
        pdamp_fs,
        cell_dof,
        rng,
        timestep_fs,
    )
    dyn.nsteps = start_step
    has_conserved = ensemble != "nve" and hasattr(dyn, "get_conserved_energy")
    log = _Log(Path(logfile) if logfile else None, npt, has_conserved, append=bool(frames))
    result = MDResult(
        label=label,
        atoms=work,
        ensemble=ensemble,
        integrator=type(dyn).__name__,
        steps=start_step,
        timestep_fs=timestep_fs,
        pressures_gpa=[] if npt else None,
        volumes=[] if npt else None,
        conserved_energies=[] if has_conserved else None,
        trajectory=traj_path,
        logfile=Path(logfile) if logfile else None,
        restarted_from=start_step,
    )

    def add_point(step: int, frame: Atoms, econs: float | None, write_log: bool) -> None:
        epot = float(frame.get_potential_energy())
        if not math.isfinite(epot):
            raise RuntimeError(f"{label}: potential energy became {epot} at MD step {step}")
        ekin = float(frame.get_kinetic_energy())
        temp = float(frame.get_temperature())
        t_ps = step * timestep_fs / 1000.0
        pressure_gpa = volume = None
        result.steps_logged.append(step)
        result.times_ps.append(t_ps)
        result.potential_energies.append(epot)
        result.kinetic_energies.append(ekin)
        result.temperatures.append(temp)
        if npt:
            stress = frame.get_stress(include_ideal_gas=True)
            pressure_gpa = -float(np.mean(stress[:3])) / units.GPa
            volume = float(frame.get_volume())
            result.pressures_gpa.append(pressure_gpa)
            result.volumes.append(volume)
        if has_conserved:
            result.conserved_energies.append(econs if econs is not None else math.nan)
        if write_log:
            log.row(step, t_ps, epot, ekin, temp, pressure_gpa, volume, econs)

    for frame in frames[:-1]:
        step = int(frame.info.get("md_step", 0))
        add_point(step, frame, frame.info.get("conserved_energy_eV"), write_log=False)

    header = [
        f"eqv2calc md: {label}, {len(work)} atoms, ensemble {ensemble.upper()}, "
        f"integrator {type(dyn).__name__}, time step {timestep_fs} fs, {steps} steps",
        f"temperature {temperature_K} K"
        + (
            f", Langevin friction {friction_per_fs} 1/fs"
            if ensemble == "nvt" and thermostat == "langevin"
            else ""
        )
        + (f", pressure {pressure / units.GPa:.4f} GPa" if npt else "")
        + f", seed {seed}",
        f"calculator: {calculator_label(calculator)}",
        f"Note: {DIRECT_FORCES_NOTE}",
    ]
    if frames:
        header = [
            f"restarted from {traj_path} at step {start_step} "
            "(thermostat/barostat variables start from zero)"
        ]
    log.header(header)

    def observe() -> None:
        step = int(dyn.nsteps)
        econs = float(dyn.get_conserved_energy()) if has_conserved else None
        add_point(step, work, econs, write_log=True)
        if traj_path is not None:
            from ase.io.trajectory import Trajectory

            work.info["md_step"] = step
            work.info["time_fs"] = step * timestep_fs
            if econs is not None:
                work.info["conserved_energy_eV"] = econs
            with Trajectory(str(traj_path), "a") as traj:
                traj.write(work)

    dyn.attach(observe, interval=log_interval)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start_step, desc=f"MD {label}", unit="step")
        dyn.attach(lambda: bar.update(1) if dyn.nsteps > start_step else None, interval=1)
    try:
        if frames:
            # ASE does not call observers at the start of a continued run; the restart point
            # (already in the log and the trajectory) is added to the series here.
            econs = float(dyn.get_conserved_energy()) if has_conserved else None
            add_point(start_step, work, econs, write_log=False)
        remaining = max(steps - start_step, 0)
        if remaining:
            dyn.run(steps=remaining)
    except KeyboardInterrupt:
        log.write(
            f"# interrupted at step {int(dyn.nsteps)}; the trajectory holds the steps logged "
            "so far (continue with restart=True / --restart)\n"
        )
        raise
    finally:
        if bar is not None:
            bar.close()
        if hasattr(dyn, "close"):
            dyn.close()

    result.steps = int(dyn.nsteps)
    if has_conserved:
        series, what = result.conserved_energies, "conserved energy"
    elif ensemble == "nve":
        series, what = result.total_energies, "total energy"
    else:
        series, what = None, None
    if series is not None:
        finite = [(t, e) for t, e in zip(result.times_ps, series) if math.isfinite(e)]
        result.drift_ev_per_ps = linear_drift([t for t, _ in finite], [e for _, e in finite])
        result.drift_quantity = what if result.drift_ev_per_ps is not None else None

    from ase.calculators.singlepoint import SinglePointCalculator

    final = work.copy()
    res = {"energy": work.get_potential_energy(), "forces": work.get_forces(apply_constraint=False)}
    if npt:
        res["stress"] = work.get_stress()
    final.calc = SinglePointCalculator(final, **res)
    final.info.pop("md_step", None)
    work.calc = None
    result.atoms = final
    summary = [f"summary: {result.summary_line()}"]
    if result.drift_ev_per_ps is None and ensemble != "nve":
        summary.append(f"summary: {type(dyn).__name__} has no conserved energy; no drift reported")
    log.write("".join(f"# {s}\n" for s in summary))
    return result
