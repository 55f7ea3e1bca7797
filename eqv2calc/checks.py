"""Checks on structures and results shared by the calculator, the drivers and the CLI.

One validation path: :class:`~eqv2calc.calculator.EquiformerV2Calculator` (the API) and the
drivers behind every command call the same functions here, so a structure the command line
rejects is rejected through the API too, with the same one-line message.

* :func:`as_atoms` turns pymatgen ``Structure``/``Molecule`` objects into ``ase.Atoms``
  (partially occupied sites are refused, naming the site).
* :func:`check_structure` rejects structures that cannot give a meaningful number: no atoms,
  non-finite positions or cell, a periodic direction without a cell vector, a degenerate
  periodic cell, atomic numbers the model does not cover, and two atoms (periodic images
  included, so also an atom and its own image in a tiny cell) closer than ``min_distance``.
* :func:`check_finite_results` rejects NaN/inf energies, forces and stresses.
* :func:`validate_structure` is what a driver (or the batched engine) checks first, so that a
  bad structure is reported by name and the others in the same run still go ahead: the checks
  above, plus what a cell relaxation (or NPT) needs; :func:`check_stress_support` refuses a
  calculator without stress for those.

Lengths in Å, energies in eV, forces in eV/Å, stress in eV/Å³.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from eqv2calc.batching import supports_stress
from eqv2calc.io import calculator_label

__all__ = [
    "MIN_DISTANCE",
    "NonFiniteResultError",
    "StructureError",
    "as_atoms",
    "check_finite_results",
    "check_stress_support",
    "check_structure",
    "closest_pair",
    "shortest_lattice_vector",
    "validate_structure",
]

#: Two atoms (or an atom and a periodic image) closer than this (Å) are reported as overlapping.
MIN_DISTANCE = 0.5


class StructureError(ValueError):
    """A structure cannot be used as given; the message says what is wrong and where."""


class NonFiniteResultError(FloatingPointError):
    """A calculator returned NaN or infinite energies, forces or stresses."""


def _prefix(label: str | None) -> str:
    return f"{label}: " if label else ""


def as_atoms(obj: Any, label: str | None = None) -> Atoms:
    """``obj`` as ``ase.Atoms``: Atoms are returned as they are; a pymatgen ``Structure`` or
    ``Molecule`` is converted with :mod:`pymatgen.io.ase`.

    Raises:
        StructureError: A site is partially occupied or holds several species (the model
            needs one element per site); the message names the site.
        TypeError: ``obj`` is neither.
    """
    if isinstance(obj, Atoms):
        return obj
    module = type(obj).__module__ or ""
    if module.startswith("pymatgen") and hasattr(obj, "sites"):
        for i, site in enumerate(obj.sites):
            if not site.is_ordered:
                raise StructureError(
                    f"{_prefix(label)}site {i} is disordered or partially occupied "
                    f"({site.species}); choose one element per site (e.g. pymatgen's "
                    "OrderDisorderedStructureTransformation) before evaluating"
                )
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_atoms(obj)
    raise TypeError(
        f"{_prefix(label)}expected an ase.Atoms or a pymatgen Structure/Molecule, "
        f"got {type(obj).__name__}"
    )


def _periodic_vectors(atoms: Atoms) -> np.ndarray:
    return np.asarray(atoms.cell)[np.asarray(atoms.pbc, dtype=bool)]


def shortest_lattice_vector(atoms: Atoms) -> float | None:
    """Length (Å) of the shortest non-zero lattice vector along the periodic directions: the
    distance between an atom and its nearest own image. None when nothing is periodic."""
    from ase.geometry.minkowski_reduction import minkowski_reduce

    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return None
    reduced, _ = minkowski_reduce(np.asarray(atoms.cell), pbc=pbc)
    return float(np.linalg.norm(reduced[pbc], axis=1).min())


def closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms (periodic images included) nearer than ``cutoff`` Å, as
    ``(i, j, distance)`` with ``i <= j``, or None (see :func:`eqv2calc.graph.closest_pair`)."""
    from eqv2calc.graph import closest_pair as graph_closest_pair

    return graph_closest_pair(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)


def _check_cell(atoms: Atoms, prefix: str) -> None:
    cell = np.asarray(atoms.cell)
    if not np.isfinite(cell).all():
        raise StructureError(f"{prefix}cell has non-finite entries: {cell.tolist()}")
    lengths = np.linalg.norm(cell, axis=1)
    for axis in range(3):
        if atoms.pbc[axis] and lengths[axis] < 1e-8:
            raise StructureError(
                f"{prefix}periodic along {'abc'[axis]} but cell vector {'abc'[axis]} is zero"
            )
    periodic = _periodic_vectors(atoms)
    if len(periodic) > 1:
        gram = periodic @ periodic.T
        volume = float(np.sqrt(max(np.linalg.det(gram), 0.0)))
        if volume < 1e-6 * float(np.prod(np.linalg.norm(periodic, axis=1))):
            names = "".join("abc"[k] for k in range(3) if atoms.pbc[k])
            raise StructureError(
                f"{prefix}the periodic cell vectors {', '.join(names)} are linearly dependent "
                "(degenerate cell)"
            )


def check_structure(
    atoms: Atoms,
    *,
    min_distance: float = MIN_DISTANCE,
    max_atomic_number: int | None = None,
    label: str | None = None,
) -> None:
    """Raise :class:`StructureError` if ``atoms`` cannot give a meaningful result.

    Checks, in order: at least one atom; atomic numbers within ``1..max_atomic_number``
    (when given); finite positions and cell; every periodic direction has a non-zero cell
    vector and the periodic vectors are independent; an atom and its own nearest periodic
    image are at least ``min_distance`` Å apart (checked on the reduced cell before any
    neighbour search, so a 0.05 Å cell fails at once instead of exhausting memory); no two
    atoms (periodic images included) closer than ``min_distance`` Å (the closest pair is
    named).

    Args:
        atoms: The structure.
        min_distance: Overlap threshold in Å (0 disables the distance checks).
        max_atomic_number: Largest element the model covers (None: no check).
        label: Name used at the start of the message (e.g. the file); none when None.
    """
    prefix = _prefix(label)
    n = len(atoms)
    if n == 0:
        raise StructureError(f"{prefix}structure is empty (no atoms)")
    numbers = atoms.numbers
    hi = max_atomic_number if max_atomic_number is not None else 10**9
    bad = np.flatnonzero((numbers < 1) | (numbers > hi))
    if bad.size:
        i = int(bad[0])
        symbol = atoms.get_chemical_symbols()[i] if 0 <= numbers[i] < 119 else "?"
        covered = f"Z = 1..{max_atomic_number}" if max_atomic_number is not None else "Z >= 1"
        raise StructureError(
            f"{prefix}atom {i} has atomic number {numbers[i]} ({symbol}), "
            f"but this model covers {covered}"
        )
    positions = atoms.get_positions()
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        idx = int(bad[0])
        raise StructureError(
            f"{prefix}atom {idx} ({atoms[idx].symbol}) has a non-finite position "
            f"{positions[idx].tolist()}" + (f" ({bad.size} atoms in total)" if bad.size > 1 else "")
        )
    _check_cell(atoms, prefix)
    if min_distance <= 0:
        return
    shortest = shortest_lattice_vector(atoms)
    if shortest is not None and shortest < min_distance:
        raise StructureError(
            f"{prefix}the cell is too small: each atom is {shortest:.3f} Å from its own "
            f"periodic image (minimum {min_distance} Å); check the cell and its units (Å)"
        )
    pair = closest_pair(atoms, min_distance)
    if pair is not None:
        a, b, d = pair
        if a == b:
            what = f"atom {a} ({atoms[a].symbol}) and its periodic image"
        else:
            what = f"atoms {a} ({atoms[a].symbol}) and {b} ({atoms[b].symbol})"
        raise StructureError(f"{prefix}{what} overlap: {d:.3f} Å apart (minimum {min_distance} Å)")


def check_finite_results(
    energy: float,
    forces: np.ndarray,
    stress: np.ndarray | None = None,
    label: str | None = None,
) -> None:
    """Raise :class:`NonFiniteResultError` if the energy (eV), forces (eV/Å) or stress
    (eV/Å³) hold NaN or infinity; the message names the first atom with a bad force."""
    prefix = _prefix(label)
    if not np.isfinite(energy):
        raise NonFiniteResultError(
            f"{prefix}the calculator returned a non-finite energy ({energy}); "
            "the model or its checkpoint is broken"
        )
    forces = np.asarray(forces)
    if not np.isfinite(forces).all():
        atom = int(np.flatnonzero(~np.isfinite(forces.reshape(len(forces), -1)).all(axis=1))[0])
        raise NonFiniteResultError(
            f"{prefix}the calculator returned non-finite forces (first on atom {atom})"
        )
    if stress is not None and not np.isfinite(np.asarray(stress)).all():
        raise NonFiniteResultError(f"{prefix}the calculator returned a non-finite stress")


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
