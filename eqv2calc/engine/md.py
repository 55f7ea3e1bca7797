"""Batched molecular dynamics of independent systems on the device (NVE, NVT Langevin).

All systems advance together, one model evaluation per step for the whole batch, with ASE's
integrators written as tensor operations:

* ``nve``: velocity Verlet (``ase.md.verlet.VelocityVerlet``);
* ``nvt``: Langevin (``ase.md.langevin.Langevin``, the Vanden-Eijnden–Ciccotti scheme with its
  ``c1..c5`` coefficients, ``fix_com`` as in ASE), with a per-system temperature and friction;
  the noise comes from a ``torch.Generator`` on the device (seeded), not from numpy, so runs
  are reproducible but do not repeat ASE's random numbers.

Atoms fixed by ``FixAtoms`` keep their positions and have zero velocity. Units: time step fs,
temperature K, friction 1/fs, energies eV (ASE's internal time unit is used inside).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from eqv2calc.checks import check_structure
from eqv2calc.engine.evaluate import make_evaluator
from eqv2calc.engine.files import default_labels, output_paths, start_fresh
from eqv2calc.engine.optimizers import segment_sum
from eqv2calc.engine.state import BatchedStructures

__all__ = ["MDSettings", "BatchMDResult", "run_md_engine"]


@dataclass
class MDSettings:
    """Settings of a batched MD run.

    Attributes:
        ensemble: ``"nve"`` or ``"nvt"`` (Langevin).
        timestep_fs: time step, fs.
        steps: number of steps.
        temperature_K: Langevin target temperature, K (one value or one per system).
        friction_per_fs: Langevin friction, 1/fs (one value or one per system).
        fix_com: remove the centre-of-mass part of the Langevin noise (ASE's default).
        seed: seed of the device random generator (Langevin noise).
        log_interval: log line and trajectory frame every this many steps.
        skin: neighbour-list skin, Å.
    """

    ensemble: str = "nvt"
    timestep_fs: float = 1.0
    steps: int = 100
    temperature_K: float | Sequence[float] = 300.0
    friction_per_fs: float | Sequence[float] = 0.01
    fix_com: bool = True
    seed: int = 0
    log_interval: int = 10
    skin: float = 1.0


@dataclass
class BatchMDResult:
    """Outcome for one system.

    Attributes:
        label: name.
        atoms: final structure with momenta and the final energy/forces attached.
        potential_energies: eV at every logged step (index 0: start).
        kinetic_energies: eV at every logged step.
        temperatures: K at every logged step.
        steps: steps done.
        trajectory: trajectory written, if any.
        times_ps: time of every logged step, ps.
        drift_ev_per_ps: NVE only: slope of a straight-line fit of the total energy against
            time, eV/ps (None for NVT or with fewer than 2 logged steps).
    """

    label: str
    atoms: Atoms
    potential_energies: list[float] = field(default_factory=list)
    kinetic_energies: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    steps: int = 0
    trajectory: Path | None = None
    times_ps: list[float] = field(default_factory=list)
    drift_ev_per_ps: float | None = None

    @property
    def drift_mev_per_atom_per_ps(self) -> float | None:
        """The drift per atom, meV/atom/ps (None without a drift)."""
        if self.drift_ev_per_ps is None:
            return None
        return 1000.0 * self.drift_ev_per_ps / len(self.atoms)


def _per_system(value, nb: int, device, name: str) -> torch.Tensor:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (nb,))
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return torch.as_tensor(arr.copy(), device=device)


def run_md_engine(
    atoms_list: Sequence[Atoms],
    calculator,
    settings: MDSettings | None = None,
    *,
    labels: Sequence[str] | None = None,
    trajectories: Sequence[str | os.PathLike | None] | None = None,
    logfiles: Sequence[str | os.PathLike | None] | None = None,
    evaluator=None,
    frame_info: dict | None = None,
) -> list[BatchMDResult]:
    """Run MD of several independent systems together on the calculator's device.

    Args:
        atoms_list: the systems, with their starting momenta (``atoms.get_momenta()``;
            draw them beforehand, e.g. with ``MaxwellBoltzmannDistribution``). Not modified.
        calculator: an ``EquiformerV2Calculator`` (tensor path) or any ASE calculator.
        settings: :class:`MDSettings`.
        labels: names (default ``<formula>_<index>``).
        trajectories: per-system ASE trajectory files (frames every ``log_interval``).
        logfiles: per-system logs: time (ps), Etot, Epot, Ekin (eV), T (K).
        evaluator: override the evaluator (see :mod:`eqv2calc.engine.evaluate`).
        frame_info: extra ``info`` for every trajectory frame (e.g. the run's settings, for
            a restart to compare); every frame also gets ``md_step`` and ``time_fs`` (fs).

    Returns:
        One :class:`BatchMDResult` per system, in input order.

    Raises:
        StructureError: a system cannot be simulated (no atoms, non-finite positions,
            overlapping atoms, an element the model does not cover...), named by its label,
            before any output file is written.
    """
    s = settings or MDSettings()
    atoms_list = list(atoms_list)
    nb = len(atoms_list)
    if s.ensemble not in ("nve", "nvt"):
        raise ValueError(f"the batched MD engine runs 'nve' and 'nvt', not {s.ensemble!r}")
    if not s.timestep_fs > 0:
        raise ValueError(f"timestep_fs must be > 0, got {s.timestep_fs}")
    ev = evaluator or make_evaluator(calculator, skin=s.skin)
    dev = ev.device
    labels = default_labels(atoms_list, labels or None)
    zmax = getattr(ev, "max_atomic_number", None)
    for atoms, label in zip(atoms_list, labels):  # before any output file is touched
        check_structure(atoms, max_atomic_number=zmax, label=label)
    st = BatchedStructures.from_atoms(atoms_list, device=dev)
    trajs = output_paths(trajectories, nb)
    logs = output_paths(logfiles, nb)
    start_fresh(trajs + logs)

    dt = s.timestep_fs * units.fs
    m = st.masses.unsqueeze(-1)  # [N, 1] amu
    free = (~st.fixed).unsqueeze(-1).to(torch.float64)
    counts = torch.bincount(st.batch, minlength=nb)
    n_free = segment_sum((~st.fixed).to(torch.float64), st.batch, nb)
    v = (
        torch.as_tensor(
            np.concatenate([a.get_velocities() for a in atoms_list]),
            dtype=torch.float64,
            device=dev,
        )
        * free
    )
    x = st.positions.clone()

    def forces_at(pos):
        out = ev(pos, st.cells, st.numbers, st.batch, st.pbc, nb, stress=False)
        return out["energy"], out["forces"] * free

    if s.ensemble == "nvt":
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(s.seed))
        lang = _Langevin(
            coeffs=_langevin_coefficients(s, st, nb, dev, dt, m, counts),
            gen=gen,
            fix_com=bool(s.fix_com),
            batch=st.batch,
            nb=nb,
            counts=counts,
            m=m,
            free=free,
            dt=dt,
        )

    results = [
        BatchMDResult(label=labels[i], atoms=atoms_list[i], trajectory=trajs[i]) for i in range(nb)
    ]
    epot, f = forces_at(x)

    def record(step: int, epot, x, v, f) -> None:
        ekin = segment_sum(0.5 * m * v * v, st.batch, nb)
        dof = (3 * n_free).clamp_min(1.0)
        temp = 2 * ekin / (dof * units.kB)
        host = torch.cat([epot, ekin, temp]).cpu().numpy()
        for i, r in enumerate(results):
            ep, ek, tk = float(host[i]), float(host[nb + i]), float(host[2 * nb + i])
            r.potential_energies.append(ep)
            r.kinetic_energies.append(ek)
            r.temperatures.append(tk)
            r.steps = step
            r.times_ps.append(step * s.timestep_fs / 1000.0)
            if logs[i] is not None:
                if step == 0:
                    _log_header(logs[i], r.label, len(atoms_list[i]), s, i)
                _append_log(logs[i], step, step * s.timestep_fs / 1000.0, ep, ek, tk)
        if any(t is not None for t in trajs):
            info = {**(frame_info or {}), "md_step": step, "time_fs": step * s.timestep_fs}
            _write_frames(trajs, atoms_list, st, x, v, epot, f, info)

    record(0, epot, x, v, f)
    for step in range(1, s.steps + 1):
        if s.ensemble == "nve":
            v = v + 0.5 * dt * f / m
            x = x + dt * v * free
            epot, f = forces_at(x)
            v = (v + 0.5 * dt * f / m) * free
        else:
            x, v, epot, f = _langevin_step(x, v, f, lang=lang, forces_at=forces_at)
        if step % s.log_interval == 0 or step == s.steps:
            record(step, epot, x, v, f)
    final = _write_frames([None] * nb, atoms_list, st, x, v, epot, f)
    for r, a, log in zip(results, final, logs):
        r.atoms = a
        if s.ensemble == "nve":
            r.drift_ev_per_ps = _linear_drift(
                r.times_ps, [ep + ek for ep, ek in zip(r.potential_energies, r.kinetic_energies)]
            )
        if log is not None:
            _log_summary(log, r, s)
    return results


#: Column header of the MD log, the same columns as ``eqv2calc.drivers.md``'s single-system log.
_LOG_COLUMNS = (
    f"#{'step':>8} {'time[ps]':>10} {'Epot[eV]':>15} {'Ekin[eV]':>12} {'Etot[eV]':>15} {'T[K]':>9}"
)


def _log_header(path: Path, label: str, n_atoms: int, s: MDSettings, index: int) -> None:
    """The commented header of one system's MD log: settings (fs, K, 1/fs), seed, columns."""
    what = "NVE, integrator velocity Verlet"
    if s.ensemble == "nvt":
        temp = float(np.broadcast_to(np.asarray(s.temperature_K, float), (index + 1,))[index])
        fric = float(np.broadcast_to(np.asarray(s.friction_per_fs, float), (index + 1,))[index])
        what = f"NVT, integrator Langevin, temperature {temp} K, friction {fric} 1/fs"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(
            f"# eqv2calc md (batched engine): {label}, {n_atoms} atoms, ensemble {what}, "
            f"time step {s.timestep_fs} fs, {s.steps} steps\n# seed {s.seed}\n{_LOG_COLUMNS}\n"
        )


def _append_log(path: Path, step: int, t_ps: float, epot: float, ekin: float, temp: float) -> None:
    """One line of an MD log: step, time (ps), Epot, Ekin, Etot (eV), T (K)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(
            f"{step:9d} {t_ps:10.4f} {epot:15.6f} {ekin:12.6f} {epot + ekin:15.6f} {temp:9.2f}\n"
        )


def _linear_drift(times_ps: list[float], energies: list[float]) -> float | None:
    """Slope (eV/ps) of a least-squares straight line through energy against time."""
    if len(times_ps) < 2 or np.ptp(times_ps) == 0 or not np.isfinite(energies).all():
        return None
    return float(np.polyfit(np.asarray(times_ps, float), np.asarray(energies, float), 1)[0])


def _log_summary(path: Path, r: BatchMDResult, s: MDSettings) -> None:
    """The ``# summary:`` line at the end of a log: steps, mean T (K), NVE energy drift."""
    name = "NVE (velocity Verlet)" if s.ensemble == "nve" else "NVT (Langevin)"
    line = (
        f"# summary: {r.label}: {name} {r.steps} steps x {s.timestep_fs} fs, "
        f"mean T {float(np.mean(r.temperatures)):.1f} K"
    )
    if r.drift_ev_per_ps is not None:
        line += (
            f", total energy drift {r.drift_ev_per_ps:+.4g} eV/ps "
            f"({r.drift_mev_per_atom_per_ps:+.4g} meV/atom/ps)"
        )
    elif s.ensemble != "nve":
        line += "; Langevin has no conserved energy, no drift reported"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@dataclass
class _Langevin:
    """What one Langevin step needs besides positions, velocities and forces (ASE units)."""

    coeffs: tuple[torch.Tensor, ...]  # c1..c5 and the centre-of-mass noise factor, each [N, 1]
    gen: torch.Generator
    fix_com: bool
    batch: torch.Tensor  # [N]
    nb: int
    counts: torch.Tensor  # [B] atoms per system
    m: torch.Tensor  # [N, 1] amu
    free: torch.Tensor  # [N, 1] 1 for free atoms, 0 for fixed ones
    dt: float  # ASE time units


def _langevin_step(x, v, f, *, lang: _Langevin, forces_at):
    """One step of ASE's Langevin integrator for every system; returns ``x, v, epot, f``."""
    c1, c2, c3, c4, c5, com_factor = lang.coeffs
    m, free, dt = lang.m, lang.free, lang.dt
    xi = torch.randn(x.shape, generator=lang.gen, device=x.device, dtype=x.dtype)
    eta = torch.randn(x.shape, generator=lang.gen, device=x.device, dtype=x.dtype)
    rnd_pos = c5 * eta
    rnd_vel = c3 * xi - c4 * eta
    if lang.fix_com:
        rnd_pos = rnd_pos - _mean_rows(rnd_pos, lang.batch, lang.nb, lang.counts)
        mom = _sum_rows(rnd_vel * m, lang.batch, lang.nb)
        rnd_vel = rnd_vel - mom[lang.batch] / (m * lang.counts[lang.batch].unsqueeze(-1))
        rnd_pos = rnd_pos * com_factor
        rnd_vel = rnd_vel * com_factor
    v = v + c1 * f / m - c2 * v + rnd_vel
    x_new = x + (dt * v + rnd_pos) * free
    v = (x_new - x - rnd_pos) / dt
    epot, f = forces_at(x_new)
    v = (v + c1 * f / m - c2 * v + rnd_vel) * free
    return x_new, v, epot, f


def _langevin_coefficients(
    s: MDSettings,
    st: BatchedStructures,
    nb: int,
    dev: torch.device | str,
    dt: float,
    m: torch.Tensor,
    counts: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Per-atom ``[N, 1]`` coefficients c1..c5 of ASE's Langevin integrator (ASE units; ``dt``
    in ASE time, ``m`` in amu) and the centre-of-mass noise factor ``sqrt(n / (n - 1))``."""
    kt = _per_system(s.temperature_K, nb, dev, "temperature_K") * units.kB
    fr = _per_system(s.friction_per_fs, nb, dev, "friction_per_fs") / units.fs
    kt_a, fr_a = kt[st.batch].unsqueeze(-1), fr[st.batch].unsqueeze(-1)
    sigma = torch.sqrt(2 * kt_a * fr_a / m)
    c1 = dt / 2.0 - dt * dt * fr_a / 8.0
    c2 = dt * fr_a / 2 - dt * dt * fr_a * fr_a / 8.0
    c3 = np.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr_a * sigma / 8.0
    c5 = dt**1.5 * sigma / (2 * np.sqrt(3))
    c4 = fr_a / 2.0 * c5
    com_factor = torch.sqrt(counts / (counts - 1.0).clamp_min(1.0))[st.batch].unsqueeze(-1)
    return c1, c2, c3, c4, c5, com_factor


def _sum_rows(values: torch.Tensor, batch: torch.Tensor, nb: int) -> torch.Tensor:
    return torch.zeros(nb, 3, dtype=values.dtype, device=values.device).index_add_(0, batch, values)


def _mean_rows(values, batch, nb, counts) -> torch.Tensor:
    return (_sum_rows(values, batch, nb) / counts.unsqueeze(-1))[batch]


def _write_frames(trajs, atoms_list, st, x, v, epot, f, info=None) -> list[Atoms]:
    from ase.io.trajectory import Trajectory

    pos = x.cpu().numpy()
    vel = v.cpu().numpy()
    forces = f.cpu().numpy()
    energy = epot.cpu().numpy()
    counts = torch.bincount(st.batch, minlength=len(atoms_list)).tolist()
    out, start = [], 0
    for i, (a0, n) in enumerate(zip(atoms_list, counts)):
        a = a0.copy()
        sl = slice(start, start + n)
        a.set_positions(pos[sl], apply_constraint=False)
        a.set_velocities(vel[sl])
        a.calc = SinglePointCalculator(a, energy=float(energy[i]), forces=forces[sl])
        if trajs[i] is not None:
            framed = a.copy()  # the info goes into the file, not into the returned structure
            framed.calc = a.calc
            framed.info.update(info or {})
            with Trajectory(str(trajs[i]), "a") as t:
                t.write(framed)
        out.append(a)
        start += n
    return out
