"""Reading and writing structure files, and atomic writes of results.

Structures are read with ASE (CIF, POSCAR/CONTCAR, extxyz, .traj and everything else
:func:`ase.io.read` knows); when ASE cannot read a file, pymatgen is tried as a fallback.
Inputs may be files, directories (every structure file inside, not recursive) or glob
patterns. Every read problem becomes a :class:`StructureReadError` whose message names the
file, so a driver can report it in one line and carry on with the other inputs.

All writers are atomic: they write a temporary file in the target directory and then
``os.replace`` it, so an interrupted run never leaves a half-written result behind. Files are
created with the permissions the umask allows (``0666 & ~umask``), as any ordinary file, so a
group on a shared cluster can read them. :func:`lock_directory` keeps two runs from writing
into one output folder at once, and :func:`check_writable_dir` finds an unusable output
folder before any work starts. Lengths are in Å throughout.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import glob
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "LOCK_FILE_NAME",
    "STRUCTURE_SUFFIXES",
    "OutputDirLocked",
    "OutputNotWritableError",
    "StructureEntry",
    "StructureReadError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_dir",
    "check_writable_file",
    "lock_directory",
    "expand_inputs",
    "load_structures",
    "output_format",
    "read_structure_file",
    "clean_label",
    "calculator_label",
    "default_file_mode",
    "write_json_atomic",
    "write_structure",
]

#: File suffixes picked up when a directory is given as input.
STRUCTURE_SUFFIXES = frozenset(
    {".cif", ".xyz", ".extxyz", ".traj", ".vasp", ".poscar", ".pdb", ".xsf", ".cell", ".res"}
)
#: File name prefixes (VASP style, no suffix needed) picked up from directories.
_VASP_PREFIXES = ("POSCAR", "CONTCAR")
#: Name endings of files this package writes; skipped when scanning a directory so that
#: running a command twice on the same directory does not pick up its own outputs.
OUTPUT_STEM_MARKERS = ("_relaxed", "_md_final")
OUTPUT_TRAJ_MARKERS = ("_relax", "_md")


class StructureReadError(ValueError):
    """A structure file could not be read; the message names the file and the reason."""


@dataclass
class StructureEntry:
    """One structure from an input file.

    Attributes:
        label: Unique, file-system-safe name for the structure (used for output names).
        source: The file it was read from.
        index: Frame index within the file, or None for a single-structure file.
        atoms: The structure (constraints from extxyz/traj inputs are kept).
    """

    label: str
    source: Path
    index: int | None
    atoms: Atoms


def _has_glob_chars(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_structure_file(path: Path) -> bool:
    name, stem, suffix = path.name, path.stem, path.suffix.lower()
    if name.startswith("."):
        return False
    if stem.endswith(OUTPUT_STEM_MARKERS):
        return False
    if suffix == ".traj" and stem.endswith(OUTPUT_TRAJ_MARKERS):
        return False
    if suffix in STRUCTURE_SUFFIXES:
        return True
    # POSCAR, CONTCAR, POSCAR_x, CONTCAR.3 ... but not POSCAR_x.log or CONTCAR.json
    return name.upper().startswith(_VASP_PREFIXES) and (suffix == "" or suffix[1:].isdigit())


def _scan_directory(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and _is_structure_file(p))


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Turn files, directories and glob patterns into a list of files.

    Args:
        inputs: Paths as given on the command line. A directory contributes every structure
            file directly inside it (see :data:`STRUCTURE_SUFFIXES`). A string with
            ``*``, ``?`` or ``[`` that is not an existing path is expanded as a glob. This
            package's own outputs (``*_relaxed.*``, ``*_md_final.*``, ``*_relax.traj``,
            ``*_md.traj``) are skipped in directories.

    Returns:
        Files in the order given (directory and glob contents sorted), without duplicates.

    Raises:
        StructureReadError: An input does not exist, a glob matches nothing, or a directory
            holds no structure files.
    """
    files: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found = _scan_directory(path)
            if not found:
                raise StructureReadError(f"{text}: directory contains no structure files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif _has_glob_chars(text):
            matches = sorted(Path(m) for m in glob.glob(text))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise StructureReadError(f"{text}: no files match this pattern")
            files.extend(matches)
        else:
            raise StructureReadError(f"{text}: no such file or directory")
    unique: list[Path] = []
    seen: set[Path] = set()
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _format_from_suffix(path: Path) -> str | None:
    """ASE format named by the file's extension, or None to let ASE guess.

    ASE matches names such as ``*POSCAR*`` before extensions, so ``POSCAR_relaxed.extxyz``
    would be taken for a VASP file; the extension wins here.
    """
    from ase.io.formats import extension2format, ioformats

    ext = path.suffix.lower().lstrip(".")
    if not ext:
        return None
    if ext in extension2format:
        return extension2format[ext].name
    if ext in ioformats:
        return ext
    return None


#: Name fragments that make ASE guess a format from the name alone (``*POSCAR*`` -> vasp).
_NAME_TRIGGERS = ("POSCAR", "CONTCAR", "CENTCAR", "OUTCAR", "XDATCAR", "CONFIG")


def _read_with_pymatgen(path: Path) -> list[Atoms]:
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = Structure.from_file(str(path))
    for i, site in enumerate(structure.sites):
        if not site.is_ordered:
            raise StructureReadError(
                f"{path}: site {i} is partially occupied ({site.species}); {_ORDER_HINT}"
            )
    return [AseAtomsAdaptor.get_atoms(structure)]


_ORDER_HINT = (
    "the model needs one element per site: order the structure first (e.g. with pymatgen's "
    "OrderDisorderedStructureTransformation)"
)


def _check_occupancy(path: Path, frame: int | None, atoms: Atoms) -> None:
    """Refuse a CIF site that is partially occupied or shared by several elements (ASE keeps
    one species there and records the occupancies in ``atoms.info["occupancy"]``)."""
    occupancy = atoms.info.get("occupancy")
    if not isinstance(occupancy, dict):
        return
    kinds = atoms.arrays.get("spacegroup_kinds")
    for kind, species in occupancy.items():
        if not isinstance(species, dict):
            continue
        total = sum(float(v) for v in species.values())
        if len(species) == 1 and abs(total - 1.0) < 1e-3:
            continue
        index = None
        if kinds is not None:
            hits = np.flatnonzero(np.asarray(kinds).astype(str) == str(kind))
            index = int(hits[0]) if hits.size else None
        where = f"{path}" + (f", frame {frame}" if frame is not None else "")
        site = f"site {index}" if index is not None else f"site kind {kind}"
        if index is not None:
            frac = ", ".join(f"{x:.4g}" for x in atoms.get_scaled_positions(wrap=False)[index])
            site += f" at fractional ({frac})"
        shares = ", ".join(f"{el} {float(occ):g}" for el, occ in species.items())
        raise StructureReadError(f"{where}: {site} is partially occupied ({shares}); {_ORDER_HINT}")


def _locate_bad_frame(path: Path, fmt: str | None) -> int | None:
    """Index of the first frame ASE cannot read in a multi-frame file (None if not found)."""
    import ase.io

    count = 0
    try:
        for _ in ase.io.iread(path, index=":", format=fmt):
            count += 1
    except Exception:
        return count
    return None


def _read_failure_reason(error: Exception) -> str:
    """One line saying why ASE could not read a file (an unknown element named as such)."""
    from ase.data import atomic_numbers

    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        key = error.args[0]
        if key.isalpha() and len(key) <= 3 and key not in atomic_numbers:
            return f"unknown element symbol {key!r}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_structure_file(
    path: str | os.PathLike,
    index: str | int | None = None,
    *,
    what: str = "structure file",
) -> list[Atoms]:
    """Read structures from one file: the one reader every command uses.

    By default a ``.traj`` file is read as the history of one structure, so only its last
    frame is returned; other multi-frame files (extxyz, multi-block CIF) give one structure per
    frame. ASE is tried first, pymatgen second (single-structure formats only).

    Args:
        path: The file.
        index: ASE frame selection: ``":"`` for every frame, ``-1`` for the last, ``0``...;
            None for the default described above.
        what: How messages call the file (``"slab file"``, ``"adsorbate file"``...).

    Returns:
        The structures (at least one).

    Raises:
        StructureReadError: The file does not exist, neither ASE nor pymatgen can read it, or
            it holds no frames. The message names the file and, where a multi-frame file
            breaks part way, the first frame that cannot be read.
    """
    import ase.io

    path = Path(path)
    if not path.exists():
        raise StructureReadError(f"{what} {path} does not exist")
    if not path.is_file():
        raise StructureReadError(f"{what} {path} is not a file")
    if index is None:
        index = -1 if path.suffix.lower() == ".traj" else ":"
    fmt = _format_from_suffix(path)
    try:
        frames = ase.io.read(path, index=index, format=fmt)
    except Exception as ase_error:
        try:
            frames = _read_with_pymatgen(path)
        except Exception:
            reason = _read_failure_reason(ase_error)
            where = ""
            if index == ":":
                bad = _locate_bad_frame(path, fmt)
                where = f", frame {bad}" if bad else ""
            raise StructureReadError(
                f"{path}{where}: cannot read as a structure file ({reason})"
            ) from ase_error
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise StructureReadError(f"{path}: file contains no structures")
    for i, atoms in enumerate(frames):
        _check_occupancy(path, i if len(frames) > 1 else None, atoms)
    return frames


def _safe_label(text: str) -> str:
    cleaned = clean_label(text, "-_.+", strip="", fallback="")
    # Output names built from the label (``<label>_relaxed.extxyz``) must not contain
    # fragments that make ASE ignore the extension, so POSCAR becomes poscar.
    for token in _NAME_TRIGGERS:
        cleaned = cleaned.replace(token, token.lower())
    return cleaned.strip(".") or "structure"


def load_structures(
    inputs: Iterable[str | os.PathLike],
) -> tuple[list[StructureEntry], list[StructureReadError]]:
    """Read every structure from files, directories and globs, collecting errors.

    Args:
        inputs: As for :func:`expand_inputs`.

    Returns:
        ``(entries, errors)``: the structures read (labels unique; a multi-frame file ``x``
        gives ``x_0``, ``x_1``, ...; clashing names are made unique with the parent folder
        name and then a counter; ``POSCAR``/``CONTCAR`` in names become lower case so that
        output files named after the label are not taken for VASP files by ASE) and one :class:`StructureReadError` per input that failed.
        Errors come in input order. One bad file does not stop the others from being read.
    """
    entries: list[StructureEntry] = []
    errors: list[StructureReadError] = []
    seen_files: set[Path] = set()
    used: set[str] = set()
    for item in inputs:
        try:
            files = expand_inputs([item])
        except StructureReadError as err:
            errors.append(err)
            continue
        for path in files:
            if path.resolve() in seen_files:
                continue
            seen_files.add(path.resolve())
            try:
                frames = read_structure_file(path)
            except StructureReadError as err:
                errors.append(err)
                continue
            base = _safe_label(path.stem if path.suffix else path.name)
            for i, atoms in enumerate(frames):
                index = i if len(frames) > 1 else None
                label = base if index is None else f"{base}_{i}"
                if label in used:
                    label = _safe_label(f"{path.resolve().parent.name}_{label}")
                stem, counter = label, 2
                while label in used:
                    label = f"{stem}_{counter}"
                    counter += 1
                used.add(label)
                entries.append(StructureEntry(label=label, source=path, index=index, atoms=atoms))
    return entries, errors


def output_format(path: str | os.PathLike) -> str:
    """ASE format name for writing ``path``, guessed from its name (``POSCAR``, ``x.cif``...)."""
    from ase.io.formats import filetype, ioformats

    fmt = _format_from_suffix(Path(path))
    if fmt is None:
        try:
            fmt = filetype(Path(path).name, read=False)
        except Exception:
            fmt = None
    if fmt not in ioformats or not ioformats[fmt].can_write:
        raise ValueError(
            f"{path}: cannot tell a writable output format from the file name "
            "(use an extension such as .extxyz, .cif, .traj, .vasp)"
        )
    return fmt


def _current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """Permissions of a newly created ordinary file: ``0o666 & ~umask``."""
    return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, durable: bool = False, tmp_suffix: str | None = None
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``ase.io.write``, ``savefig``). The
    temporary name keeps the target's extension (``.x.png.<random>.tmp.png``), so writers
    that guess a format from the name still work, and starts with a dot, so folder scans
    skip it. The parent folder is created if needed. The file gets the permissions the umask
    allows (``0o666 & ~umask``), not ``mkstemp``'s 0600. On any exception (Ctrl-C included)
    the temporary file is removed and ``path`` is left as it was.

    Args:
        path: The final file.
        durable: ``fsync`` the file before the rename (for large downloads).
        tmp_suffix: End of the temporary name (default ``.tmp`` + the target's extension).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=tmp_suffix if tmp_suffix is not None else f".tmp{path.suffix}",
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``), umask honoured."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, umask honoured."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically; numpy scalars/arrays and paths are allowed.

    Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON dialect).
    """
    text = json.dumps(data, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def write_structure(
    path: str | os.PathLike,
    images: Atoms | Sequence[Atoms],
    format: str | None = None,
    **kwargs: Any,
) -> Path:
    """Write one structure (or several frames) atomically, format from the file name.

    Args:
        path: Output file, e.g. ``cu_relaxed.extxyz``, ``POSCAR``, ``x.cif``, ``x.traj``.
        images: The structure(s). Results of an attached calculator (energy in eV, forces in
            eV/Å, stress in eV/Å³) are written where the format supports them (extxyz, traj).
        format: ASE format name; guessed from ``path`` when None.
        **kwargs: Passed to :func:`ase.io.write` (e.g. ``direct=True`` for VASP).

    Returns:
        The path written.
    """
    import ase.io

    path = Path(path)
    fmt = format or output_format(path)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, images, format=fmt, **kwargs)
    return path


# ----------------------------------------------------------------------------------------------
# output folders: writability check and a lock against concurrent runs
# ----------------------------------------------------------------------------------------------


class OutputNotWritableError(OSError):
    """An output folder or file cannot be written; the message names the path and why."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "output not writable"


def _first_existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _folder_problem(path: Path) -> str | None:
    """Why files cannot be created in the folder ``path`` (creating it if needed), or None."""
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    if not path.exists():
        ancestor = _first_existing_ancestor(path.parent)
        if ancestor.exists() and not ancestor.is_dir():
            return f"cannot be created, {ancestor} is a file, not a folder"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return f"cannot be created ({err.strerror or type(err).__name__})"
    try:
        fd, probe = tempfile.mkstemp(prefix=".eqv2calc-write-test.", dir=path)
    except OSError as err:
        return f"cannot write files there ({err.strerror or type(err).__name__})"
    os.close(fd)
    Path(probe).unlink(missing_ok=True)
    return None


def check_writable_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Make sure ``path`` is a folder this process can create files in (creating it if needed).

    Called before a run starts, so a bad ``--output-dir`` fails at once, not after hours.

    Args:
        path: The folder.
        what: How the message calls the folder (e.g. ``"--output-dir"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputNotWritableError: ``path`` (or a parent) is a file, the folder cannot be
            created, or no file can be created in it (read-only folder or file system).
    """
    path = Path(path)
    problem = _folder_problem(path)
    if problem:
        raise OutputNotWritableError(f"{what} {path}: {problem}")
    return path


def check_writable_file(path: str | os.PathLike, *, what: str = "output file") -> Path:
    """Make sure the file ``path`` can be written (its folder is created if needed).

    Raises:
        OutputNotWritableError: ``path`` is a folder, or its folder cannot be created or
            written; the message names the file and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputNotWritableError(f"{what} {path}: is a folder, not a file")
    folder = path.parent if str(path.parent) else Path(".")
    problem = _folder_problem(folder)
    if problem:
        raise OutputNotWritableError(
            f"{what} {path} cannot be written (folder {folder}: {problem})"
        )
    return path


#: Name of the lock file :func:`lock_directory` keeps inside a locked folder.
LOCK_FILE_NAME = ".eqv2calc.lock"


class OutputDirLocked(RuntimeError):
    """Another process is writing into the output folder; the message names it."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None):
        super().__init__(message)
        self.holder = holder or {}


# Folders this process holds, with a nesting count (a job inside a job may lock again).
_HELD: dict[str, list[Any]] = {}
_HELD_GUARD = threading.Lock()


def _describe_holder(info: dict[str, Any]) -> str:
    if not info:
        return "another process (no details recorded yet)"
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("command"):
        parts.append(f"running {info['command']!r}")
    if info.get("purpose"):
        parts.append(f"({info['purpose']})")
    if info.get("started"):
        parts.append(f"since {info['started']}")
    return " ".join(parts)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


@contextlib.contextmanager
def lock_directory(path: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder for the duration of a run.

    The lock is an ``fcntl.flock`` on ``<path>/.eqv2calc.lock``, which records the holder's
    pid, host, command line, purpose and start time (UTC). The kernel releases it when the
    process ends, however it ends (Ctrl-C, SIGKILL, power loss of the node), so a stale lock
    file never blocks a later run. The folder is created if needed. Locking a folder this
    process already holds nests.

    Args:
        path: The output folder.
        purpose: What the run does, e.g. ``"relax"`` (shown to a second run).

    Yields:
        The folder as a :class:`~pathlib.Path`.

    Raises:
        OutputDirLocked: Another process holds the lock; the message names it.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield folder
        finally:
            with _HELD_GUARD:
                _HELD[key][1] -= 1
        return
    lock_path = folder / LOCK_FILE_NAME
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, default_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            info = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputDirLocked(
                f"output folder {folder} is in use by {_describe_holder(info)}; wait for it "
                "to finish or choose another output folder",
                holder=info,
            ) from None
        # The holder before us may have removed the file after we opened it: then our lock is
        # on a deleted file, and we must lock the file that is there now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "purpose": purpose,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    with _HELD_GUARD:
        _HELD[key] = [fd, 0]
    try:
        yield folder
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        with contextlib.suppress(OSError):
            lock_path.unlink()  # removed while still locked, so no one else holds this file
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------------


def clean_label(
    text: str,
    keep: str = "-_.+",
    *,
    collapse: bool = False,
    strip: str = ".",
    fallback: str = "structure",
) -> str:
    """A file-system-safe name: letters, digits and the characters in ``keep`` stay, every
    other character (or, with ``collapse``, every run of them) becomes ``_``; the characters in
    ``strip`` are then stripped from both ends and an empty result becomes ``fallback``."""
    out: list[str] = []
    for ch in text:
        if ch.isalnum() or ch in keep:
            out.append(ch)
        elif not (collapse and out and out[-1] == "\0"):
            out.append("\0")
    return "".join(out).replace("\0", "_").strip(strip) or fallback


def calculator_label(calc: Any) -> str:
    """Which calculator this is: ``calc.model_label`` for eqv2calc calculators, else the class
    name (``EMT``, ``Vasp``...)."""
    return str(getattr(calc, "model_label", None) or type(calc).__name__)
