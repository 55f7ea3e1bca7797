"""Checks on input structures before any model call, with one-line, specific errors.

A driver validates every structure first, so that a bad one (empty, NaN coordinates,
overlapping atoms, cell relaxation of a molecule, ...) is reported by name and the others in
the same run still go ahead.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from eqv2calc.drivers.batching import supports_stress
from eqv2calc.io import calculator_label

__all__ = ["MIN_DISTANCE", "StructureError", "check_stress_support", "validate_structure"]

#: Two atoms closer than this (Å) are reported as overlapping.
MIN_DISTANCE = 0.5


class StructureError(ValueError):
    """A structure cannot be used as given; the message says what is wrong and where."""


def _closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    a, b = sorted((int(i[k]), int(j[k])))
    return a, b, float(d[k])


def validate_structure(
    atoms: Atoms,
    *,
    min_distance: float = MIN_DISTANCE,
    relax_cell: bool = False,
    label: str | None = None,
) -> None:
    """Raise :class:`StructureError` if ``atoms`` cannot be relaxed/evaluated as given.

    Checks, in order: at least one atom; finite positions and cell; a periodic direction has
    a non-zero cell vector; for ``relax_cell`` the structure is periodic in all three
    directions with a non-singular cell; no two atoms (periodic images included) closer than
    ``min_distance`` Å (the closest pair is named).

    Args:
        atoms: The structure.
        min_distance: Overlap threshold in Å.
        relax_cell: Whether the cell will be relaxed (or varied, as in NPT).
        label: Name used at the start of the message (e.g. the file); none when None.
    """
    prefix = f"{label}: " if label else ""
    n = len(atoms)
    if n == 0:
        raise StructureError(f"{prefix}structure is empty (0 atoms)")
    positions = atoms.get_positions()
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        idx = int(bad[0])
        raise StructureError(
            f"{prefix}atom {idx} ({atoms[idx].symbol}) has a non-finite position "
            f"{positions[idx].tolist()}" + (f" ({bad.size} atoms in total)" if bad.size > 1 else "")
        )
    cell = np.asarray(atoms.cell)
    if not np.isfinite(cell).all():
        raise StructureError(f"{prefix}cell has non-finite entries: {cell.tolist()}")
    lengths = np.linalg.norm(cell, axis=1)
    for axis in range(3):
        if atoms.pbc[axis] and lengths[axis] < 1e-8:
            raise StructureError(
                f"{prefix}periodic along {'abc'[axis]} but cell vector {'abc'[axis]} is zero"
            )
    if relax_cell:
        if not np.all(atoms.pbc):
            raise StructureError(
                f"{prefix}cell relaxation needs a structure periodic in all three directions "
                f"(pbc={atoms.pbc.tolist()})"
            )
        if abs(np.linalg.det(cell)) < 1e-8:
            raise StructureError(f"{prefix}cell has zero volume; cannot relax it")
    if n > 1:
        pair = _closest_pair(atoms, min_distance)
        if pair is not None:
            a, b, d = pair
            raise StructureError(
                f"{prefix}atoms {a} ({atoms[a].symbol}) and {b} ({atoms[b].symbol}) overlap: "
                f"{d:.3f} Å apart (minimum {min_distance} Å)"
            )


def check_stress_support(calc: Calculator, what: str = "cell relaxation") -> None:
    """Raise ``ValueError`` unless ``calc`` can give a stress (needed for ``what``)."""
    if not supports_stress(calc):
        name = calculator_label(calc)
        props = ", ".join(getattr(calc, "implemented_properties", ())) or "none"
        raise ValueError(
            f"{what} needs the stress, but {name} has no stress head "
            f"(implemented properties: {props}); use a model with stress, e.g. an OMat/MP "
            "hydra checkpoint"
        )
