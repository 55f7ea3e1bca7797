"""Adsorbate placement: heuristic sites (on-top, bridge, hollow) and distinct random sites.

Each placement puts the adsorbate's first binding atom over a site at the height where it
touches the slab (distance = sum of covalent radii to the nearest slab atom), rotates the
molecule by a random angle about the surface normal and tilts it by at most ``max_tilt``
degrees, and rejects orientations that bring any adsorbate atom closer to the slab (or to its own
periodic image) than ``min_distance_scale`` × the sum of covalent radii. All randomness comes
from one ``numpy.random.Generator`` seeded by ``seed``: the same seed gives the same placements.

Bidentate adsorbates (two or more binding atoms, e.g. ``*CH2*O``, ``*C*C``, ``*N*NO`` or a file
with ``--binding-atoms i,j``) lie with their first two binding atoms level, and every tilt is
about the axis through those two atoms, so both stay at one height. Their heuristic placements
put the two binding atoms on two surface sites: each symmetry-distinct site is paired with the
(up to ``pairs_per_site``) neighbouring sites whose in-plane distance is closest to the binding
atoms' separation, and the binding pair is centred on the midpoint of the two sites, along the
line joining them (site type ``"<kind>+<kind>"``). Random placements of a bidentate adsorbate
keep a random rotation about the normal. The height is the lowest at which every binding atom
touches the slab.

Adslab atoms: the slab atoms (tags 0/1, constraints kept) followed by the adsorbate (tag 2),
binding atom first. Lengths in Å, angles in degrees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from eqv2calc.adsorbml.adsorbates import Adsorbate

__all__ = [
    "Placement",
    "PlacementError",
    "binding_height",
    "generate_placements",
    "heuristic_sites",
    "min_pair_ratio",
    "place_adsorbate",
    "random_sites",
    "site_pairs",
]


class PlacementError(ValueError):
    """No valid placement can be made (e.g. the slab is too small for the adsorbate)."""


@dataclass
class Placement:
    """One initial adslab.

    Attributes:
        pid: placement id (0-based; heuristic sites first, then random ones).
        site_type: "ontop", "bridge", "hollow" or "random"; for bidentate adsorbates on a site
            pair "<kind>+<kind>" (e.g. "bridge+hollow").
        site: Cartesian position (Å) of the first binding atom.
        rotation: rotation about the surface normal (degrees).
        tilt: tilt of the molecule away from the normal (degrees).
        lift: extra height (Å) added to resolve clashes (0 normally).
        atoms: the adslab (slab atoms first, adsorbate last with tag 2).
    """

    pid: int
    site_type: str
    site: np.ndarray
    rotation: float
    tilt: float
    lift: float
    atoms: Atoms


# ----------------------------------------------------------------------------------------------
# Sites
# ----------------------------------------------------------------------------------------------


def heuristic_sites(slab: Atoms, symm_reduce: float = 1e-2) -> list[tuple[str, np.ndarray]]:
    """Symmetry-distinct on-top, bridge and hollow sites of the top surface (pymatgen
    ``AdsorbateSiteFinder``), as (kind, xy-position in Å) with the surface atoms = tag 1."""
    from pymatgen.analysis.adsorption import AdsorbateSiteFinder
    from pymatgen.io.ase import AseAtomsAdaptor

    tags = slab.get_tags()
    bare = slab.copy()
    bare.constraints = []
    structure = AseAtomsAdaptor.get_structure(bare)
    props = ["surface" if t == 1 else "subsurface" for t in tags]
    structure.add_site_property("surface_properties", props)
    finder = AdsorbateSiteFinder(structure, mi_vec=[0.0, 0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's, via pymatgen
        found = finder.find_adsorption_sites(
            distance=0.0, symm_reduce=symm_reduce, near_reduce=1e-2
        )
    surface_xy = slab.positions[tags == 1, :2]
    cell2 = _inplane(slab)
    out: list[tuple[str, np.ndarray]] = []
    for kind in ("ontop", "bridge", "hollow"):
        for pos in found.get(kind, []):
            xy = np.asarray(pos, dtype=float)[:2].copy()
            out.append((_site_kind(xy, surface_xy, cell2), xy))
    order = {"ontop": 0, "bridge": 1, "hollow": 2}
    out.sort(key=lambda item: order[item[0]])
    return out


def _site_kind(xy: np.ndarray, surface_xy: np.ndarray, cell2: np.ndarray, tol: float = 0.25) -> str:
    """Name a site by how many surface atoms are (equally) nearest in the plane: 1 on-top,
    2 bridge, 3+ hollow. (pymatgen labels the four-fold hollow of a square lattice a bridge.)"""
    d = _min_image_dist2d(xy[None, :], surface_xy, cell2)[0]
    if d.min() < tol:
        return "ontop"
    n_near = int(np.sum(d < d.min() + tol))
    return "bridge" if n_near <= 2 else "hollow"


def _inplane(slab: Atoms) -> np.ndarray:
    return np.asarray(slab.cell)[:2, :2]


def _min_image_dist2d(points: np.ndarray, others: np.ndarray, cell2: np.ndarray) -> np.ndarray:
    """Minimum in-plane periodic distances (Å) between each point and each of ``others``."""
    inv = np.linalg.inv(cell2)
    diff = points[:, None, :] - others[None, :, :]
    frac = diff @ inv
    frac -= np.round(frac)
    best = None
    for sa in (-1, 0, 1):
        for sb in (-1, 0, 1):
            cart = (frac + np.array([sa, sb])) @ cell2
            d = np.linalg.norm(cart, axis=-1)
            best = d if best is None else np.minimum(best, d)
    return best


def random_sites(
    slab: Atoms,
    n: int,
    rng: np.random.Generator,
    min_separation: float = 0.5,
    grid_spacing: float = 0.1,
) -> list[np.ndarray]:
    """``n`` distinct random xy sites (Å) on the surface cell, drawn without replacement.

    Candidates are the points of a fine grid (``grid_spacing`` Å) over the surface cell, taken
    in random order; a candidate is kept when it is at least ``min_separation`` Å (with periodic
    images) from every site kept so far. Fewer than ``n`` come back when the cell is too small.
    """
    if n <= 0:
        return []
    cell2 = _inplane(slab)
    la, lb = np.linalg.norm(cell2, axis=1)
    na, nb = max(1, int(np.ceil(la / grid_spacing))), max(1, int(np.ceil(lb / grid_spacing)))
    fa, fb = np.meshgrid(np.arange(na) / na, np.arange(nb) / nb, indexing="ij")
    frac = np.stack([fa.ravel(), fb.ravel()], axis=1)
    frac = frac[rng.permutation(len(frac))]
    cands = frac @ cell2
    kept: list[np.ndarray] = []
    for start in range(0, len(cands), 512):
        block = cands[start : start + 512]
        for p in block:
            if kept:
                d = _min_image_dist2d(p[None, :], np.asarray(kept), cell2)[0]
                if d.min() < min_separation:
                    continue
            kept.append(p)
            if len(kept) == n:
                return kept
    return kept


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def _tiled(slab: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Slab positions and numbers tiled over the 3×3 in-plane neighbourhood."""
    cell = np.asarray(slab.cell)
    pos, num = [], []
    for sa in (-1, 0, 1):
        for sb in (-1, 0, 1):
            pos.append(slab.positions + sa * cell[0] + sb * cell[1])
            num.append(slab.numbers)
    return np.concatenate(pos), np.concatenate(num)


def binding_height(slab: Atoms, xy: np.ndarray, number: int, scale: float = 1.0) -> float:
    """Lowest z (Å) above the surface at which an atom of atomic number ``number`` at ``xy`` is
    ``scale`` × (sum of covalent radii) from every slab atom."""
    pos, num = _tiled(slab)
    target = scale * (covalent_radii[number] + covalent_radii[num])
    dxy2 = np.sum((pos[:, :2] - np.asarray(xy)[None, :]) ** 2, axis=1)
    touch = dxy2 < target**2
    z_top = float(slab.positions[:, 2].max())
    if not touch.any():
        return z_top
    return float(np.max(pos[touch, 2] + np.sqrt(target[touch] ** 2 - dxy2[touch])))


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def min_pair_ratio(adslab: Atoms, n_slab: int) -> float:
    """Smallest d / (r_i + r_j) (covalent radii) between an adsorbate atom and a slab atom or a
    periodic image of an adsorbate atom. 1.0 = touching; larger is farther apart."""
    n = len(adslab)
    if n == n_slab:
        return np.inf
    reach = 2.0 * covalent_radii[adslab.numbers].max() + 0.5
    i, j, d, shift = neighbor_list("ijdS", adslab, reach)
    ads_i = i >= n_slab
    other = (j < n_slab) | ((j >= n_slab) & np.any(shift != 0, axis=1))
    sel = ads_i & other
    if not sel.any():
        return np.inf
    ratio = d[sel] / (
        covalent_radii[adslab.numbers[i[sel]]] + covalent_radii[adslab.numbers[j[sel]]]
    )
    return float(ratio.min())


def place_adsorbate(
    slab: Atoms,
    adsorbate: Adsorbate,
    xy: np.ndarray,
    rotation_deg: float,
    tilt_deg: float,
    tilt_axis_deg: float,
    height_scale: float = 1.0,
    lift: float = 0.0,
) -> Atoms:
    """Adslab with the adsorbate's first binding atom over ``xy`` (Å), rotated by
    ``rotation_deg`` about z and tilted by ``tilt_deg`` about the in-plane axis at
    ``tilt_axis_deg``, at the lowest height where every binding atom touches the slab
    (+ ``lift``). Tags: slab kept, adsorbate 2."""
    mol = adsorbate.atoms.positions - adsorbate.atoms.positions[0]
    axis_angle = np.radians(tilt_axis_deg)
    tilt_axis = np.array([np.cos(axis_angle), np.sin(axis_angle), 0.0])
    rot = _rotation_axis(tilt_axis, np.radians(tilt_deg)) @ _rotation_z(np.radians(rotation_deg))
    mol = mol @ rot.T
    xy = np.asarray(xy, dtype=float)[:2]
    z = -np.inf
    for b in adsorbate.binding_indices or [0]:
        h = binding_height(slab, xy + mol[b, :2], int(adsorbate.atoms.numbers[b]), height_scale)
        z = max(z, h - mol[b, 2])
    z += lift
    mol += np.array([xy[0], xy[1], z])
    ads = Atoms(adsorbate.atoms.numbers, positions=mol, tags=[2] * len(mol))
    adslab = slab.copy()
    adslab.calc = None
    adslab += ads
    return adslab


def _binding_axis(adsorbate: Adsorbate) -> np.ndarray | None:
    """In-plane vector (Å) from the first to the second binding atom, or None (monodentate)."""
    idx = adsorbate.binding_indices
    if len(idx) < 2:
        return None
    v = adsorbate.atoms.positions[idx[1]] - adsorbate.atoms.positions[idx[0]]
    v = np.array([v[0], v[1]])
    return v if np.linalg.norm(v) > 1e-6 else None


def site_pairs(
    slab: Atoms,
    separation: float,
    pairs_per_site: int = 2,
    min_angle: float = 20.0,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Pairs of surface sites for a bidentate adsorbate whose binding atoms are
    ``separation`` Å apart in the plane.

    Every symmetry-distinct heuristic site is paired with the ``pairs_per_site`` sites of the
    full (not symmetry-reduced) site list, periodic images included, whose distance from it is
    closest to ``separation`` (directions at least ``min_angle`` degrees apart). Returns
    ``(kind, xy_first, xy_second)`` with kind ``"<kind>+<kind>"``, positions in Å.
    """
    firsts = heuristic_sites(slab)
    every = heuristic_sites(slab, symm_reduce=0.0)
    cell2 = _inplane(slab)
    images = []
    for kind, xy in every:
        for sa in (-1, 0, 1):
            for sb in (-1, 0, 1):
                images.append((kind, xy + sa * cell2[0] + sb * cell2[1]))
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    for kind0, xy0 in firsts:
        cands = []
        for kind1, xy1 in images:
            r = float(np.linalg.norm(xy1 - xy0))
            if r < 0.3:
                continue
            cands.append((abs(r - separation), kind1, xy1))
        cands.sort(key=lambda c: c[0])
        kept: list[np.ndarray] = []
        for _, kind1, xy1 in cands:
            u = (xy1 - xy0) / np.linalg.norm(xy1 - xy0)
            if any(np.degrees(np.arccos(np.clip(u @ k, -1.0, 1.0))) < min_angle for k in kept):
                continue
            kept.append(u)
            out.append((f"{kind0}+{kind1}", xy0.copy(), xy1.copy()))
            if len(kept) == pairs_per_site:
                break
    return out


def generate_placements(
    slab: Atoms,
    adsorbate: Adsorbate,
    *,
    num_random: int = 100,
    seed: int = 0,
    max_tilt: float = 20.0,
    min_distance_scale: float = 0.9,
    site_separation: float = 0.5,
    height_scale: float = 1.0,
    max_tries: int = 25,
    heuristic: bool = True,
    pairs_per_site: int = 2,
) -> list[Placement]:
    """All placements of ``adsorbate`` on ``slab``: the heuristic sites (site pairs for a
    bidentate adsorbate), then ``num_random`` random ones (see module docstring). Reproducible
    for a given ``seed``.

    Raises:
        PlacementError: if the slab has no surface atoms (tag 1) or the adsorbate clashes with
            its own periodic image at every orientation.
    """
    tags = slab.get_tags()
    if not np.any(tags == 1):
        raise PlacementError("slab has no surface atoms (tag 1); cannot find adsorption sites")
    rng = np.random.default_rng(seed)
    axis = _binding_axis(adsorbate)
    # (kind, xy of the first binding atom, fixed rotation about z in degrees or None)
    sites: list[tuple[str, np.ndarray, float | None]] = []
    if heuristic and axis is None:
        sites += [(kind, xy, None) for kind, xy in heuristic_sites(slab)]
    elif heuristic:
        sep = float(np.linalg.norm(axis))
        axis_angle = np.degrees(np.arctan2(axis[1], axis[0]))
        for kind, xy0, xy1 in site_pairs(slab, sep, pairs_per_site):
            u = (xy1 - xy0) / np.linalg.norm(xy1 - xy0)
            first = 0.5 * (xy0 + xy1) - 0.5 * sep * u  # binding pair centred between the sites
            rotation = float(np.degrees(np.arctan2(u[1], u[0])) - axis_angle) % 360.0
            sites.append((kind, first, rotation))
    sites += [("random", p, None) for p in random_sites(slab, num_random, rng, site_separation)]
    n_slab = len(slab)
    placements: list[Placement] = []
    for pid, (kind, xy, fixed_rotation) in enumerate(sites):
        best = None
        for _ in range(max_tries):
            rotation = float(rng.uniform(0.0, 360.0))
            # uniform on the spherical cap of half-angle max_tilt
            cos_t = rng.uniform(np.cos(np.radians(max_tilt)), 1.0)
            tilt = float(np.degrees(np.arccos(np.clip(cos_t, -1.0, 1.0))))
            tilt_axis = float(rng.uniform(0.0, 360.0))
            if axis is not None:
                # bidentate: tilt only about the binding axis (both binding atoms stay level)
                if fixed_rotation is not None:
                    rotation = fixed_rotation
                rotated = _rotation_z(np.radians(rotation))[:2, :2] @ axis
                tilt_axis = float(np.degrees(np.arctan2(rotated[1], rotated[0])))
                if rng.uniform() < 0.5:  # either way about the axis
                    tilt_axis = (tilt_axis + 180.0) % 360.0
            adslab = place_adsorbate(slab, adsorbate, xy, rotation, tilt, tilt_axis, height_scale)
            ratio = min_pair_ratio(adslab, n_slab)
            if best is None or ratio > best[0]:
                best = (ratio, rotation, tilt, tilt_axis, adslab)
            if ratio >= min_distance_scale - 1e-9:
                break
        ratio, rotation, tilt, tilt_axis, adslab = best
        lift = 0.0
        while ratio < min_distance_scale - 1e-9:
            lift += 0.1
            if lift > 5.0:
                raise PlacementError(
                    f"cannot place {adsorbate.name} at site {pid} ({kind}) without atoms closer than "
                    f"{min_distance_scale} x the covalent radii sum; the slab cell may be too small "
                    "for this adsorbate"
                )
            adslab = place_adsorbate(
                slab, adsorbate, xy, rotation, tilt, tilt_axis, height_scale, lift
            )
            ratio = min_pair_ratio(adslab, n_slab)
        site = adslab.positions[n_slab].copy()
        adslab.info.update(
            {
                "pid": pid,
                "site_type": kind,
                "rotation": rotation,
                "tilt": tilt,
                "lift": lift,
            }
        )
        placements.append(Placement(pid, kind, site, rotation, tilt, lift, adslab))
    return placements
