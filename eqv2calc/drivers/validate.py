"""Checks on input structures before any model call, with one-line, specific errors.

A driver validates every structure first, so that a bad one (empty, NaN coordinates,
overlapping atoms, cell relaxation of a molecule, ...) is reported by name and the others in
the same run still go ahead.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from eqv2calc.checks import MIN_DISTANCE, StructureError, check_structure
from eqv2calc.drivers.batching import supports_stress
from eqv2calc.io import calculator_label

__all__ = ["MIN_DISTANCE", "StructureError", "check_stress_support", "validate_structure"]


def validate_structure(
    atoms: Atoms,
    *,
    min_distance: float = MIN_DISTANCE,
    relax_cell: bool = False,
    label: str | None = None,
    cell_what: str = "cell relaxation",
) -> None:
    """Raise :class:`StructureError` if ``atoms`` cannot be relaxed/evaluated as given.

    The checks of :func:`eqv2calc.checks.check_structure` (the same the calculator applies:
    at least one atom; finite positions and cell; a periodic direction has a non-zero cell
    vector; no atom closer than ``min_distance`` Å to another atom or to its own periodic
    image, the closest pair named), and for ``relax_cell`` a structure periodic in all three
    directions with a non-singular cell.

    Args:
        atoms: The structure.
        min_distance: Overlap threshold in Å.
        relax_cell: Whether the cell will be relaxed (or varied, as in NPT).
        label: Name used at the start of the message (e.g. the file); none when None.
        cell_what: What varies the cell, for the message (``"NPT molecular dynamics"``).
    """
    prefix = f"{label}: " if label else ""
    if relax_cell and len(atoms) and not np.all(atoms.pbc):
        raise StructureError(
            f"{prefix}{cell_what} needs a structure periodic in all three directions "
            f"(pbc={atoms.pbc.tolist()})"
        )
    check_structure(atoms, min_distance=min_distance, label=label)
    if relax_cell and abs(np.linalg.det(np.asarray(atoms.cell))) < 1e-8:
        raise StructureError(f"{prefix}cell has zero volume; {cell_what} is not possible")


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
