"""Structure relaxation of one structure with an ASE optimizer, and what relaxations return.

:func:`relax` is the plain, one-at-a-time ASE relaxation: the calculator is attached to a
copy of the structure and an ``ase.optimize`` optimizer runs until the largest force on a
free atom (and, with ``relax_cell``, the cell gradient of ``FrechetCellFilter``) is below
``fmax``. :func:`eqv2calc.drivers.relax_batch` relaxes many structures together and gives the
same results; it falls back to :func:`relax` for optimizers that need several evaluations per
step (``BFGSLineSearch``).

Units: energies in eV, forces and ``fmax`` in eV/Å, stress in eV/Å³, heights in Å.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from eqv2calc.checks import check_stress_support, validate_structure
from eqv2calc.results import RelaxResult, max_free_force

__all__ = [
    "OPTIMIZERS",
    "RelaxResult",
    "RelaxSettings",
    "RestartWarning",
    "read_restart",
    "relax_settings",
    "restart_state",
    "fix_below",
    "get_optimizer",
    "move_aside",
    "relax",
]


@dataclass(frozen=True)
class _OptimizerInfo:
    name: str
    import_path: str
    batched: bool  # one energy/force evaluation per step, so relax_batch can drive it


#: Optimizers by name. ``batched`` ones take exactly one evaluation per step and can be run
#: together by ``relax_batch``; the others (line searches) run one structure at a time.
OPTIMIZERS: dict[str, _OptimizerInfo] = {
    info.name.lower(): info
    for info in (
        _OptimizerInfo("FIRE", "ase.optimize:FIRE", True),
        _OptimizerInfo("BFGS", "ase.optimize:BFGS", True),
        _OptimizerInfo("LBFGS", "ase.optimize:LBFGS", True),
        _OptimizerInfo("BFGSLineSearch", "ase.optimize:BFGSLineSearch", False),
    )
}


def get_optimizer(name: str) -> tuple[type, bool]:
    """Return ``(optimizer_class, batched)`` for a name in :data:`OPTIMIZERS` (any case)."""
    import importlib

    info = OPTIMIZERS.get(str(name).lower())
    if info is None:
        known = ", ".join(i.name for i in OPTIMIZERS.values())
        raise ValueError(f"unknown optimizer {name!r}; choose one of {known}")
    module, attr = info.import_path.split(":")
    return getattr(importlib.import_module(module), attr), info.batched


@dataclass(frozen=True)
class RelaxSettings:
    """How to relax (everything except where the files go).

    Attributes:
        optimizer: ``FIRE``, ``BFGS``, ``LBFGS`` or ``BFGSLineSearch`` (any case).
        fmax: Convergence threshold on the largest force on a free atom, eV/Å (with
            ``relax_cell``, the cell gradient must be below it too).
        steps: Maximum optimizer steps per structure (steps read back on restart count).
        relax_cell: Relax the cell too (``FrechetCellFilter``); needs stress (eV/Å³) and a
            structure periodic in 3D.
        optimizer_kwargs: Extra keyword arguments for the optimizer (e.g. ``maxstep``, Å).
    """

    optimizer: str = "FIRE"
    fmax: float = 0.05
    steps: int = 500
    relax_cell: bool = False
    optimizer_kwargs: dict[str, Any] | None = None

    @property
    def optimizer_name(self) -> str:
        """The optimizer's canonical name (``"LBFGS"``); ValueError if unknown."""
        get_optimizer(self.optimizer)
        return OPTIMIZERS[self.optimizer.lower()].name


def relax_settings(settings: RelaxSettings | None = None, **options: Any) -> RelaxSettings:
    """``settings`` (default :class:`RelaxSettings`) with ``options`` (field names) applied;
    TypeError names an unknown option."""
    unknown = sorted(set(options) - {f.name for f in fields(RelaxSettings)})
    if unknown:
        raise TypeError(f"unknown relaxation option(s) {', '.join(unknown)}")
    return replace(settings or RelaxSettings(), **options)


def fix_below(atoms: Atoms, z: float) -> list[int]:
    """Fix (``FixAtoms``) every atom whose z coordinate is below ``z`` Å, in place.

    Atoms already fixed by a ``FixAtoms`` constraint stay fixed; other constraints are kept.

    Returns:
        Indices of the atoms fixed by this call (sorted).
    """
    below = np.flatnonzero(atoms.positions[:, 2] < z)
    already: set[int] = set()
    others = []
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            already.update(int(i) for i in c.get_indices())
        else:
            others.append(c)
    new = sorted(set(int(i) for i in below) - already)
    indices = sorted(already | set(new))
    if indices:
        atoms.set_constraint([FixAtoms(indices=indices), *others])
    return new


def final_copy(atoms: Atoms, results: dict[str, Any]) -> Atoms:
    """Copy of ``atoms`` (constraints kept) with ``results`` attached as a single point."""
    out = atoms.copy()
    keep = {k: v for k, v in results.items() if k in ("energy", "free_energy", "forces", "stress")}
    out.calc = SinglePointCalculator(out, **keep)
    return out


class RestartWarning(UserWarning):
    """A restart trajectory was damaged: what was kept, and where the file was moved."""


def move_aside(path: Path) -> Path:
    """Rename a damaged file to ``<name>.corrupt-<UTC stamp>[-N]`` next to it (never deleted).

    Returns:
        The new path.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 2
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    os.replace(path, target)
    return target


def read_restart(path: Path) -> list[Atoms]:
    """Readable frames of an earlier trajectory, for a restart.

    A damaged file is never deleted. If the trajectory cannot be read to its end (a last
    frame cut short by a full disk or a crash, or a file that is not a trajectory at all), it
    is moved aside to ``<name>.corrupt-<UTC time>``, the frames that could be read are written
    back to ``path`` (so the run appends to a sound file), and a :class:`RestartWarning` says
    so. A missing or empty file gives an empty list.

    Args:
        path: The ``.traj`` file.

    Returns:
        The readable frames, in order (empty: start from the input structure).
    """
    from ase.io.trajectory import Trajectory

    if not path.is_file() or path.stat().st_size == 0:
        return []
    frames: list[Atoms] = []
    problem = None
    try:
        with Trajectory(str(path), "r") as traj:
            for i in range(len(traj)):
                try:
                    frames.append(traj[i])
                except Exception as err:
                    problem = f"frame {i} of {len(traj)} is unreadable ({type(err).__name__})"
                    break
    except Exception as err:
        problem = f"not a readable trajectory ({type(err).__name__}: {err})"
    if problem is None:
        return frames
    aside = move_aside(path)
    if frames:
        from eqv2calc.io import atomic_path

        with atomic_path(path) as tmp:
            with Trajectory(str(tmp), "w") as out:
                for frame in frames:
                    out.write(frame)
        kept = f"restarting from its last readable frame ({len(frames)} frames kept)"
    else:
        kept = "starting from the input structure"
    warnings.warn(
        f"{path}: {problem}; {kept}; the damaged file was moved to {aside.name}",
        RestartWarning,
        stacklevel=2,
    )
    return frames


def frame_energies(frames: list[Atoms]) -> list[float]:
    """Energies (eV) stored with trajectory frames; frames without results are skipped."""
    energies = []
    for frame in frames:
        try:
            energies.append(float(frame.get_potential_energy()))
        except Exception:
            continue
    return energies


def apply_restart_frame(work: Atoms, frame: Atoms) -> None:
    """Move ``work`` to the geometry (positions and cell) of a trajectory frame."""
    from eqv2calc.checks import StructureError

    if len(frame) != len(work) or not np.array_equal(frame.numbers, work.numbers):
        raise StructureError(
            "cannot restart: the trajectory holds a different structure "
            f"({frame.get_chemical_formula()} vs {work.get_chemical_formula()})"
        )
    work.set_cell(frame.cell, scale_atoms=False)
    work.set_positions(frame.positions, apply_constraint=False)


def restart_state(
    work: Atoms, traj_path: Path | None, restart: bool
) -> tuple[list[Atoms], int, list[float]]:
    """Prepare ``work`` and its trajectory file for a (re)start.

    With ``restart`` and a readable trajectory, ``work`` moves to the last frame's geometry;
    without, an old trajectory file is removed (a fresh run writes a new one).

    Returns:
        ``(frames, steps_done, energies)``: the frames read back, the optimizer steps they
        represent, and the energies (eV) of all but the last frame (which is re-evaluated).
    """
    frames = read_restart(traj_path) if (restart and traj_path is not None) else []
    done, energies = 0, []
    if frames:
        apply_restart_frame(work, frames[-1])
        done = len(frames) - 1
        energies = frame_energies(frames)[:done]
    if traj_path is not None:
        traj_path.parent.mkdir(parents=True, exist_ok=True)
        if not frames:
            traj_path.unlink(missing_ok=True)
    return frames, done, energies


def prepare_logfile(logfile: str | os.PathLike | None, restart: bool) -> str | None:
    """Path for an ASE optimizer log; an old log is removed unless restarting."""
    if logfile is None:
        return None
    path = Path(logfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not restart:
        path.unlink(missing_ok=True)
    return str(path)


def relax(
    atoms: Atoms,
    calculator: Calculator,
    settings: RelaxSettings | None = None,
    *,
    trajectory: str | os.PathLike | None = None,
    logfile: str | os.PathLike | None = None,
    restart: bool = False,
    label: str | None = None,
    progress: bool = False,
    validate: bool = True,
    **options: Any,
) -> RelaxResult:
    """Relax one structure with an ASE optimizer, the ordinary one-at-a-time way.

    Args:
        atoms: Structure to relax (not modified; constraints such as ``FixAtoms`` honoured).
        calculator: Any ASE calculator.
        settings: Optimizer, ``fmax`` (eV/Å), steps, cell relaxation (:class:`RelaxSettings`).
        trajectory: ASE ``.traj`` file to write every step to.
        logfile: Optimizer log file (ASE format).
        restart: Continue from the last readable frame of ``trajectory`` if it exists
            (positions, cell; BFGS/LBFGS history rebuilt from the frames when the cell is
            fixed). A damaged trajectory is moved aside, never deleted.
        label: Name for messages and the result (default: chemical formula).
        progress: Show a tqdm progress bar over steps.
        validate: Check the structure first (see :func:`validate_structure`).
        **options: Fields of :class:`RelaxSettings` (``optimizer="BFGS"``, ``fmax=0.01``...),
            applied on top of ``settings``.

    Returns:
        The :class:`RelaxResult`. Bad input raises
        :class:`~eqv2calc.checks.StructureError`; calculator errors propagate.
    """
    s = relax_settings(settings, **options)
    label = label or atoms.get_chemical_formula()
    opt_class, _ = get_optimizer(s.optimizer)
    if s.relax_cell:
        check_stress_support(calculator)
    if validate:
        validate_structure(atoms, relax_cell=s.relax_cell)
    t0 = time.perf_counter()
    work = atoms.copy()
    traj_path = Path(trajectory) if trajectory is not None else None
    frames, done, energies = restart_state(work, traj_path, restart)
    work.calc = calculator
    target: Any = work
    if s.relax_cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(work)
    opt = opt_class(
        target,
        logfile=prepare_logfile(logfile, restart and bool(frames)),
        trajectory=str(traj_path) if traj_path is not None else None,
        append_trajectory=bool(frames),
        **(s.optimizer_kwargs or {}),
    )
    if frames and not s.relax_cell and hasattr(opt, "_replay_trajectory") and len(frames) > 1:
        opt.replay_trajectory(str(traj_path))
    opt.nsteps = done
    opt.attach(lambda: energies.append(float(work.get_potential_energy())), interval=1)
    converged = _run_optimizer(opt, s, done, label if progress else None, energies, work)
    return _one_result(
        work,
        calculator=calculator,
        s=s,
        label=label,
        energies=energies,
        opt=opt,
        converged=converged,
        traj_path=traj_path,
        done=done,
        t0=t0,
    )


def _run_optimizer(
    opt: Any, s: RelaxSettings, done: int, bar_label: str | None, energies: list, work: Atoms
) -> bool:
    """Run ``opt`` to ``s.fmax`` for the steps left; a progress bar when ``bar_label``."""
    bar = None
    if bar_label is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps, initial=done, desc=bar_label, unit="step", leave=False)
        opt.attach(lambda: bar.update(1) if opt.nsteps > done else None, interval=1)
    try:
        if done:
            # ASE does not call observers for the starting point of a restarted run.
            energies.append(float(work.get_potential_energy()))
        return bool(opt.run(fmax=s.fmax, steps=max(s.steps - done, 0)))
    finally:
        if bar is not None:
            bar.close()


def _one_result(
    work: Atoms,
    *,
    calculator: Calculator,
    s: RelaxSettings,
    label: str,
    energies: list[float],
    opt: Any,
    converged: bool,
    traj_path: Path | None,
    done: int,
    t0: float,
) -> RelaxResult:
    results: dict[str, Any] = {
        "energy": work.get_potential_energy(),
        "forces": work.get_forces(apply_constraint=False),
    }
    if "free_energy" in getattr(calculator, "implemented_properties", ()):
        results["free_energy"] = work.get_potential_energy(force_consistent=True)
    max_stress = None
    if s.relax_cell:
        results["stress"] = work.get_stress(voigt=True)
        max_stress = float(np.abs(results["stress"]).max())
    final = final_copy(work, results)
    work.calc = None
    return RelaxResult(
        label=label,
        atoms=final,
        initial_energy=energies[0],
        final_energy=float(results["energy"]),
        max_force=max_free_force(final),
        steps=int(opt.nsteps),
        converged=converged,
        energies=energies,
        optimizer=s.optimizer_name,
        fmax=s.fmax,
        relax_cell=s.relax_cell,
        max_stress=max_stress,
        trajectory=traj_path,
        restarted_from=done,
        wall_time=time.perf_counter() - t0,
    )


ResultCallback = Callable[[int, RelaxResult], None]
