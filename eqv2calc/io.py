"""Reading and writing structure files, and atomic writes of results.

Structures are read with ASE (CIF, POSCAR/CONTCAR, extxyz, .traj and everything else
:func:`ase.io.read` knows); when ASE cannot read a file, pymatgen is tried as a fallback.
Inputs may be files, directories (every structure file inside, not recursive) or glob
patterns. Every read problem becomes a :class:`StructureReadError` whose message names the
file, so a driver can report it in one line and carry on with the other inputs.

All writers are atomic: they write a temporary file in the target directory and then
``os.replace`` it, so an interrupted run never leaves a half-written result behind.
Lengths are in Å throughout.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "STRUCTURE_SUFFIXES",
    "StructureEntry",
    "StructureReadError",
    "atomic_write_text",
    "expand_inputs",
    "load_structures",
    "output_format",
    "read_structure_file",
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
    return [AseAtomsAdaptor.get_atoms(structure)]


def read_structure_file(path: str | os.PathLike) -> list[Atoms]:
    """Read all structures from one file.

    A ``.traj`` file is read as the history of one structure, so only its last frame is
    returned; other multi-frame files (extxyz, multi-block CIF) give one structure per frame.
    ASE is tried first, pymatgen second.

    Args:
        path: The file.

    Returns:
        The structures (at least one).

    Raises:
        StructureReadError: Neither ASE nor pymatgen can read the file, or it holds no frames.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise StructureReadError(f"{path}: no such file")
    index: str | int = -1 if path.suffix.lower() == ".traj" else ":"
    try:
        frames = ase.io.read(path, index=index, format=_format_from_suffix(path))
    except Exception as ase_error:
        try:
            frames = _read_with_pymatgen(path)
        except Exception:
            reason = str(ase_error).strip().splitlines()[0] if str(ase_error).strip() else ""
            reason = reason or type(ase_error).__name__
            raise StructureReadError(
                f"{path}: cannot read as a structure file ({reason})"
            ) from ase_error
    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise StructureReadError(f"{path}: file contains no structures")
    return frames


def _safe_label(text: str) -> str:
    cleaned = "".join(ch if (ch.isalnum() or ch in "-_.+") else "_" for ch in text)
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


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def write_structure(
    path: str | os.PathLike,
    images: Atoms | Sequence[Atoms],
    format: str | None = None,
) -> Path:
    """Write one structure (or several frames) atomically, format from the file name.

    Args:
        path: Output file, e.g. ``cu_relaxed.extxyz``, ``POSCAR``, ``x.cif``, ``x.traj``.
        images: The structure(s). Results of an attached calculator (energy in eV, forces in
            eV/Å, stress in eV/Å³) are written where the format supports them (extxyz, traj).
        format: ASE format name; guessed from ``path`` when None.

    Returns:
        The path written.
    """
    import ase.io

    path = Path(path)
    fmt = format or output_format(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        ase.io.write(tmp, images, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
