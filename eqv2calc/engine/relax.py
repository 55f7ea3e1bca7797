"""Batched relaxation on the device: FIRE / LBFGS for many structures as tensors.

One iteration for the whole active batch:

1. one evaluation (energies, forces, stress) from the tensors — graph built on the device;
2. per-structure largest force (and, under the Frechet filter, cell "forces") → the only host
   synchronisation: which structures converged or ran out of steps;
3. finished structures leave (their results are copied to the host once); waiting structures
   enter while the batch stays within ``max_atoms_per_batch`` atoms;
4. one batched optimizer step (:mod:`eqv2calc.engine.optimizers`) for all the others.

Steps are counted as ASE counts them (``Optimizer.irun``: evaluate, check, step), so a
structure's step count and final energy are those of ``ase.optimize.FIRE``/``LBFGS`` with the
same parameters (tested in ``tests/test_engine.py``).
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
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from eqv2calc.batching import error_text
from eqv2calc.checks import validate_structure
from eqv2calc.engine.cellfilter import FrechetRows
from eqv2calc.engine.evaluate import make_evaluator
from eqv2calc.engine.files import default_labels, output_paths, start_fresh
from eqv2calc.engine.optimizers import make_optimizer, segment_max_norm
from eqv2calc.engine.state import fixed_mask
from eqv2calc.results import RelaxResult, max_free_force

__all__ = ["EngineSettings", "relax_engine"]

DEFAULT_MAX_ATOMS = 4096


@dataclass
class EngineSettings:
    """Settings of a batched device relaxation.

    Attributes:
        optimizer: ``"FIRE"`` or ``"LBFGS"``.
        fmax: convergence threshold on the largest force row (eV/Å; under the cell filter the
            cell rows count too, as in ASE); one value, or one per structure.
        steps: maximum optimizer steps per structure.
        relax_cell: relax the cell with the Frechet cell filter (stress model needed).
        max_atoms_per_batch: atom budget of the active batch (a larger structure runs alone).
        optimizer_kwargs: ASE keyword arguments of the optimizer (``maxstep`` Å, ``dt``, ...).
        skin: neighbour-list skin in Å (candidates reused while no atom moved > skin/2).
        precision: a :class:`~eqv2calc.engine.precision.Precision` or None.
    """

    optimizer: str = "FIRE"
    fmax: float | Sequence[float] = 0.05
    steps: int = 500
    relax_cell: bool = False
    max_atoms_per_batch: int = DEFAULT_MAX_ATOMS
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    skin: float = 0.5
    precision: Any = None


@dataclass
class _Item:
    index: int
    atoms: Atoms
    label: str
    started: float
    steps: int = 0
    energies: list = field(default_factory=list)
    traj: Path | None = None
    log: Path | None = None
    fmax: float = 0.05


class _Batch:
    """The active structures as tensors (rows = optimizer coordinates)."""

    def __init__(self, device, relax_cell: bool, opt) -> None:
        self.device = device
        self.relax_cell = relax_cell
        self.opt = opt
        z = torch.zeros
        self.items: list[_Item] = []
        self.numbers = z(0, dtype=torch.long, device=device)
        self.fixed = z(0, dtype=torch.bool, device=device)
        self.counts = z(0, dtype=torch.long, device=device)
        self.cells0 = z(0, 3, 3, dtype=torch.float64, device=device)
        self.pbc = z(0, 3, dtype=torch.bool, device=device)
        self.factor = z(0, dtype=torch.float64, device=device)
        self.rows = z(0, 3, dtype=torch.float64, device=device)
        self.row_counts = z(0, dtype=torch.long, device=device)
        self.n_atoms = 0
        opt.init(0, 0, device)
        self._layout()

    def _layout(self) -> None:
        dev = self.device
        nb = self.counts.shape[0]
        self.batch = torch.repeat_interleave(torch.arange(nb, device=dev), self.counts)
        if self.relax_cell:
            self.row_batch, self.is_atom, _ = FrechetRows.layout(self.counts)
        else:
            self.row_batch = self.batch
            self.is_atom = torch.ones_like(self.batch, dtype=torch.bool)
        self.row_fixed = torch.zeros_like(self.is_atom)
        self.row_fixed[self.is_atom] = self.fixed

    def add(self, items: list[_Item]) -> None:
        dev = self.device
        atoms = [it.atoms for it in items]
        pos = torch.as_tensor(
            np.concatenate([a.get_positions() for a in atoms]), dtype=torch.float64, device=dev
        )
        counts = torch.tensor([len(a) for a in atoms], dtype=torch.long, device=dev)
        cells = torch.as_tensor(
            np.array([a.cell.array for a in atoms]), dtype=torch.float64, device=dev
        )
        if self.relax_cell:
            row_batch, is_atom, _ = FrechetRows.layout(counts)
            batch = torch.repeat_interleave(torch.arange(len(atoms), device=dev), counts)
            factor = counts.to(torch.float64)
            rows = FrechetRows.to_rows(
                pos, cells, cells, torch.zeros_like(cells), factor, row_batch, is_atom, batch
            )
        else:
            rows = pos
            factor = torch.ones(len(atoms), dtype=torch.float64, device=dev)
        self.items += items
        self.numbers = torch.cat(
            [self.numbers, torch.as_tensor(np.concatenate([a.numbers for a in atoms]), device=dev)]
        )
        self.fixed = torch.cat(
            [
                self.fixed,
                torch.as_tensor(np.concatenate([fixed_mask(a) for a in atoms]), device=dev),
            ]
        )
        self.counts = torch.cat([self.counts, counts])
        self.cells0 = torch.cat([self.cells0, cells])
        self.pbc = torch.cat(
            [self.pbc, torch.as_tensor(np.array([a.pbc for a in atoms]), device=dev)]
        )
        self.factor = torch.cat([self.factor, factor])
        self.rows = torch.cat([self.rows, rows])
        self.opt.extend(rows.shape[0], len(atoms))
        self.n_atoms += int(pos.shape[0])
        self._layout()

    def keep(self, keep: list[bool]) -> None:
        ks = torch.tensor(keep, dtype=torch.bool, device=self.device)
        keep_atoms = ks[self.batch]
        keep_rows = ks[self.row_batch]
        self.items = [it for it, k in zip(self.items, keep) if k]
        self.numbers = self.numbers[keep_atoms]
        self.fixed = self.fixed[keep_atoms]
        self.n_atoms = int(sum(len(it.atoms) for it in self.items))
        self.counts = self.counts[ks]
        self.cells0 = self.cells0[ks]
        self.pbc = self.pbc[ks]
        self.factor = self.factor[ks]
        self.rows = self.rows[keep_rows]
        self.opt.select(keep_rows, ks)
        self._layout()

    def geometry(self):
        """(positions, cells, F, log F) of the current rows."""
        if self.relax_cell:
            return FrechetRows.from_rows(
                self.rows, self.cells0, self.factor, self.is_atom, self.batch
            )
        return self.rows, self.cells0, None, None


def _write_log(path: Path, name: str, step: int, energy: float, fmax: float) -> None:
    first = step == 0 and not path.exists()
    with open(path, "a") as fh:
        if first:
            fh.write(f"{' ' * len(name)}  Step     Time          Energy          fmax\n")
        t = time.strftime("%H:%M:%S")
        fh.write(f"{name}:  {step:3d} {t} {energy:15.6f} {fmax:15.6f}\n")


def relax_engine(
    atoms_list: Sequence[Atoms],
    calculator,
    settings: EngineSettings | None = None,
    *,
    labels: Sequence[str] | None = None,
    trajectories: Sequence[str | os.PathLike | None] | None = None,
    logfiles: Sequence[str | os.PathLike | None] | None = None,
    on_result: Callable[[int, Any], None] | None = None,
    evaluator=None,
    progress: bool = False,
):
    """Relax many structures on the calculator's device with the batched engine.

    Args:
        atoms_list: structures (not modified). ``FixAtoms`` is honoured; other constraints are
            refused per structure (the result carries the error).
        calculator: an ``EquiformerV2Calculator`` (evaluated from tensors) or any ASE
            calculator (evaluated through ``ase.Atoms``, for tests).
        settings: :class:`EngineSettings`.
        labels: names (default ``<formula>_<index>``).
        trajectories: per-structure ASE trajectory files (one frame per evaluation) or None.
        logfiles: per-structure logs in ASE's optimizer format, or None.
        on_result: called as ``on_result(index, result)`` when a structure finishes.
        evaluator: override the evaluator (see :mod:`eqv2calc.engine.evaluate`).
        progress: show a tqdm bar over structures.

    Returns:
        One :class:`~eqv2calc.results.RelaxResult` per input, in input order.
    """
    settings = settings or EngineSettings()
    atoms_list = list(atoms_list)
    n = len(atoms_list)
    opt_name = settings.optimizer.upper()
    opt = make_optimizer(opt_name, **dict(settings.optimizer_kwargs or {}))
    ev = evaluator or make_evaluator(calculator, skin=settings.skin, precision=settings.precision)
    _check_settings(settings, ev)
    labels = default_labels(atoms_list, labels)
    fmaxes = [float(f) for f in np.broadcast_to(np.asarray(settings.fmax, dtype=float), (n,))]
    trajs = output_paths(trajectories, n)
    logs = output_paths(logfiles, n)
    results: list[Any] = [None] * n
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="structures", unit="struct")

    def finish(i: int, res) -> None:
        results[i] = res
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(i, res)

    def fail(i: int, msg: str, started: float | None = None) -> None:
        finish(
            i,
            RelaxResult(
                label=labels[i],
                atoms=atoms_list[i].copy(),
                optimizer=opt_name,
                fmax=fmaxes[i],
                relax_cell=settings.relax_cell,
                error=msg,
                trajectory=trajs[i],
                wall_time=(time.perf_counter() - started) if started else 0.0,
            ),
        )

    zmax = getattr(ev, "max_atomic_number", None)
    pending = deque(range(n))
    active = _Batch(ev.device, settings.relax_cell, opt)
    try:
        while pending or active.items:
            # admit waiting structures under the atom budget
            new: list[_Item] = []
            budget = active.n_atoms
            while pending:
                i = pending[0]
                size = len(atoms_list[i])
                if (active.items or new) and budget + size > settings.max_atoms_per_batch:
                    break
                pending.popleft()
                atoms = atoms_list[i]
                try:
                    _check_admissible(atoms, labels[i], settings.relax_cell, zmax)
                except Exception as err:
                    fail(i, error_text(err))
                    continue
                start_fresh([trajs[i], logs[i]])
                new.append(
                    _Item(
                        i,
                        atoms,
                        labels[i],
                        time.perf_counter(),
                        traj=trajs[i],
                        log=logs[i],
                        fmax=fmaxes[i],
                    )
                )
                budget += size
            if new:
                active.add(new)
            if not active.items:
                continue
            _iterate(active, ev, settings, opt_name, finish, fail)
    finally:
        if bar is not None:
            bar.close()
    return results


def _check_settings(settings: EngineSettings, ev) -> None:
    """ValueError for a cell relaxation without stress or an atom budget below 1."""
    if settings.relax_cell and not ev.has_stress:
        raise ValueError(
            "cell relaxation needs the stress, but this calculator has no stress head; use a "
            "model with stress, e.g. an OMat/MP hydra checkpoint"
        )
    if settings.max_atoms_per_batch < 1:
        raise ValueError(
            f"max_atoms_per_batch must be at least 1, got {settings.max_atoms_per_batch}"
        )


def _check_admissible(atoms: Atoms, label: str, relax_cell: bool, zmax: int | None) -> None:
    """Raise (with the label) if ``atoms`` cannot enter the batch: invalid structure,
    constraints other than ``FixAtoms``, or an element outside the model's Z = 1..zmax."""
    validate_structure(atoms, relax_cell=relax_cell, label=label)
    fixed_mask(atoms)
    if zmax is not None:
        bad = np.flatnonzero((atoms.numbers < 1) | (atoms.numbers > zmax))
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"{label}: atom {k} has atomic number {atoms.numbers[k]}, "
                f"but this model covers Z = 1..{zmax}"
            )


def _evaluate(active: _Batch, ev, relax_cell: bool):
    positions, cells, f_mat, log_f = active.geometry()
    nb = len(active.items)
    out = ev(positions, cells, active.numbers, active.batch, active.pbc, nb, stress=relax_cell)
    forces = torch.where(active.fixed.unsqueeze(-1), 0.0, out["forces"])
    if relax_cell:
        row_f = FrechetRows.forces(
            forces,
            out["stress"],
            cells,
            f_mat,
            log_f,
            active.factor,
            active.is_atom,
            active.batch,
        )
    else:
        row_f = forces
    return positions, cells, out, row_f


def _iterate(active: _Batch, ev, settings: EngineSettings, opt_name: str, finish, fail) -> None:
    nb = len(active.items)
    try:
        positions, cells, out, row_f = _evaluate(active, ev, settings.relax_cell)
    except Exception as err:
        # pin the failure on the structures that cause it: evaluate each alone once
        keep = [True] * nb
        positions, cells, _, _ = active.geometry()
        for k, it in enumerate(active.items):
            sel = active.batch == k
            try:
                if nb == 1:
                    raise err
                ev(
                    positions[sel],
                    cells[k : k + 1],
                    active.numbers[sel],
                    torch.zeros(int(sel.sum()), dtype=torch.long, device=active.device),
                    active.pbc[k : k + 1],
                    1,
                    stress=settings.relax_cell,
                )
            except Exception as err_k:
                fail(it.index, error_text(err_k), it.started)
                keep[k] = False
        if all(keep):  # only the batch as a whole fails: give up on all of it
            for it in active.items:
                fail(it.index, error_text(err), it.started)
            keep = [False] * nb
        active.keep(keep)
        return
    bad_atoms = (~torch.isfinite(out["forces"]).all(-1)).to(torch.float64)
    bad_t = ~torch.isfinite(out["energy"]) | (
        torch.zeros(nb, dtype=torch.float64, device=bad_atoms.device).index_add_(
            0, active.batch, bad_atoms
        )
        > 0
    )

    fmax_t = segment_max_norm(row_f, active.row_batch, nb)
    # the one host synchronisation of the step
    host = torch.cat([out["energy"].reshape(-1), fmax_t, bad_t.to(fmax_t.dtype)]).cpu().numpy()
    energy, fmax, bad = host[:nb], host[nb : 2 * nb], host[2 * nb :] > 0
    keep: list[bool] = []
    for k, it in enumerate(active.items):
        if bad[k]:
            fail(it.index, "the model returned a non-finite energy or force", it.started)
            keep.append(False)
            continue
        it.energies.append(float(energy[k]))
        if it.log is not None:
            _write_log(it.log, opt_name, it.steps, float(energy[k]), float(fmax[k]))
        if it.traj is not None:
            _append_frame(it, active, k, positions, cells, out, settings.relax_cell)
        converged = bool(fmax[k] < it.fmax)
        if converged or it.steps >= settings.steps:
            finish(
                it.index,
                _result(
                    it,
                    active,
                    k,
                    positions,
                    cells,
                    out,
                    settings=settings,
                    opt_name=opt_name,
                    converged=converged,
                ),
            )
            keep.append(False)
        else:
            keep.append(True)
    if not all(keep):
        sel = torch.tensor(keep, dtype=torch.bool, device=active.device)
        row_f = row_f[sel[active.row_batch]]
        active.keep(keep)
    if not active.items:
        return
    dr = active.opt.step(active.rows, row_f, active.row_batch)
    dr = torch.where(active.row_fixed.unsqueeze(-1), 0.0, dr)
    active.rows = active.rows + dr
    for it in active.items:
        it.steps += 1


def _atoms_at(it: _Item, active: _Batch, k: int, positions, cells, out, with_stress: bool):
    sel = (active.batch == k).nonzero().squeeze(1)
    a = it.atoms.copy()
    a.set_cell(cells[k].cpu().numpy(), scale_atoms=False)
    a.set_positions(positions[sel].cpu().numpy(), apply_constraint=False)
    res = {
        "energy": float(out["energy"][k]),
        "free_energy": float(out["energy"][k]),
        "forces": out["forces"][sel].cpu().numpy(),
    }
    if with_stress and "stress" in out:
        s = out["stress"][k].cpu().numpy()
        res["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    a.calc = SinglePointCalculator(a, **res)
    return a, res


def _append_frame(it, active, k, positions, cells, out, relax_cell) -> None:
    from ase.io.trajectory import Trajectory

    a, _ = _atoms_at(it, active, k, positions, cells, out, relax_cell)
    with Trajectory(str(it.traj), "a") as traj:
        traj.write(a)


def _result(it, active, k, positions, cells, out, *, settings, opt_name, converged):
    final, res = _atoms_at(it, active, k, positions, cells, out, settings.relax_cell)
    stress = res.get("stress")
    return RelaxResult(
        label=it.label,
        atoms=final,
        initial_energy=float(it.energies[0]),
        final_energy=float(it.energies[-1]),
        max_force=max_free_force(final),
        steps=int(it.steps),
        converged=converged,
        energies=[float(e) for e in it.energies],
        optimizer=opt_name,
        fmax=it.fmax,
        relax_cell=settings.relax_cell,
        max_stress=float(np.abs(stress).max()) if stress is not None else None,
        trajectory=it.traj,
        wall_time=time.perf_counter() - it.started,
    )
