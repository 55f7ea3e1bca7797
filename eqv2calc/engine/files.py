"""Per-structure names and output files of a batched run (relaxation or MD)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ase import Atoms

__all__ = ["default_labels", "output_paths", "start_fresh"]


def default_labels(atoms_list: Sequence[Atoms], labels: Sequence[str] | None) -> list[str]:
    """``labels`` as a list, or ``<formula>_<index>`` for each structure when None."""
    if labels is not None:
        return list(labels)
    return [f"{a.get_chemical_formula()}_{i}" for i, a in enumerate(atoms_list)]


def output_paths(paths: Sequence[str | os.PathLike | None] | None, n: int) -> list[Path | None]:
    """One path (or None: no file) per structure; ``paths`` None means no files at all."""
    return [Path(p) if p else None for p in (paths or [None] * n)]


def start_fresh(paths: Sequence[Path | None]) -> None:
    """Create the folders of ``paths`` and remove earlier files there (None entries skipped)."""
    for path in paths:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
