"""Merge relaxed configurations that ended in the same minimum.

Two relaxed adslabs are duplicates when their energies agree within ``energy_tol`` (eV) and
their adsorbates sit at the same place: some symmetry operation of the clean slab (including
the pure translations of a supercell) followed by a lattice translation maps every adsorbate
atom of one onto an atom of the same element of the other within ``position_tol`` (Å). For a
single-atom adsorbate that is "same binding site modulo the surface lattice and symmetry";
for molecules it also requires the same orientation (up to permutations of equal atoms).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from ase import Atoms

__all__ = ["deduplicate", "slab_symmetry_ops"]


def slab_symmetry_ops(slab: Atoms, symprec: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetry operations (rotations (n,3,3), translations (n,3), fractional coordinates) of
    ``slab`` found by spglib at ``symprec`` Å; identity only if spglib finds nothing."""
    try:
        import spglib

        cell = (np.asarray(slab.cell), slab.get_scaled_positions(wrap=True), slab.numbers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sym = spglib.get_symmetry(cell, symprec=symprec)
    except Exception:  # noqa: BLE001 - symmetry is an optimisation, identity is always valid
        sym = None
    if not sym or len(sym["rotations"]) == 0:
        return np.eye(3)[None, :, :].astype(float), np.zeros((1, 3))
    return np.asarray(sym["rotations"], dtype=float), np.asarray(sym["translations"], dtype=float)


def _same_place(
    frac_a: np.ndarray,
    frac_b: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    rots: np.ndarray,
    trans: np.ndarray,
    tol: float,
) -> bool:
    # images of a under every op: (n_ops, n_ads, 3)
    images = np.einsum("oij,aj->oai", rots, frac_a) + trans[:, None, :]
    for img in images:
        ok = True
        for k in range(len(img)):
            same = numbers == numbers[k]
            diff = frac_b[same] - img[k]
            diff -= np.round(diff)
            dist = np.linalg.norm(diff @ cell, axis=1)
            if dist.min() > tol:
                ok = False
                break
        if ok:
            return True
    return False


def deduplicate(
    structures: Sequence[Atoms],
    energies: Sequence[float],
    n_slab: int,
    clean_slab: Atoms | None = None,
    *,
    position_tol: float = 0.25,
    energy_tol: float = 0.02,
    symprec: float = 0.1,
) -> list[list[int]]:
    """Group relaxed adslabs that are the same minimum.

    Args:
        structures: relaxed adslabs (slab atoms first, then the adsorbate).
        energies: their energies (eV).
        n_slab: number of slab atoms (the adsorbate is ``atoms[n_slab:]``).
        clean_slab: slab whose symmetry defines equivalent sites (default: translations of the
            surface lattice only).
        position_tol: largest allowed adsorbate-atom displacement (Å).
        energy_tol: largest allowed energy difference (eV).
        symprec: spglib tolerance (Å) for the clean slab's symmetry.

    Returns:
        Groups of indices into ``structures``, lowest energy first within each group and groups
        ordered by their lowest energy.
    """
    if len(structures) != len(energies):
        raise ValueError(f"{len(structures)} structures but {len(energies)} energies")
    if not structures:
        return []
    if clean_slab is not None:
        rots, trans = slab_symmetry_ops(clean_slab, symprec)
    else:
        rots, trans = np.eye(3)[None, :, :], np.zeros((1, 3))
    order = np.argsort(np.asarray(energies, dtype=float), kind="stable")
    groups: list[list[int]] = []
    reps: list[tuple[np.ndarray, float]] = []
    for idx in order:
        atoms = structures[idx]
        cell = np.asarray(atoms.cell)
        ads = atoms[n_slab:]
        frac = np.linalg.solve(cell.T, ads.positions.T).T
        e = float(energies[idx])
        placed = False
        for g, (frac_rep, e_rep) in enumerate(reps):
            if abs(e - e_rep) > energy_tol:
                continue
            if _same_place(frac_rep, frac, ads.numbers, cell, rots, trans, position_tol):
                groups[g].append(int(idx))
                placed = True
                break
        if not placed:
            groups.append([int(idx)])
            reps.append((frac, e))
    return groups
