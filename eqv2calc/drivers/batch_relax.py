"""Relaxing many structures together: one batched model call per optimizer step.

Every structure keeps its own, real ASE optimizer (``FIRE``, ``BFGS`` or ``LBFGS`` from
``ase.optimize``), so step sizes, histories and convergence are exactly ASE's. What changes is
where the energies and forces come from: each structure's ``Atoms`` carries a small
:class:`_ServedCalculator` that hands out results computed beforehand by one
:func:`~eqv2calc.batching.predict_many` call for all structures in the batch. One
iteration of :func:`relax_batch` is

1. ``opt.step()`` for every active structure (each reads its served forces and moves),
2. one batched prediction for all active structures at their new geometries,
3. logging, trajectory frames and the convergence check per structure.

Converged structures leave the batch at once and waiting structures take their place, as
long as the batch stays within ``max_atoms_per_batch`` atoms. A structure that makes the model
fail (e.g. an element it does not know) is reported and dropped; the rest go on.

Optimizers that need several evaluations per step (``BFGSLineSearch``) cannot be batched
this way; ``relax_batch`` runs them one structure at a time with :func:`relax`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from eqv2calc.batching import (
    DEFAULT_MAX_ATOMS_PER_BATCH,
    error_text,
    predict_isolating,
    predict_many,
)
from eqv2calc.checks import check_stress_support, validate_structure
from eqv2calc.drivers.relax import (
    RelaxResult,
    RelaxSettings,
    final_copy,
    get_optimizer,
    max_free_force,
    prepare_logfile,
    relax,
    relax_settings,
    restart_state,
)

__all__ = ["relax_auto", "relax_batch"]


class _ServedCalculator(Calculator):
    """Serves results computed elsewhere for one geometry.

    :meth:`serve` stores the results of a batched prediction for the current geometry of
    the structure; ASE's cache then answers every request for that geometry without calling
    :meth:`calculate`. A request for any other geometry (which the batched optimizers never
    make) is computed with the wrapped calculator and counted in ``fallback_calls``, so
    results are always correct.
    """

    def __init__(self, calculator: Calculator, properties: Sequence[str], want_stress: bool):
        super().__init__()
        self.implemented_properties = list(properties)
        self._calculator = calculator
        self._want_stress = want_stress
        self.fallback_calls = 0

    def serve(self, atoms: Atoms, results: dict[str, Any]) -> None:
        self.atoms = atoms.copy()
        self.results = {
            k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in results.items()
        }

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.fallback_calls += 1
        self.results = predict_many(self._calculator, [self.atoms], stress=self._want_stress)[0]


@dataclass
class _Run:
    """Book-keeping for one structure while it is in the batch."""

    index: int
    label: str
    atoms: Atoms
    opt: Any
    served: _ServedCalculator
    trajectory: Path | None
    started: float
    done_before: int = 0  # steps read back from a trajectory
    evaluated: bool = False
    energies: list[float] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)


def _append_frame(path: Path, atoms: Atoms) -> None:
    from ase.io.trajectory import Trajectory

    # Opened and closed for every frame (as ASE's optimizers do), so an interrupted run
    # leaves a readable trajectory to restart from.
    with Trajectory(str(path), "a") as traj:
        traj.write(atoms)


@dataclass(frozen=True)
class _Plan:
    """The structures of a batch relaxation and where each one's files go."""

    atoms: list[Atoms]
    labels: list[str]
    trajectories: list[Path | None]
    logfiles: list[Path | None]
    restart: bool


def _plan(
    atoms_list: list[Atoms],
    labels: Sequence[str] | None,
    trajectory_dir: str | os.PathLike | None,
    trajectories: Sequence[str | os.PathLike | None] | None,
    logfiles: Sequence[str | os.PathLike | None] | None,
    restart: bool,
) -> _Plan:
    n = len(atoms_list)
    labels = (
        list(labels)
        if labels is not None
        else [f"{a.get_chemical_formula()}_{i}" for i, a in enumerate(atoms_list)]
    )
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} structures")
    tdir = Path(trajectory_dir) if trajectory_dir is not None else None

    def paths(given, suffix: str) -> list[Path | None]:
        if given is not None:
            return [(Path(t) if t is not None else None) for t in given]
        return [(tdir / f"{lab}{suffix}") if tdir is not None else None for lab in labels]

    plan = _Plan(atoms_list, labels, paths(trajectories, ".traj"), paths(logfiles, ".log"), restart)
    if len(plan.trajectories) != n or len(plan.logfiles) != n:
        raise ValueError("trajectories/logfiles must have one entry per structure")
    return plan


def relax_batch(
    atoms_list: Sequence[Atoms],
    calculator: Calculator,
    settings: RelaxSettings | None = None,
    *,
    max_atoms_per_batch: int = DEFAULT_MAX_ATOMS_PER_BATCH,
    trajectory_dir: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    trajectories: Sequence[str | os.PathLike | None] | None = None,
    logfiles: Sequence[str | os.PathLike | None] | None = None,
    restart: bool = False,
    progress: bool = True,
    on_result: Callable[[int, RelaxResult], None] | None = None,
    **options: Any,
) -> list[RelaxResult]:
    """Relax many structures together, one batched model call per optimizer step.

    Each structure gets its own ASE optimizer, step size, history and convergence test, so
    each result is what a one-at-a-time ASE relaxation to the same ``fmax`` gives (up to
    the tiny differences between batched and single model evaluations).

    Args:
        atoms_list: Structures to relax (not modified; constraints honoured).
        calculator: Any ASE calculator; with ``predict_batch`` (``EquiformerV2Calculator``)
            all active structures are evaluated in one call per step.
        settings: Optimizer (``FIRE``, ``BFGS``, ``LBFGS`` batched; ``BFGSLineSearch`` needs
            several evaluations per step and runs one structure at a time), ``fmax`` (eV/Å),
            steps, ``relax_cell`` (needs stress, eV/Å³), optimizer keyword arguments: see
            :class:`~eqv2calc.drivers.relax.RelaxSettings`.
        max_atoms_per_batch: Memory budget: the active batch holds at most this many atoms
            (a single larger structure runs alone).
        trajectory_dir: Folder for ``<label>.traj`` trajectories and ``<label>.log`` logs.
        labels: Names of the structures (default ``<formula>_<index>``).
        trajectories: Per-structure trajectory files (overrides ``trajectory_dir``; None
            entries write none).
        logfiles: Per-structure optimizer logs (ASE format; overrides ``trajectory_dir``).
        restart: Continue each structure from the last readable frame of its trajectory.
        progress: Show tqdm progress bars (structures done; optimizer steps).
        on_result: Called as ``on_result(index, result)`` as soon as a structure finishes
            (converged, out of steps or failed) — e.g. to write it to disk.
        **options: Fields of ``RelaxSettings`` (``optimizer="BFGS"``, ``fmax=0.01``...),
            applied on top of ``settings``.

    Returns:
        One :class:`~eqv2calc.drivers.relax.RelaxResult` per input, in input order. Bad
        structures (see :func:`~eqv2calc.checks.validate_structure`) and model
        failures give results with ``error`` set instead of raising.

    Raises:
        ValueError: Unknown optimizer, or ``relax_cell`` with a calculator without stress.
    """
    s = relax_settings(settings, **options)
    _, batched = get_optimizer(s.optimizer)
    if s.relax_cell:
        check_stress_support(calculator)
    if max_atoms_per_batch < 1:
        raise ValueError(f"max_atoms_per_batch must be at least 1, got {max_atoms_per_batch}")
    plan = _plan(list(atoms_list), labels, trajectory_dir, trajectories, logfiles, restart)
    n = len(plan.atoms)
    results: list[RelaxResult | None] = [None] * n
    outer = inner = None
    if progress:
        from tqdm.auto import tqdm

        outer = tqdm(total=n, desc="structures", unit="struct")
        inner = tqdm(desc="optimizer steps", unit="step", leave=False)

    def finish(i: int, result: RelaxResult) -> None:
        results[i] = result
        if outer is not None:
            outer.update(1)
        if on_result is not None:
            on_result(i, result)

    try:
        if batched:
            _run_batched(plan, calculator, s, max_atoms_per_batch, finish, inner)
        else:
            _run_one_by_one(plan, calculator, s, finish)
    finally:
        if inner is not None:
            inner.close()
        if outer is not None:
            outer.close()
    return [r for r in results if r is not None]


def _failed(
    plan: _Plan, i: int, s: RelaxSettings, message: str, started: float | None = None
) -> RelaxResult:
    return RelaxResult(
        label=plan.labels[i],
        atoms=plan.atoms[i].copy(),
        optimizer=s.optimizer_name,
        fmax=s.fmax,
        relax_cell=s.relax_cell,
        error=message,
        trajectory=plan.trajectories[i],
        wall_time=(time.perf_counter() - started) if started else 0.0,
    )


def _run_one_by_one(
    plan: _Plan, calculator: Calculator, s: RelaxSettings, finish: Callable
) -> None:
    """Optimizers that need several evaluations per step: :func:`relax`, one at a time."""
    for i, atoms in enumerate(plan.atoms):
        try:
            res = relax(
                atoms,
                calculator,
                s,
                trajectory=plan.trajectories[i],
                logfile=plan.logfiles[i],
                restart=plan.restart,
                label=plan.labels[i],
            )
        except Exception as err:
            res = _failed(plan, i, s, error_text(err))
        finish(i, res)


def _start_run(i: int, plan: _Plan, calculator: Calculator, s: RelaxSettings) -> _Run:
    atoms, traj_path = plan.atoms[i], plan.trajectories[i]
    validate_structure(atoms, relax_cell=s.relax_cell)
    started = time.perf_counter()
    work = atoms.copy()
    frames, done, energies = restart_state(work, traj_path, plan.restart)
    props = ["energy", "free_energy", "forces"] + (["stress"] if s.relax_cell else [])
    served = _ServedCalculator(calculator, props, want_stress=s.relax_cell)
    work.calc = served
    target: Any = work
    if s.relax_cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(work)
    # Trajectory frames are written here (not by the optimizer) so that they hold the
    # structure and its batched results, once per evaluation.
    opt_class, _ = get_optimizer(s.optimizer)
    opt = opt_class(
        target,
        logfile=prepare_logfile(plan.logfiles[i], bool(frames)),
        trajectory=None,
        **(s.optimizer_kwargs or {}),
    )
    if frames and len(frames) > 1 and not s.relax_cell and hasattr(opt, "_replay_trajectory"):
        opt.replay_trajectory(str(traj_path))
    opt.nsteps = done
    opt.fmax = s.fmax  # what Optimizer.run(fmax=...) would set
    opt.max_steps = s.steps
    return _Run(
        index=i,
        label=plan.labels[i],
        atoms=work,
        opt=opt,
        served=served,
        trajectory=traj_path,
        started=started,
        done_before=done,
        energies=energies,
    )


def _run_batched(
    plan: _Plan,
    calculator: Calculator,
    s: RelaxSettings,
    max_atoms: int,
    finish: Callable[[int, RelaxResult], None],
    bar: Any,
) -> None:
    pending = deque(range(len(plan.atoms)))
    active: list[_Run] = []
    while pending or active:
        # Admit waiting structures while the batch stays within the atom budget.
        n_active = sum(len(r.atoms) for r in active)
        while pending and (not active or n_active + len(plan.atoms[pending[0]]) <= max_atoms):
            i = pending.popleft()
            try:
                run = _start_run(i, plan, calculator, s)
            except Exception as err:
                finish(i, _failed(plan, i, s, error_text(err)))
                continue
            active.append(run)
            n_active += len(run.atoms)
        if not active:
            continue

        # 1. every evaluated structure takes one optimizer step with its served forces
        stepped = 0
        for run in active:
            if run.evaluated:
                run.opt.step()
                run.opt.nsteps += 1
                stepped += 1
        if bar is not None and stepped:
            bar.update(stepped)
            bar.set_postfix(active=len(active), refresh=False)

        # 2. one batched prediction for the whole batch
        outputs = predict_isolating(calculator, [r.atoms for r in active], s.relax_cell)

        # 3. per structure: serve, log, record, check convergence
        still: list[_Run] = []
        for run, out in zip(active, outputs):
            if isinstance(out, str):
                finish(run.index, _failed(plan, run.index, s, out, run.started))
                continue
            converged = _record(run, out)
            if converged or run.opt.nsteps >= s.steps:
                finish(run.index, _result(run, s, converged))
            else:
                still.append(run)
        active = still


def _record(run: _Run, out: dict[str, Any]) -> bool:
    """Serve a batched result to one structure, log it, write its frame; True if converged."""
    run.served.serve(run.atoms, out)
    run.last = out
    opt = run.opt
    gradient = opt.optimizable.get_gradient()
    first = not run.evaluated
    run.evaluated = True
    run.energies.append(out["energy"])
    # Like ASE's Optimizer.irun: the starting point of a restarted run was logged
    # and written before, so only a fresh start logs step 0.
    if not first or opt.nsteps == 0:
        opt.log(gradient)
        if run.trajectory is not None:
            _append_frame(run.trajectory, run.atoms)
    return bool(opt.gradient_converged(gradient))


def _result(run: _Run, s: RelaxSettings, converged: bool) -> RelaxResult:
    final = final_copy(run.atoms, run.last)
    stress = run.last.get("stress")
    run.atoms.calc = None
    return RelaxResult(
        label=run.label,
        atoms=final,
        initial_energy=float(run.energies[0]),
        final_energy=float(run.last["energy"]),
        max_force=max_free_force(final),
        steps=int(run.opt.nsteps),
        converged=converged,
        energies=[float(e) for e in run.energies],
        optimizer=s.optimizer_name,
        fmax=s.fmax,
        relax_cell=s.relax_cell,
        max_stress=float(np.abs(stress).max()) if (s.relax_cell and stress is not None) else None,
        trajectory=run.trajectory,
        restarted_from=run.done_before,
        wall_time=time.perf_counter() - run.started,
    )


def relax_auto(
    atoms_list: Sequence[Atoms],
    calculator,
    *,
    optimizer: str = "FIRE",
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = False,
    max_atoms_per_batch: int | None = None,
    labels: Sequence[str] | None = None,
    on_result: Callable[[int, Any], None] | None = None,
    progress: bool = False,
    **ase_kwargs,
):
    """The batched torch engine (:func:`eqv2calc.engine.relax_engine`) where it applies, else
    :func:`relax_batch`.

    Torch when the calculator has ``predict_state`` (an eqv2calc model), the optimizer is FIRE
    or LBFGS, there are no other keyword arguments (trajectories, restart, ...) and every
    constraint is ``FixAtoms``; the arguments mean what they mean for ``relax_batch``.
    """
    from ase.constraints import FixAtoms

    atoms_list = list(atoms_list)
    only_fix = all(isinstance(c, FixAtoms) for a in atoms_list for c in a.constraints)
    use_torch = (
        hasattr(calculator, "predict_state")
        and optimizer.upper() in ("FIRE", "LBFGS")
        and only_fix
        and not ase_kwargs
    )
    budget = {} if max_atoms_per_batch is None else {"max_atoms_per_batch": max_atoms_per_batch}
    if not use_torch:
        return relax_batch(
            atoms_list,
            calculator,
            optimizer=optimizer,
            fmax=fmax,
            steps=steps,
            relax_cell=relax_cell,
            labels=labels,
            on_result=on_result,
            progress=progress,
            **budget,
            **ase_kwargs,
        )
    from eqv2calc.engine import EngineSettings, relax_engine

    settings = EngineSettings(
        optimizer=optimizer, fmax=fmax, steps=steps, relax_cell=relax_cell, **budget
    )
    return relax_engine(
        atoms_list, calculator, settings, labels=labels, on_result=on_result, progress=progress
    )
