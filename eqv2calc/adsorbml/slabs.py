"""Slab inputs: read a slab file, detect surface atoms and fixed layers, or cut slabs from a bulk.

Conventions (as OC20): tag 0 = sub-surface slab atom, 1 = surface atom, 2 = adsorbate atom.
The surface normal is +z: the slab's a and b cell vectors must lie in the xy plane and the
adsorbate goes on the top (largest z) side. Lengths are in Å.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from eqv2calc.io import clean_label, read_structure_file

__all__ = [
    "SlabSystem",
    "SlabInputError",
    "check_slab_cell",
    "detect_surface_tags",
    "fixed_mask",
    "prepare_slab",
    "read_slab",
    "slabs_from_bulk",
]


class SlabInputError(ValueError):
    """A slab that cannot be used (with the file and what was expected)."""


@dataclass
class SlabSystem:
    """One clean slab to study.

    Attributes:
        name: short identifier (file stem, or ``<formula>_<hkl>_t<termination>``).
        atoms: the slab, tags 0/1 set and a FixAtoms constraint on the fixed atoms.
        notes: human-readable notes on what was detected or changed.
    """

    name: str
    atoms: Atoms
    notes: list[str] = field(default_factory=list)


def check_slab_cell(atoms: Atoms, source: str = "slab") -> None:
    """Raise :class:`SlabInputError` unless ``atoms`` is a slab with its normal along +z."""
    if len(atoms) == 0:
        raise SlabInputError(f"{source}: no atoms")
    cell = np.asarray(atoms.cell)
    if (
        not (atoms.pbc[0] and atoms.pbc[1])
        or np.linalg.norm(cell[0]) < 1e-6
        or np.linalg.norm(cell[1]) < 1e-6
    ):
        raise SlabInputError(
            f"{source}: a slab needs periodic a and b cell vectors (pbc={atoms.pbc.tolist()}, "
            f"cell lengths {atoms.cell.lengths().round(3).tolist()} Å)"
        )
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise SlabInputError(
            f"{source}: the cell vectors a and b must lie in the xy plane (surface normal along z); "
            f"got a_z={cell[0, 2]:.4f} Å, b_z={cell[1, 2]:.4f} Å"
        )
    if np.linalg.norm(cell[2]) < 1e-6 or cell[2, 2] <= 0:
        raise SlabInputError(
            f"{source}: the c vector must point along +z (got c={cell[2].round(3).tolist()})"
        )
    z = atoms.positions[:, 2]
    gap = cell[2, 2] - (z.max() - z.min())
    if gap < 6.0:
        raise SlabInputError(
            f"{source}: only {gap:.2f} Å of vacuum along z (slab {z.max() - z.min():.2f} Å thick in a "
            f"{cell[2, 2]:.2f} Å cell); expected a slab with at least 6 Å of vacuum"
        )


def _make_contiguous(atoms: Atoms) -> bool:
    """Translate along c so that a slab split across the periodic boundary is in one piece
    (the largest empty gap along c goes to the cell boundary). Returns True if it moved."""
    if len(atoms) < 2 or not atoms.pbc[2] or np.linalg.norm(atoms.cell[2]) < 1e-6:
        return False
    fz = np.sort(atoms.get_scaled_positions(wrap=True)[:, 2])
    gaps = np.diff(fz)
    wrap_gap = fz[0] + 1.0 - fz[-1]
    if gaps.size == 0 or gaps.max() <= wrap_gap:
        return False
    i = int(np.argmax(gaps))
    bottom = fz[i + 1]  # lowest atom above the largest gap becomes the bottom of the slab
    shift = 0.5 * gaps[i]  # keep half the gap below the slab
    frac = atoms.get_scaled_positions(wrap=True)
    frac[:, 2] = (frac[:, 2] - bottom + shift) % 1.0
    atoms.set_scaled_positions(frac)
    return True


def _neighbour_counts(atoms: Atoms, mult: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordination, neighbours above and neighbours below (|dz| > 0.1 Å) of every atom."""
    radii = covalent_radii[atoms.numbers] * mult
    i, d = neighbor_list("iD", atoms, radii, self_interaction=False)
    n = len(atoms)
    cn = np.bincount(i, minlength=n)
    above = np.bincount(i[d[:, 2] > 0.1], minlength=n)
    below = np.bincount(i[d[:, 2] < -0.1], minlength=n)
    return cn, above, below


def detect_surface_tags(atoms: Atoms, surface_depth: float | None = None) -> np.ndarray:
    """Tags (1 = surface, 0 = sub-surface) for a slab with its normal along +z.

    With ``surface_depth`` (Å), atoms within that depth of the topmost atom are surface atoms.
    Otherwise an atom in the upper half of the slab is a surface atom when it is missing
    neighbours on its vacuum side: it has fewer neighbours above it than below it, or a lower
    coordination than the best-coordinated atom of its element (neighbours: within 1.2 × the sum
    of covalent radii). This finds the exposed atoms of flat, stepped and open facets (e.g. the
    trough atoms of fcc(110) and the step-foot atoms of fcc(211)). If nothing is singled out
    (a one-layer slab), the atoms within 1.0 Å of the top are used.
    """
    z = atoms.positions[:, 2]
    if surface_depth is not None:
        if surface_depth <= 0:
            raise SlabInputError(f"--surface-depth must be > 0 Å (got {surface_depth})")
        return (z >= z.max() - surface_depth).astype(int)
    cn, above, below = _neighbour_counts(atoms)
    upper = z > 0.5 * (z.min() + z.max()) + 1e-6
    exposed = above < below
    for number in np.unique(atoms.numbers):
        same = atoms.numbers == number
        exposed |= same & (cn < cn[same].max())
    tags = (upper & exposed).astype(int)
    if not tags.any():
        tags = (z >= z.max() - 1.0).astype(int)
    return tags


def fixed_mask(atoms: Atoms, tags: np.ndarray, fix_below: float | None = None) -> np.ndarray:
    """Which slab atoms to fix: below ``fix_below`` (z in Å) if given, else every sub-surface (tag 0)
    atom, as in OC20."""
    if fix_below is not None:
        return atoms.positions[:, 2] < fix_below
    return np.asarray(tags) == 0


def prepare_slab(
    atoms: Atoms,
    name: str,
    *,
    fix_below: float | None = None,
    surface_depth: float | None = None,
    keep_tags: bool = True,
    keep_constraints: bool = True,
    source: str = "slab",
) -> SlabSystem:
    """Check a slab and give it OC20 tags and a FixAtoms constraint where they are missing.

    Tags already in the file (any atom tagged 1) are kept when ``keep_tags``; FixAtoms
    constraints already present are kept when ``keep_constraints``. ``surface_depth`` /
    ``fix_below`` force re-detection / re-fixing.
    """
    atoms = atoms.copy()
    notes: list[str] = []
    if _make_contiguous(atoms):
        notes.append("the slab crossed the cell boundary along c; moved it to be contiguous")
    check_slab_cell(atoms, source)
    tags = atoms.get_tags()
    tag_set = set(np.unique(tags).tolist())
    if 2 in tag_set and tag_set <= {0, 1, 2} and 0 in tag_set:
        raise SlabInputError(
            f"{source}: atoms {np.flatnonzero(tags == 2).tolist()[:10]} are tagged 2 (adsorbate, "
            "OC20 convention); give a clean slab"
        )
    oc20_tags = tag_set <= {0, 1}
    if keep_tags and not oc20_tags:
        notes.append(
            f"ignored tags {sorted(tag_set)[:6]} (not OC20 0/1 tags, e.g. ASE layer numbers)"
        )
    have_tags = keep_tags and oc20_tags and surface_depth is None and np.any(tags == 1)
    if have_tags:
        _check_surface_on_top(atoms, tags, source)
    if not have_tags:
        tags = detect_surface_tags(atoms, surface_depth)
        atoms.set_tags(tags)
        how = f"within {surface_depth} Å of the top" if surface_depth else "by coordination"
        notes.append(f"detected {int(tags.sum())} surface atoms ({how})")
    has_fix = any(isinstance(c, FixAtoms) for c in atoms.constraints)
    if fix_below is not None or not (keep_constraints and has_fix):
        mask = fixed_mask(atoms, tags, fix_below)
        if mask.all():
            raise SlabInputError(f"{source}: every atom would be fixed (fix_below={fix_below})")
        atoms.set_constraint(FixAtoms(mask=mask))
        rule = f"z < {fix_below} Å" if fix_below is not None else "sub-surface (tag 0)"
        notes.append(f"fixed {int(mask.sum())} of {len(atoms)} atoms ({rule})")
    warning = _fixed_top_warning(atoms)
    if warning:
        notes.append(warning)
    return SlabSystem(name=name, atoms=atoms, notes=notes)


#: how far (Å) below the topmost atom an atom still belongs to the top layer
TOP_LAYER_DEPTH = 0.5


def _check_surface_on_top(atoms: Atoms, tags: np.ndarray, source: str) -> None:
    """Refuse OC20 tags whose surface atoms (tag 1) are not at the top: adsorbates are placed on
    the top (+z) face, so tags marking the bottom face (a slab upside down, or tags from a
    code that puts the adsorbate below) would put them on atoms tagged sub-surface."""
    z = atoms.positions[:, 2]
    surface, sub = tags == 1, tags == 0
    if not sub.any():
        return
    top_surface, top_sub = float(z[surface].max()), float(z[sub].max())
    if top_surface < top_sub - TOP_LAYER_DEPTH:
        n_above = int(np.sum(sub & (z > top_surface + TOP_LAYER_DEPTH)))
        raise SlabInputError(
            f"{source}: the OC20 tags mark the bottom of the slab as its surface: the highest "
            f"surface atom (tag 1) is at z={top_surface:.2f} Å, below {n_above} sub-surface "
            f"atom(s) (tag 0) up to z={top_sub:.2f} Å; adsorbates are placed on the top face "
            "(+z). Flip the slab (z -> -z, surface on top) or fix the tags (tag 1 on the top "
            "layer), and check which atoms are fixed"
        )


def _fixed_top_warning(atoms: Atoms) -> str | None:
    """A warning when the slab's FixAtoms constraint fixes atoms of its top layer (within
    :data:`TOP_LAYER_DEPTH` of the topmost atom), where the adsorbate binds, or None."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    z = atoms.positions[:, 2]
    top = z >= z.max() - TOP_LAYER_DEPTH
    n = int(np.sum(fixed & top))
    if n == 0:
        return None
    if fixed.all():
        return (
            "warning: every slab atom is fixed (FixAtoms): only the adsorbate relaxes; the top "
            "layer cannot respond to it"
        )
    return (
        f"warning: {n} of the {int(top.sum())} top-layer atoms (within {TOP_LAYER_DEPTH} Å of "
        "the top, where adsorbates are placed) are fixed (FixAtoms); for adsorption the top "
        "layers should relax: check the constraint (or use --fix-below Z)"
    )


def read_slab(
    path: str | os.PathLike,
    *,
    fix_below: float | None = None,
    surface_depth: float | None = None,
) -> SlabSystem:
    """Read a slab file. extxyz/traj keep their tags and constraints; other formats (CIF, POSCAR,
    ...) get surface atoms detected and sub-surface atoms fixed (see :func:`prepare_slab`).

    Raises:
        FileNotFoundError: no such file.
        StructureReadError: the file cannot be read (the message names it).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"slab file {p} does not exist")
    atoms = read_structure_file(p, index=-1, what="slab file")[0]
    keeps = p.suffix.lower() in {".extxyz", ".xyz", ".traj", ".json", ".db"}
    name = clean_label(p.stem, "_.-", collapse=True, strip="", fallback="")
    return prepare_slab(
        atoms,
        name,
        fix_below=fix_below,
        surface_depth=surface_depth,
        keep_tags=keeps,
        keep_constraints=True,
        source=str(p),
    )


def slabs_from_bulk(
    path: str | os.PathLike,
    miller: tuple[int, int, int],
    *,
    min_thickness: float = 7.0,
    vacuum: float = 15.0,
    min_size: float = 8.0,
    fix_below: float | None = None,
    surface_depth: float | None = None,
    symmetric_only: bool = False,
) -> list[SlabSystem]:
    """Cut slabs from a bulk structure with pymatgen, one :class:`SlabSystem` per termination.

    Args:
        path: bulk structure file (CIF, POSCAR, extxyz, ...).
        miller: Miller index (h, k, l).
        min_thickness: minimum slab thickness (Å).
        vacuum: minimum vacuum thickness (Å).
        min_size: the slab is repeated in-plane until a and b are at least this long (Å).
        fix_below, surface_depth: as for :func:`prepare_slab`.
        symmetric_only: keep only terminations whose top and bottom are equivalent.
    """
    from pymatgen.core.surface import SlabGenerator
    from pymatgen.io.ase import AseAtomsAdaptor

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"bulk file {p} does not exist")
    if len(miller) != 3 or not any(miller):
        raise SlabInputError(f"--miller needs three integers, not all zero (got {miller})")
    bulk = read_structure_file(p, index=-1, what="bulk file")[0]
    if not bulk.pbc.all():
        raise SlabInputError(f"{p}: a bulk structure must be periodic in all three directions")
    structure = AseAtomsAdaptor.get_structure(bulk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's, via pymatgen
        gen = SlabGenerator(
            structure,
            tuple(int(m) for m in miller),
            min_slab_size=min_thickness,
            min_vacuum_size=vacuum,
            center_slab=True,
            max_normal_search=max(abs(int(m)) for m in miller),
            lll_reduce=True,
        )
        slabs = gen.get_slabs(symmetrize=False)
    if symmetric_only:
        slabs = [s for s in slabs if s.is_symmetric()]
    if not slabs:
        raise SlabInputError(f"{p}: pymatgen found no slab for Miller index {tuple(miller)}")
    hkl = "".join(str(int(m)) for m in miller)
    out: list[SlabSystem] = []
    for t, slab in enumerate(slabs):
        slab = slab.get_orthogonal_c_slab()
        atoms = AseAtomsAdaptor.get_atoms(slab)
        atoms = _to_z_normal(atoms)
        la, lb = atoms.cell.lengths()[:2]
        rep = (
            max(1, int(np.ceil(min_size / la - 1e-9))),
            max(1, int(np.ceil(min_size / lb - 1e-9))),
            1,
        )
        atoms = atoms.repeat(rep)
        atoms.wrap()
        order = np.argsort(atoms.positions[:, 2], kind="stable")
        atoms = atoms[order]
        name = f"{bulk.get_chemical_formula(empirical=True)}_{hkl}_t{t}"
        system = prepare_slab(
            atoms,
            name,
            fix_below=fix_below,
            surface_depth=surface_depth,
            keep_tags=False,
            keep_constraints=False,
            source=f"{p} ({hkl}) termination {t}",
        )
        system.notes.insert(
            0,
            f"cut from {p.name} ({hkl}), termination {t} of {len(slabs)}, repeated {rep[0]}x{rep[1]}",
        )
        out.append(system)
    return out


def _to_z_normal(atoms: Atoms) -> Atoms:
    """Rotate so that a is along x and b in the xy plane (normal along +z)."""
    cell = np.asarray(atoms.cell)
    a, b = cell[0], cell[1]
    x = a / np.linalg.norm(a)
    zn = np.cross(a, b)
    zn /= np.linalg.norm(zn)
    y = np.cross(zn, x)
    rot = np.vstack([x, y, zn])  # rows: new axes
    new = atoms.copy()
    new.set_cell(cell @ rot.T, scale_atoms=False)
    new.positions = atoms.positions @ rot.T
    c = new.cell[2]
    if c[2] < 0:
        raise SlabInputError("slab c vector points below the surface plane after reorientation")
    # make c exactly normal (pymatgen's orthogonal-c slab already is, up to rounding)
    if abs(c[0]) < 1e-4 and abs(c[1]) < 1e-4:
        cell2 = np.array(new.cell)
        cell2[2, :2] = 0.0
        cell2[0, 2] = cell2[1, 2] = 0.0
        new.set_cell(cell2, scale_atoms=False)
    return new
