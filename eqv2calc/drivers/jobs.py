"""File-level jobs behind ``eqv2calc relax`` and ``eqv2calc eval``.

A job takes structures read from files (:func:`eqv2calc.io.load_structures`), runs a driver
and writes results as they come: each relaxed structure as soon as it finishes, and a JSON
summary rewritten atomically after every structure, so an interrupted run loses nothing that
was finished and can be resumed (``restart=True`` continues every relaxation from its
trajectory). Bad structures are recorded with a one-line error and the others go on.

Units in the summaries: eV, eV/Å, eV/Å³, as the key names say.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from eqv2calc.batching import DEFAULT_MAX_ATOMS_PER_BATCH
from eqv2calc.drivers.batch_relax import relax_batch
from eqv2calc.drivers.evaluate import EvalResult, evaluate
from eqv2calc.drivers.md import MDResult, run_md
from eqv2calc.drivers.relax import (
    RelaxResult,
    RelaxSettings,
    fix_below,
    move_aside,
    relax_settings,
)
from eqv2calc.io import (
    StructureEntry,
    StructureReadError,
    atomic_path,
    calculator_label,
    check_writable_dir,
    check_writable_file,
    lock_directory,
    write_json_atomic,
    write_structure,
)
from eqv2calc.results import written_file

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_CONVERGED",
    "EXIT_OK",
    "EngineNotApplicable",
    "JobReport",
    "OutputsOfAnotherInput",
    "RelaxPaths",
    "engine_fallback_note",
    "fresh_seed",
    "md_paths",
    "relax_paths",
    "run_eval_job",
    "run_md_job",
    "run_md_many_job",
    "run_relax_job",
]

#: Exit status: every structure done (and, for relax, converged).
EXIT_OK = 0
#: Exit status: at least one input could not be read or processed.
EXIT_FAILED = 1
#: Exit status: no failures, but at least one relaxation did not converge.
EXIT_NOT_CONVERGED = 3


@dataclass
class JobReport:
    """What a job did.

    Attributes:
        summary_path: The JSON summary written.
        records: Per-structure summary records, in input order.
        read_errors: One-line messages for inputs that could not be read.
        n_ok: Structures processed without error (for relax: converged or not).
        n_failed: Structures (and unreadable inputs) that failed.
        n_not_converged: Relaxations that ran out of steps.
    """

    summary_path: Path | None
    records: list[dict[str, Any]] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    n_ok: int = 0
    n_failed: int = 0
    n_not_converged: int = 0

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_FAILED` if anything failed, else :data:`EXIT_NOT_CONVERGED` if a
        relaxation did not converge, else :data:`EXIT_OK`."""
        if self.n_failed:
            return EXIT_FAILED
        if self.n_not_converged:
            return EXIT_NOT_CONVERGED
        return EXIT_OK


@dataclass(frozen=True)
class RelaxPaths:
    """Output files of one relaxation."""

    relaxed: Path
    trajectory: Path
    log: Path


class OutputsOfAnotherInput(ValueError):
    """A relaxation's output files already hold the results of a different input (a usage
    error: writing them would destroy those results)."""


class _NothingToWrite(Exception):
    """Raised inside :func:`atomic_path` to leave no results file when nothing succeeded."""


def relax_paths(
    entry: StructureEntry,
    *,
    output: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    fmt: str = "extxyz",
) -> RelaxPaths:
    """Where the outputs of one relaxation go.

    By default next to the input: ``<label>_relaxed.<fmt>``, ``<label>_relax.traj`` and
    ``<label>_relax.log``; ``output_dir`` moves them all; ``output`` names the relaxed
    structure file itself (trajectory and log then go next to it).
    """
    fmt = fmt.lstrip(".")
    if output is not None:
        relaxed = Path(output)
        folder = relaxed.parent
    else:
        folder = Path(output_dir) if output_dir is not None else entry.source.parent
        relaxed = folder / f"{entry.label}_relaxed.{fmt}"
    return RelaxPaths(
        relaxed=relaxed,
        trajectory=folder / f"{entry.label}_relax.traj",
        log=folder / f"{entry.label}_relax.log",
    )


class SummaryWarning(UserWarning):
    """An earlier summary file could not be merged and was moved aside (the message says where)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _move_aside(path: Path, why: str) -> None:
    target = move_aside(path)
    warnings.warn(f"{path}: {why}; moved to {target.name}", SummaryWarning, stacklevel=3)


def _load_summary(path: Path | None, command: str) -> dict[str, Any]:
    """The earlier summary at ``path`` to merge into, or {} (a file that cannot be merged is
    moved aside, never overwritten)."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        _move_aside(path, f"earlier summary is not readable JSON ({type(err).__name__})")
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("structures", {}), dict):
        _move_aside(path, "earlier summary has an unexpected layout")
        return {}
    if data.get("command", command) != command:
        _move_aside(path, f"holds a summary of '{data.get('command')}', not '{command}'")
        return {}
    return data


class _Summary:
    """The JSON summary of a job, rewritten atomically whenever a record changes.

    Records already in the file from earlier runs are kept: records are merged by structure
    label, a structure run again replaces its own record, and an earlier record of another
    file under the same label is kept under ``<label>~<n>``. Every run is listed under
    ``"runs"`` with its settings, counts and status (``finished``, ``interrupted`` or
    ``failed``). While the job runs, the summary's folder and every output folder are
    checked for writability and locked (:func:`eqv2calc.io.lock_directory`).
    """

    def __init__(
        self,
        path: Path | None,
        command: str,
        settings: dict[str, Any],
        *,
        folders: Sequence[Path] = (),
    ):
        self.path = path
        self.stopped_by: BaseException | None = None
        self._mine: set[str] = set()
        #: Labels whose earlier record the output check found to be of the same input.
        self.rerun_keys: set[str] = set()
        self._locks = contextlib.ExitStack()
        dirs = {os.path.realpath(f): Path(f) for f in folders}
        if path is not None:
            dirs.setdefault(os.path.realpath(path.parent), path.parent)
        try:
            for key in sorted(dirs):
                check_writable_dir(dirs[key])
            for key in sorted(dirs):
                self._locks.enter_context(lock_directory(dirs[key], command))
            if path is not None:
                check_writable_file(path, what="summary file")
            old = _load_summary(path, command)
        except BaseException:
            self._locks.close()
            raise
        self.run = {"started": _now(), "finished": None, "status": "running"}
        self.data: dict[str, Any] = {
            "command": command,
            "settings": settings,
            "started": self.run["started"],
            "finished": None,
            "status": "running",
            "structures": dict(old.get("structures", {})),
            "read_errors": [],
            "counts": {},
            "runs": list(old.get("runs", [])) + [dict(self.run, settings=settings)],
        }

    def begin(
        self, read_errors: Sequence[Any], check: Callable[[], Any] | None = None
    ) -> JobReport:
        """Record unreadable inputs as failures and write the summary for the first time
        (after ``check``); on failure the locks are released. Returns the job's report."""
        report = JobReport(summary_path=self.path)
        report.read_errors.extend(str(err) for err in read_errors)
        report.n_failed += len(report.read_errors)
        self.data["read_errors"] = report.read_errors
        try:
            if check is not None:
                check()
            self.flush()
        except BaseException:
            self.finish({})
            raise
        return report

    def abort(self) -> None:
        """Release the locks without writing anything (the job refused to start)."""
        self._locks.close()

    def set(self, key: str, record: dict[str, Any]) -> None:
        structures = self.data["structures"]
        old = structures.get(key)
        if old is not None and key not in self._mine and not self._same_source(key, old, record):
            n = 2
            while f"{key}~{n}" in structures:
                n += 1
            # Another file under the same label: keep its record. Its files, where they are
            # the files this record now names, hold the new results (the job only gets here
            # when they no longer held the old ones), so the kept record stops naming them.
            # The kept record's paths may be relative to another directory than the current
            # one: they are matched to this record's files by name (see _names_file).
            old = dict(old)
            mine = [_real(record.get(k)) for k in _FILE_FIELDS]
            mine = [m for m in mine if m is not None]
            for k in _FILE_FIELDS:
                if any(_names_file(old.get(k), m) for m in mine):
                    old[k] = None
                    old.setdefault("files_reused_by", record.get("source"))
            structures[f"{key}~{n}"] = old
        structures[key] = record
        self._mine.add(key)
        self.flush()

    def _same_source(self, key: str, old: dict[str, Any], record: dict[str, Any]) -> bool:
        """Whether an earlier record under ``key`` is of the input ``record`` is of (then it
        is replaced). Records with ``source_abspath`` are compared by it, whatever directory
        each run was started from; older ones by their ``source`` as written, or by what the
        output check found (``rerun_keys``: their files hold this input's relaxation)."""
        before, now = old.get("source_abspath"), record.get("source_abspath")
        if before and now:
            return before == now
        return old.get("source") == record.get("source") or key in self.rerun_keys

    def flush(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.data)

    def finish(self, counts: dict[str, int]) -> None:
        """Write the final state (``interrupted`` after Ctrl-C) and release the locks."""
        err = self.stopped_by
        status = (
            "finished"
            if err is None
            else ("interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed")
        )
        try:
            self.data.update(counts=counts, finished=_now(), status=status)
            self.data["runs"][-1].update(
                finished=self.data["finished"], status=status, counts=counts
            )
            self.flush()
        finally:
            self._locks.close()


#: Summary record fields naming a structure's output files.
_FILE_FIELDS = ("output", "trajectory", "log")


def _real(path: Any) -> str | None:
    return os.path.realpath(path) if isinstance(path, (str, os.PathLike)) and path else None


def _names_file(recorded: Any, real: str) -> int:
    """How well a path written in a summary record names the existing file ``real`` (a
    resolved path): 0 not at all; otherwise higher is surer (``_EXACT`` for the same path).

    Relative paths in a record are relative to the directory that earlier run was started
    from, which is not known: such a path names ``real`` when it ends in the same file name,
    counting how many of its trailing components (``..`` and ``.`` dropped) agree."""
    if not isinstance(recorded, (str, os.PathLike)) or not recorded:
        return 0
    if _real(recorded) == real:
        return _EXACT
    if os.path.isabs(recorded):
        return 0  # an absolute path names one file, and not this one
    parts = [p for p in Path(os.path.normpath(recorded)).parts if p not in ("..", ".")]
    have = Path(real).parts
    n = 0
    while n < min(len(parts), len(have)) and parts[-1 - n] == have[-1 - n]:
        n += 1
    return n


_EXACT = 1 << 16


def _owner(real: str, structures: dict[str, Any]) -> tuple[str, dict[str, Any]] | tuple[None, None]:
    """The summary record (and its label) that names the existing file ``real``: the best
    match by :func:`_names_file`, plain labels before those kept as ``label~n``."""
    best: tuple[int, str | None, Any] = (0, None, None)
    for key, record in sorted(structures.items(), key=lambda kv: ("~" in kv[0], kv[0])):
        if isinstance(record, dict):
            score = max(_names_file(record.get(k), real) for k in _FILE_FIELDS)
            if score > best[0]:
                best = (score, key, record)
    return (best[1], best[2]) if best[1] is not None else (None, None)


def _same_atoms(a: Atoms, b: Atoms, tol: float = 1e-6) -> bool:
    """Same atomic numbers, periodicity, cell and positions (within ``tol`` Å, an atom
    wrapped into the cell by a whole lattice vector counting as in place)."""
    if not np.array_equal(a.numbers, b.numbers) or not np.array_equal(a.pbc, b.pbc):
        return False
    if not np.allclose(a.cell.array, b.cell.array, rtol=0.0, atol=tol):
        return False
    delta = b.positions - a.positions
    if a.pbc.any():
        cell = a.cell.array
        periodic = [i for i in range(3) if a.pbc[i]]
        frac = np.linalg.lstsq(cell[periodic].T, delta.T, rcond=None)[0].T
        delta = delta - np.round(frac) @ cell[periodic]
    return bool(np.all(np.linalg.norm(delta, axis=1) <= tol))


def _read_first(path: Path, fmt: str | None = None) -> Atoms | None:
    """The first frame of ``path`` (None if it cannot be read)."""
    import ase.io

    try:
        return ase.io.read(str(path), index=0, format=fmt)
    except Exception:  # unreadable: nothing to compare with; the run replaces or repairs it
        return None


def _same_input(record: dict[str, Any], entry: StructureEntry, out: RelaxPaths) -> bool:
    """Whether a summary record is of ``entry`` (same file, same frame).

    Records hold the resolved input path (``source_abspath``), which does not depend on the
    directory either run was started from. Older records only hold ``source`` as given on
    the command line (relative to a directory not known here): they are of ``entry`` when
    the first frame of the trajectory is ``entry``'s structure (numbers, cell, positions),
    or, without a readable trajectory, when ``source`` resolves here to the same file and
    the relaxed structure holds the same atoms."""
    if record.get("frame") != entry.index:
        return False
    if record.get("source_abspath"):
        return record["source_abspath"] == _real(entry.source)
    if out.trajectory.exists():
        first = _read_first(out.trajectory, "traj")
        if first is not None:
            return _same_atoms(first, entry.atoms)
    if _real(record.get("source")) != _real(entry.source):
        return False
    if out.relaxed.exists():
        held = _read_first(out.relaxed, _output_format_or_none(out.relaxed))
        return held is None or np.array_equal(held.numbers, entry.atoms.numbers)
    return True


def _output_format_or_none(path: Path) -> str | None:
    from eqv2calc.io import output_format

    try:
        return output_format(path)
    except ValueError:
        return None


def _check_relax_outputs(
    entries: Sequence[StructureEntry],
    paths: Sequence[RelaxPaths],
    structures: dict[str, Any],
    summary_path: Path | None,
) -> set[str]:
    """Refuse, before anything is written, to write a structure's outputs over files that
    hold the results of a different input.

    Files that exist are judged by the summary record that names them (matched by file
    name, so that neither run's current directory matters; the record under the plain
    label first, then one kept as ``label~n``): a record of the same input (file and frame,
    see :func:`_same_input`) means a re-run, which goes on as before (the relaxed structure
    is rewritten, ``--restart`` continues the trajectory); a record of another input is
    refused. Files no record names (a summary kept elsewhere, or deleted) are refused when
    the trajectory's first frame is another structure than the input (atoms, cell or
    positions) or the relaxed structure holds other atoms.

    Returns:
        The labels of the records found to be of the same input (re-runs).

    Raises:
        OutputsOfAnotherInput: naming the file, the input it came from and what to do.
    """
    hint = (
        "give another --output-dir (or move those files away) to keep both; relax never "
        "writes over another input's results"
    )
    reruns: set[str] = set()
    for entry, out in zip(entries, paths):
        existing = [p for p in (out.relaxed, out.trajectory, out.log) if p.exists()]
        for path in existing:
            key, record = _owner(os.path.realpath(path), structures)
            if record is None:
                continue
            if not _same_input(record, entry, out):
                where = f" (frame {record['frame']})" if record.get("frame") is not None else ""
                raise OutputsOfAnotherInput(
                    f"{path} holds the relaxation of {record.get('source')}{where} according "
                    f"to {summary_path}, not of {entry.source}; {hint}"
                )
            reruns.add(key)
            break  # a record of this input: a re-run
        else:
            for path, fmt in ((out.trajectory, "traj"), (out.relaxed, None)):
                if not path.exists():
                    continue
                if fmt is None:
                    fmt = _output_format_or_none(path)
                    if fmt is None:
                        continue
                held = _read_first(path, fmt)
                if held is None:
                    continue
                if not np.array_equal(held.numbers, entry.atoms.numbers):
                    raise OutputsOfAnotherInput(
                        f"{path} exists and holds {held.get_chemical_formula()}, not the "
                        f"{entry.atoms.get_chemical_formula()} of {entry.source} (no summary "
                        f"record says where it came from); {hint}"
                    )
                if fmt == "traj" and not _same_atoms(held, entry.atoms):
                    raise OutputsOfAnotherInput(
                        f"{path} exists and starts from another {held.get_chemical_formula()} "
                        f"structure (cell or positions) than {entry.source} (no summary "
                        f"record says where it came from); {hint}"
                    )
    return reruns


def _count(report: JobReport) -> dict[str, int]:
    return {
        "ok": report.n_ok,
        "failed": report.n_failed,
        "not_converged": report.n_not_converged,
    }


def _choose_engine(engine, calculator, optimizer, batch, restart, entries) -> str:
    """Resolve ``engine`` (see :func:`run_relax_job`); explicit "torch" is checked."""
    from ase.constraints import FixAtoms

    fits = optimizer.upper() in ("FIRE", "LBFGS") and not restart
    only_fix_atoms = all(
        isinstance(c, FixAtoms) for e in entries for c in getattr(e.atoms, "constraints", [])
    )
    if engine is None:
        auto = fits and batch and only_fix_atoms and hasattr(calculator, "predict_state")
        return "torch" if auto else "ase"
    if engine not in ("ase", "torch"):
        raise ValueError(f"engine must be 'torch' or 'ase', got {engine!r}")
    if engine == "torch" and not fits:
        raise EngineNotApplicable(
            "the torch engine runs FIRE and LBFGS without --restart; "
            f"use --engine ase for {optimizer}" + (" with --restart" if restart else "")
        )
    if engine == "torch" and not hasattr(calculator, "predict_state"):
        raise EngineNotApplicable(
            "the torch engine runs eqv2calc models on the device, not "
            f"{calculator_label(calculator)}; use --engine ase (or leave --engine out)"
        )
    return engine


class EngineNotApplicable(ValueError):
    """An explicitly chosen engine cannot run these relaxations (a usage error)."""


def engine_fallback_note(calculator: Calculator, optimizer: str, restart: bool) -> str | None:
    """Why the default engine choice falls back to the ASE optimizers, or None (one line)."""
    if optimizer.upper() not in ("FIRE", "LBFGS"):
        return None  # the ASE optimizers are the only ones for the others; nothing to note
    if restart:
        return "--restart continues ASE optimizer runs; the torch engine is not used"
    if not hasattr(calculator, "predict_state"):
        return (
            f"{calculator_label(calculator)} is not an eqv2calc model; "
            "the ASE optimizers are used instead of the torch engine"
        )
    return None


def run_relax_job(
    entries: Sequence[StructureEntry],
    calculator: Calculator,
    settings: RelaxSettings | None = None,
    *,
    read_errors: Sequence[StructureReadError | str] = (),
    fix_below_z: float | None = None,
    output: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    fmt: str = "extxyz",
    summary_path: str | os.PathLike | None = "relax_summary.json",
    restart: bool = False,
    batch: bool = True,
    max_atoms_per_batch: int = DEFAULT_MAX_ATOMS_PER_BATCH,
    progress: bool = True,
    on_result: Callable[[StructureEntry, RelaxResult, RelaxPaths], None] | None = None,
    engine: str | None = "ase",
    **options: Any,
) -> JobReport:
    """Relax structures read from files and write every result as soon as it is ready.

    Args:
        entries: Structures from :func:`eqv2calc.io.load_structures`.
        calculator: Any ASE calculator.
        settings: Optimizer, ``fmax`` (eV/Å), steps, ``relax_cell`` (needs stress):
            :class:`~eqv2calc.drivers.relax.RelaxSettings`.
        read_errors: Inputs that could not be read (recorded in the summary as failures).
        fix_below_z: Fix atoms with z below this height (Å) in addition to constraints read
            from the input.
        output: File for the relaxed structure (only with a single structure).
        output_dir: Folder for all outputs (default: next to each input).
        fmt: Format (file extension) of relaxed structures when ``output`` is not given.
        summary_path: JSON summary, rewritten after every structure (None: none). Records
            of an earlier run in the same file are kept (merged by structure).
        restart: Continue each structure from the last readable frame of its trajectory (a
            damaged trajectory is moved aside, never deleted).
        batch: Relax all structures together (one model call per step); False relaxes them
            one after another (same optimizers, no batching across structures).
        max_atoms_per_batch: Memory budget of the batch, atoms.
        progress: Show progress bars.
        on_result: Called with ``(entry, result, paths)`` after each structure's files are
            written (e.g. to print a line).
        engine: ``"ase"`` (one ASE optimizer per structure), ``"torch"`` (the batched device
            engine, :mod:`eqv2calc.engine`: FIRE/LBFGS, FixAtoms, no restart) or None (torch
            where it applies: an eqv2calc model, FIRE/LBFGS, batched, no restart, only FixAtoms
            constraints; else ase).
        **options: Fields of ``RelaxSettings`` (``optimizer="BFGS"``, ``fmax=0.01``...),
            applied on top of ``settings``.

    Returns:
        The :class:`JobReport`; ``report.exit_code`` is the command's exit status.

    Raises:
        OutputNotWritableError: An output folder cannot be written (checked before any work).
        OutputDirLocked: Another process is writing into an output folder.
    """
    s = relax_settings(settings, **options)
    entries = list(entries)
    engine = _choose_engine(engine, calculator, s.optimizer, batch, restart, entries)
    if output is not None and len(entries) > 1:
        raise ValueError(
            f"--output names one file but {len(entries)} structures were given; "
            "use an output folder instead"
        )
    recorded = {
        "model": calculator_label(calculator),
        "optimizer": s.optimizer,
        "fmax_eV_per_A": s.fmax,
        "steps": s.steps,
        "relax_cell": s.relax_cell,
        "fix_below_A": fix_below_z,
        "batched": batch,
        "max_atoms_per_batch": max_atoms_per_batch,
        "engine": engine,
    }
    paths = [relax_paths(e, output=output, output_dir=output_dir, fmt=fmt) for e in entries]
    summary = _Summary(
        Path(summary_path) if summary_path else None,
        "relax",
        recorded,
        folders=[p.relaxed.parent for p in paths] + [p.trajectory.parent for p in paths],
    )
    try:
        summary.rerun_keys = _check_relax_outputs(
            entries, paths, summary.data["structures"], summary.path
        )
    except BaseException:
        summary.abort()
        raise
    report = summary.begin(read_errors)
    atoms_list = [e.atoms.copy() for e in entries]
    fixed = [len(fix_below(a, fix_below_z)) if fix_below_z is not None else 0 for a in atoms_list]
    records: list[dict[str, Any] | None] = [None] * len(entries)

    def finished(i: int, result: RelaxResult) -> None:
        records[i] = _record_relaxed(entries[i], result, paths[i], fixed[i], report)
        summary.set(entries[i].label, records[i])
        if on_result is not None:
            on_result(entries[i], result, paths[i])

    try:
        _dispatch_relax(
            atoms_list,
            calculator,
            s,
            engine=engine,
            batch=batch,
            max_atoms_per_batch=max_atoms_per_batch,
            labels=[e.label for e in entries],
            paths=paths,
            restart=restart,
            progress=progress,
            on_result=finished,
        )
    except BaseException as err:
        summary.stopped_by = err
        raise
    finally:
        report.records = [r for r in records if r is not None]
        summary.finish(_count(report))
    return report


def _record_relaxed(
    entry: StructureEntry, result: RelaxResult, out: RelaxPaths, fixed: int, report: JobReport
) -> dict[str, Any]:
    """Write one relaxed structure and return its summary record (counts go to ``report``)."""
    record = {
        "source": str(entry.source),
        "source_abspath": _real(entry.source),
        "frame": entry.index,
        **result.to_dict(),
    }
    record["fixed_by_fix_below"] = fixed
    record["log"] = str(out.log)
    if not result.ok:
        record.update(trajectory=written_file(result.trajectory), log=written_file(out.log))
        report.n_failed += 1
        return record
    final = result.atoms.copy()
    final.calc = result.atoms.calc
    final.info.update(
        {
            "relax_converged": result.converged,
            "relax_steps": result.steps,
            "relax_fmax": result.fmax,
        }
    )
    try:
        write_structure(out.relaxed, final)
    except Exception as err:
        record.update(status="error", error=f"cannot write {out.relaxed}: {err}")
        result.error = record["error"]
        report.n_failed += 1
        return record
    record["output"] = str(out.relaxed)
    report.n_ok += 1
    if not result.converged:
        report.n_not_converged += 1
    return record


def _dispatch_relax(
    atoms_list: list,
    calculator: Calculator,
    s: RelaxSettings,
    *,
    engine: str,
    batch: bool,
    max_atoms_per_batch: int,
    labels: list[str],
    paths: list[RelaxPaths],
    restart: bool,
    progress: bool,
    on_result: Callable[[int, RelaxResult], None],
) -> None:
    """Run the relaxations with the device engine, batched ASE optimizers or one by one."""
    trajectories = [p.trajectory for p in paths]
    logfiles = [p.log for p in paths]
    if engine == "torch":
        from eqv2calc.engine import EngineSettings, relax_engine

        relax_engine(
            atoms_list,
            calculator,
            EngineSettings(
                optimizer=s.optimizer,
                fmax=s.fmax,
                steps=s.steps,
                relax_cell=s.relax_cell,
                max_atoms_per_batch=max_atoms_per_batch,
            ),
            labels=labels,
            trajectories=trajectories,
            logfiles=logfiles,
            on_result=on_result,
            progress=progress,
        )
    elif batch:
        relax_batch(
            atoms_list,
            calculator,
            s,
            max_atoms_per_batch=max_atoms_per_batch,
            labels=labels,
            trajectories=trajectories,
            logfiles=logfiles,
            restart=restart,
            progress=progress,
            on_result=on_result,
        )
    else:
        # One structure at a time (same results, no batching across structures).
        for i, atoms in enumerate(atoms_list):
            relax_batch(
                [atoms],
                calculator,
                s,
                max_atoms_per_batch=max(len(atoms), 1),
                labels=[labels[i]],
                trajectories=[trajectories[i]],
                logfiles=[logfiles[i]],
                restart=restart,
                progress=False,
                on_result=lambda _j, res, i=i: on_result(i, res),
            )


def run_eval_job(
    entries: Sequence[StructureEntry],
    calculator: Calculator,
    *,
    output: str | os.PathLike = "eval_results.extxyz",
    read_errors: Sequence[StructureReadError | str] = (),
    summary_path: str | os.PathLike | None = "eval_summary.json",
    max_atoms_per_batch: int = DEFAULT_MAX_ATOMS_PER_BATCH,
    progress: bool = True,
    on_result: Callable[[StructureEntry, EvalResult], None] | None = None,
) -> JobReport:
    """Single points for structures read from files, written to one extxyz file.

    Every evaluated structure is appended to a temporary file next to ``output`` as soon
    as its batch is done; the file is moved into place at the end (also after an error),
    and the JSON summary is rewritten after every structure.

    Args:
        entries: Structures from :func:`eqv2calc.io.load_structures`.
        calculator: Any ASE calculator.
        output: extxyz file with energies (eV), forces (eV/Å) and stress (eV/Å³) attached;
            each frame's ``info`` holds ``label`` and ``source``.
        read_errors: Inputs that could not be read (recorded as failures).
        summary_path: JSON summary (None: none).
        max_atoms_per_batch: Memory budget per model call, atoms.
        progress: Show a progress bar.
        on_result: Called with ``(entry, result)`` for every structure.

    Returns:
        The :class:`JobReport`.
    """
    import ase.io

    entries = list(entries)
    output = Path(output)
    settings = {
        "model": calculator_label(calculator),
        "max_atoms_per_batch": max_atoms_per_batch,
        "output": str(output),
    }
    summary = _Summary(
        Path(summary_path) if summary_path else None, "eval", settings, folders=[output.parent]
    )
    report = summary.begin(
        read_errors, check=lambda: check_writable_file(output, what="results file")
    )
    records: list[dict[str, Any] | None] = [None] * len(entries)

    def done(i: int, result: EvalResult) -> None:
        entry = entries[i]
        record = {
            "source": str(entry.source),
            "source_abspath": _real(entry.source),
            "frame": entry.index,
            **result.to_dict(),
        }
        if result.ok:
            frame = result.atoms.copy()
            frame.calc = result.atoms.calc
            frame.info.update({"label": entry.label, "source": str(entry.source)})
            ase.io.write(handle, frame, format="extxyz")
            handle.flush()
            report.n_ok += 1
        else:
            report.n_failed += 1
        records[i] = record
        summary.set(entry.label, record)
        if on_result is not None:
            on_result(entry, result)

    stopped: BaseException | None = None
    try:
        with atomic_path(output) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                try:
                    evaluate(
                        [e.atoms for e in entries],
                        calculator,
                        max_atoms_per_batch=max_atoms_per_batch,
                        labels=[e.label for e in entries],
                        progress=progress,
                        on_result=done,
                    )
                except BaseException as err:  # keep what was evaluated, then re-raise
                    stopped = err
            if report.n_ok == 0:
                raise _NothingToWrite
    except _NothingToWrite:
        pass
    finally:
        report.records = [r for r in records if r is not None]
        summary.stopped_by = stopped if summary.stopped_by is None else summary.stopped_by
        summary.finish(_count(report))
    if stopped is not None:
        raise stopped
    return report


def md_paths(
    entry: StructureEntry,
    *,
    trajectory: str | os.PathLike | None = None,
    logfile: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
) -> tuple[Path, Path, Path]:
    """``(trajectory, log, final structure)`` of an MD run: ``<label>_md.traj``,
    ``<label>_md.log`` and ``<label>_md_final.extxyz`` next to the input unless given."""
    folder = entry.source.parent
    return (
        Path(trajectory) if trajectory else folder / f"{entry.label}_md.traj",
        Path(logfile) if logfile else folder / f"{entry.label}_md.log",
        Path(output) if output else folder / f"{entry.label}_md_final.extxyz",
    )


def run_md_job(
    entry: StructureEntry,
    calculator: Calculator,
    *,
    trajectory: str | os.PathLike | None = None,
    logfile: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    **md_options: Any,
) -> tuple[MDResult, tuple[Path, Path, Path]]:
    """Molecular dynamics of one structure read from a file, with its output files.

    Every output location is checked for writability before the run starts (so a bad
    ``--output`` does not fail after hours of MD), the folders are locked against a second
    run, and the final structure is written atomically at the end.

    Args:
        entry: The structure (from :func:`eqv2calc.io.load_structures`).
        calculator: Any ASE calculator (NPT needs stress).
        trajectory, logfile, output: Output files (see :func:`md_paths` for defaults).
        **md_options: Keyword arguments of :func:`eqv2calc.drivers.md.run_md`:
            ``settings`` (an :class:`~eqv2calc.drivers.md.MDSettings`), ``restart``,
            ``progress``, or single settings fields (``ensemble="npt"``...).

    Returns:
        ``(result, (trajectory, log, final structure))``.

    Raises:
        OutputNotWritableError, OutputDirLocked: before the run; whatever ``run_md`` raises.
    """
    from eqv2calc.io import output_format

    paths = md_paths(entry, trajectory=trajectory, logfile=logfile, output=output)
    for path, what in zip(paths, ("trajectory", "log file", "output file")):
        check_writable_file(path, what=what)
    output_format(paths[2])  # an output name without a known format fails now, not at the end
    with contextlib.ExitStack() as locks:
        for folder in sorted({os.path.realpath(p.parent) for p in paths}):
            locks.enter_context(lock_directory(folder, "md"))
        result = run_md(
            entry.atoms,
            calculator,
            trajectory=paths[0],
            logfile=paths[1],
            label=entry.label,
            **md_options,
        )
        write_structure(paths[2], result.atoms)
    return result, paths


def fresh_seed() -> int:
    """A random seed from the operating system's entropy (for runs given no ``--seed``)."""
    import numpy as np

    return int(np.random.SeedSequence().entropy % (2**63))


def run_md_many_job(
    entries: Sequence[StructureEntry],
    calculator: Calculator,
    settings: Any,
    *,
    temperature_K: float,
) -> tuple[list[Any], list[tuple[Path, Path, Path]]]:
    """Molecular dynamics of several structures together with the batched device engine
    (:func:`eqv2calc.engine.md.run_md_engine`), each with its own output files.

    Maxwell-Boltzmann momenta at ``temperature_K`` (K) are drawn from ``settings.seed``
    (centre-of-mass motion removed), the output locations (see :func:`md_paths`) are checked
    and locked before the run, and every final structure is written at the end.

    Args:
        entries: The structures (from :func:`eqv2calc.io.load_structures`).
        calculator: An eqv2calc calculator (or any ASE calculator, evaluated one by one).
        settings: An :class:`eqv2calc.engine.md.MDSettings`; its ``seed`` also draws the
            initial velocities.
        temperature_K: Temperature of the initial velocities, K.

    Returns:
        ``(results, paths)``: one :class:`~eqv2calc.engine.md.BatchMDResult` and one
        ``(trajectory, log, final structure)`` per structure, in input order.

    Raises:
        ValueError: two structures would share an output file; OutputNotWritableError,
            OutputDirLocked: before the run; whatever ``run_md_engine`` raises.
    """
    import numpy as np
    from ase import units

    from eqv2calc.engine.md import run_md_engine
    from eqv2calc.io import output_format

    paths = [md_paths(e) for e in entries]
    seen: dict[str, str] = {}
    for e, trio in zip(entries, paths):
        for path in trio:
            key = os.path.realpath(path)
            if key in seen:
                raise ValueError(f"{e.source} and {seen[key]} would both write {path}")
            seen[key] = str(e.source)
        for path, what in zip(trio, ("trajectory", "log file", "output file")):
            check_writable_file(path, what=what)
        output_format(trio[2])
    rng = np.random.default_rng(settings.seed)
    systems = []
    for e in entries:
        atoms = e.atoms.copy()
        m = atoms.get_masses()[:, None]  # Maxwell-Boltzmann momenta, centre of mass at rest
        p = np.sqrt(m * temperature_K * units.kB) * rng.normal(size=(len(atoms), 3))
        if len(atoms) > 1:
            p -= m * p.sum(axis=0) / m.sum()
        atoms.set_momenta(p)  # fixed atoms at rest (FixAtoms)
        systems.append(atoms)
    with contextlib.ExitStack() as locks:
        for folder in sorted({os.path.realpath(p.parent) for trio in paths for p in trio}):
            locks.enter_context(lock_directory(folder, "md"))
        results = run_md_engine(
            systems,
            calculator,
            settings,
            labels=[e.label for e in entries],
            trajectories=[p[0] for p in paths],
            logfiles=[p[1] for p in paths],
            frame_info=_engine_run_record(settings),
        )
        for r, trio in zip(results, paths):
            write_structure(trio[2], r.atoms)
    return results, paths


def _engine_run_record(settings: Any) -> dict[str, Any]:
    """The settings a batched-engine MD run stores in every trajectory frame, as single-system
    runs do (:meth:`eqv2calc.drivers.md.MDSettings.run_record`; a per-system temperature or
    friction is left out)."""
    record: dict[str, Any] = {
        "md_ensemble": settings.ensemble,
        "md_timestep_fs": float(settings.timestep_fs),
    }
    if settings.ensemble == "nvt":
        for key, value in (
            ("md_temperature_K", settings.temperature_K),
            ("md_friction_per_fs", settings.friction_per_fs),
        ):
            if np.ndim(value) == 0:
                record[key] = float(value)
        record["md_thermostat"] = "langevin"
    return record
