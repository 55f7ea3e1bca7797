"""Radius graphs with periodic images and a per-atom neighbour cap (lengths in Å).

This module turns atoms into the edge list that EquiformerV2 consumes. It follows the
conventions of fairchem-core 1.10 (``radius_graph_pbc`` + ``get_max_neighbors_mask``)
so that released checkpoints see the same graphs they were trained on, but it never
builds a dense N² × images distance tensor: candidate pairs come from pymatgen's
cell-list search (``pymatgen.optimization.neighbors.find_points_in_spheres``) for
structures with at least one periodic axis, and from a k-d tree
(``scipy.spatial.cKDTree``) for molecules. All distances are recomputed here in
float64.

Conventions
-----------
* An edge ``e`` connects a neighbour (source) ``j = edge_index[0, e]`` to a centre
  (target) ``i = edge_index[1, e]``; messages are summed onto the centre.
* ``cell_offsets[e] = n`` (integers) places the neighbour image at ``x_j + n @ cell``,
  where ``x`` are the positions *as given* (unwrapped positions are fine: the search
  wraps a copy internally and the offsets are shifted back), and
  ``edge_vec[e] = x_j + n @ cell - x_i``.
* Periodic images are generated only along axes with ``pbc[k]`` true; offsets along
  non-periodic axes are always 0. The lattice vectors of non-periodic axes are ignored
  (they may be zero), so molecules with no cell and slabs periodic in x, y only work.
* A pair is a candidate when ``d <= cutoff`` (inclusive) and ``d > 0.01 Å``; the lower
  bound is the reference's ``d² > 1e-4 Å²`` rule, which drops every atom's own zero
  offset copy. Two distinct atoms closer than 0.01 Å are dropped too, with a warning.
* Edge order: by centre ``i``, then neighbour ``j``, then lattice offset compared
  lexicographically (first axis slowest), i.e. the order of the reference fixtures.

Neighbour cap (``max_neighbors = k``; ``None`` means no cap). A centre with at most
``k`` candidates keeps them all. Otherwise:

* non-strict (``strict=False``, the reference's default rule): keep every candidate
  with ``d² <= d²₍ₖ₊₁₎ + 0.01 Å²``, where ``d₍ₖ₊₁₎`` is the (k+1)-th smallest candidate
  distance of that centre. This rule is free of arbitrary choices.
* strict (``strict=True``): keep exactly the ``k`` nearest candidates.

Tie rule (strict mode only). In a perfect crystal the cut can fall inside a shell of
equal distances (fcc: shells of 12, 6, 24, so k = 20 keeps 2 of the 24 third-shell
atoms). The reference keeps whichever ones float32 rounding and its sort happen to put
first. Here the choice is deterministic and depends only on edge vectors, so a rigidly
translated (and re-wrapped) copy of a structure, or one with its atoms permuted, gets
the same edges:

1. Each centre's candidates are sorted by distance and grouped into shells: a new shell
   starts wherever the gap to the previous (sorted) distance exceeds ``TIE_TOL_A``
   (1e-6 Å), so near-equal distances that differ only by rounding share one shell.
2. Candidates are ranked by shell, then by the edge vector components (x, then y, then
   z) rounded to a ``VEC_GRID_A`` (1e-4 Å) grid, smallest first; exact duplicates after
   rounding (only possible when two atoms nearly coincide) fall back to neighbour
   index j, then offset.
3. The first ``k`` in that ranking are kept.

(For speed only candidates up to ``d₍ₖ₊₁₎ + 1e-3 Å`` are ranked; if a chained shell
reaches that bound, all candidates of the centre are ranked instead.)

Where the gap between the k-th and (k+1)-th distances exceeds ``TIE_TOL_A`` this is
the same as keeping the k nearest, so away from exact ties the result equals the
reference's.

Precision: the reference compares float32 squared distances built from float32
positions; here everything is float64 (from whatever positions are given). On the
parity fixtures (float32 positions, margins down to 3.8e-5 Å at the cutoff, 3e-4 Å
strict gap, 4.4e-4 Å² at the non-strict threshold) the edge sets and order are
identical; only structures with a pair within ~1e-6 Å of a boundary could differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Graph",
    "BatchedGraph",
    "build_graph",
    "graph_from_atoms",
    "batch_graphs",
    "check_cutoff_and_cap",
    "MIN_PAIR_DISTANCE_A",
    "NONSTRICT_TOLERANCE_A2",
    "TIE_TOL_A",
    "VEC_GRID_A",
    "MAX_PERIODIC_IMAGES",
    "closest_pair",
]

#: Pairs at or below this distance (Å) are never edges (the reference's d² > 1e-4 Å² rule).
MIN_PAIR_DISTANCE_A = 0.01
#: Non-strict cap: keep d² <= d²₍ₖ₊₁₎ + this (Å²), as the reference's degeneracy tolerance.
NONSTRICT_TOLERANCE_A2 = 0.01
#: Distances closer than this (Å, chained) count as one shell when breaking strict-cap ties.
TIE_TOL_A = 1e-6
#: Edge-vector components are compared on this grid (Å) when breaking strict-cap ties.
VEC_GRID_A = 1e-4

_SEARCH_PAD_A = 1e-6  # the candidate search uses cutoff + this; exact filtering follows
#: Most periodic images of the cell the neighbour search may visit per atom. A cell far
#: thinner than the cutoff (a typo in the lattice, Bohr for Å) would otherwise need millions
#: of images and exhaust memory; 100,000 allows cells down to ~0.26 cutoff thick per axis.
MAX_PERIODIC_IMAGES = 100_000
_TIE_WINDOW_A = 1e-3  # strict ties: rank only candidates up to d_(k+1) + this (see _cap_mask)


@dataclass
class Graph:
    """Edges of one structure (numpy arrays, lengths in Å).

    Attributes:
        edge_index: (2, E) int64; row 0 = neighbour (source) j, row 1 = centre (target) i.
        cell_offsets: (E, 3) int64 lattice offsets n; the neighbour image is x_j + n @ cell.
        edge_vec: (E, 3) float64, x_j + n @ cell - x_i in Å.
        num_atoms: number of atoms N.
        cutoff: radius used (Å), for bookkeeping.
        max_neighbors: neighbour cap used (None = no cap).
        strict: whether the cap was strict.
    """

    edge_index: np.ndarray
    cell_offsets: np.ndarray
    edge_vec: np.ndarray
    num_atoms: int
    cutoff: float | None = None
    max_neighbors: int | None = None
    strict: bool | None = None

    @property
    def num_edges(self) -> int:
        """Number of edges E."""
        return int(self.edge_index.shape[1])

    @property
    def edge_distance(self) -> np.ndarray:
        """(E,) float64 edge lengths |edge_vec| in Å."""
        return np.sqrt(np.einsum("ij,ij->i", self.edge_vec, self.edge_vec))

    def neighbors_per_atom(self) -> np.ndarray:
        """(N,) int64 number of edges whose centre (target, row 1) is each atom."""
        return np.bincount(self.edge_index[1], minlength=self.num_atoms).astype(np.int64)


@dataclass
class BatchedGraph:
    """Edges of several structures concatenated (numpy arrays, lengths in Å).

    Attributes:
        edge_index: (2, E_total) int64 with global atom indices (structure b's atoms are
            ``atom_ptr[b] .. atom_ptr[b+1]-1``); row 0 = source j, row 1 = target i.
        cell_offsets: (E_total, 3) int64 lattice offsets (w.r.t. each structure's cell).
        edge_vec: (E_total, 3) float64 edge vectors in Å.
        batch: (N_total,) int64 structure index of every atom.
        num_atoms: (B,) int64 atoms per structure.
        num_edges: (B,) int64 edges per structure.
        edge_batch: (E_total,) int64 structure index of every edge.
        atom_ptr: (B+1,) int64 cumulative atom counts (first atom of each structure).
        edge_ptr: (B+1,) int64 cumulative edge counts (first edge of each structure).
    """

    edge_index: np.ndarray
    cell_offsets: np.ndarray
    edge_vec: np.ndarray
    batch: np.ndarray
    num_atoms: np.ndarray
    num_edges: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    edge_batch: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    atom_ptr: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    edge_ptr: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    @property
    def num_graphs(self) -> int:
        """Number of structures B."""
        return int(self.num_atoms.shape[0])

    @property
    def total_atoms(self) -> int:
        """Total number of atoms N_total."""
        return int(self.batch.shape[0])

    def neighbors_per_atom(self) -> np.ndarray:
        """(N_total,) int64 number of edges whose target is each atom."""
        return np.bincount(self.edge_index[1], minlength=self.total_atoms).astype(np.int64)


# --------------------------------------------------------------------------- input checks


def _as_positions(positions) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3) in Å, got shape {pos.shape}")
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():
        idx = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"atom {idx} has a non-finite position {pos[idx].tolist()} (NaN or inf); "
            f"{int(bad.sum())} atom(s) affected"
        )
    return np.ascontiguousarray(pos)


def _as_pbc(pbc) -> np.ndarray:
    arr = np.asarray(pbc if pbc is not None else False)
    if arr.ndim == 0:
        arr = np.repeat(arr, 3)
    arr = arr.reshape(-1)
    if arr.shape != (3,):
        raise ValueError(f"pbc must be a bool or 3 bools, got {pbc!r}")
    return arr.astype(bool)


def _as_cell(cell) -> np.ndarray:
    if cell is None:
        return np.zeros((3, 3))
    arr = np.asarray(getattr(cell, "array", cell), dtype=np.float64)
    if arr.shape == (1, 3, 3):
        arr = arr[0]
    if arr.shape != (3, 3):
        raise ValueError(
            f"cell must have shape (3, 3) (lattice vectors as rows, Å), got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"cell contains NaN or inf: {arr.tolist()}")
    return arr


def _search_lattice(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Lattice for the candidate search: periodic vectors as given, the others replaced.

    Non-periodic vectors only serve to make the matrix invertible (no images are made
    along them), so they are replaced by unit vectors orthogonal to the periodic ones.
    Raises ValueError when a periodic vector is zero or the periodic ones are dependent.
    """
    axes = "abc"
    periodic = [k for k in range(3) if pbc[k]]
    lengths = np.linalg.norm(cell, axis=1)
    for k in periodic:
        if lengths[k] < 1e-8:
            raise ValueError(
                f"pbc[{k}] is True but cell vector {k} ({axes[k]}) has zero length "
                f"{cell[k].tolist()}; give a lattice vector in Å or set pbc[{k}] = False"
            )
    pv = cell[periodic] / lengths[periodic, None]
    if len(periodic) >= 2:
        sv = np.linalg.svd(pv, compute_uv=False)
        if sv[-1] < 1e-6:
            raise ValueError(
                f"periodic cell vectors {periodic} are linearly dependent (degenerate cell "
                f"{cell.tolist()}); the cell volume/area spanned by them is ~0"
            )
    lattice = cell.copy()
    if len(periodic) == 3:
        return lattice
    if len(periodic) == 2:
        n = np.cross(pv[0], pv[1])
        extra = [n / np.linalg.norm(n)]
    else:  # one periodic axis
        u = pv[0]
        e = np.zeros(3)
        e[int(np.argmin(np.abs(u)))] = 1.0
        v1 = np.cross(u, e)
        v1 /= np.linalg.norm(v1)
        extra = [v1, np.cross(u, v1)]
    for k, vec in zip([k for k in range(3) if not pbc[k]], extra):
        lattice[k] = vec * max(lengths[periodic].max(), 1.0)
    return lattice


# --------------------------------------------------------------------------- candidates


def _check_image_count(lattice: np.ndarray, pbc: np.ndarray, radius: float) -> None:
    """Raise ValueError if a search to ``radius`` Å needs more than MAX_PERIODIC_IMAGES."""
    volume = abs(float(np.linalg.det(lattice)))
    counts = []
    for k in range(3):
        if not pbc[k]:
            counts.append(1)
            continue
        area = np.linalg.norm(np.cross(lattice[(k + 1) % 3], lattice[(k + 2) % 3]))
        thickness = volume / area  # distance between neighbouring lattice planes (Å)
        counts.append(2 * int(np.ceil(radius / thickness)) + 1)
    images = int(np.prod(counts, dtype=np.float64))
    if images > MAX_PERIODIC_IMAGES:
        raise ValueError(
            f"the cell is far smaller than the {radius:.3g} Å neighbour search: it would need "
            f"{images:,} periodic images per atom ({' x '.join(map(str, counts))}; at most "
            f"{MAX_PERIODIC_IMAGES:,}); check the cell vectors and their units (Å) or "
            "use a supercell"
        )


def closest_pair(positions, cell, pbc, cutoff: float) -> tuple[int, int, float] | None:
    """The closest two atoms (an atom and its own periodic image included) nearer than
    ``cutoff`` Å, as ``(i, j, distance)`` with ``i <= j``, or None.

    Unlike :func:`build_graph`, pairs on top of each other (below
    :data:`MIN_PAIR_DISTANCE_A`) are reported, not dropped.

    Raises:
        ValueError: bad positions/cell, or the cell needs too many images (see
            :data:`MAX_PERIODIC_IMAGES`).
    """
    pos = _as_positions(positions)
    pbc_arr = _as_pbc(pbc)
    cell_arr = _as_cell(cell) if cell is not None else np.zeros((3, 3))
    if pos.shape[0] == 0:
        return None
    ci, nj, offsets = _candidate_pairs(pos, cell_arr, pbc_arr, float(cutoff))
    vec = pos[nj] + offsets @ cell_arr - pos[ci]
    d = np.linalg.norm(vec, axis=1)
    keep = ((ci != nj) | offsets.any(axis=1)) & (d <= cutoff)
    if not keep.any():
        return None
    k = int(np.flatnonzero(keep)[np.argmin(d[keep])])
    a, b = sorted((int(ci[k]), int(nj[k])))
    return a, b, float(d[k])


def _candidate_pairs(
    pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Superset of pairs with d <= cutoff, grouped by centre (ascending).

    Returns (centre i, neighbour j, offsets n as float64 holding integers).
    """
    radius = cutoff + _SEARCH_PAD_A
    if not pbc.any():
        from scipy.spatial import cKDTree

        pairs = cKDTree(pos).query_pairs(radius, output_type="ndarray").astype(np.int64)
        pairs = pairs.reshape(-1, 2)
        ci = np.concatenate([pairs[:, 0], pairs[:, 1]])
        nj = np.concatenate([pairs[:, 1], pairs[:, 0]])
        offsets = np.zeros((ci.shape[0], 3))
    else:
        from pymatgen.optimization.neighbors import find_points_in_spheres

        lattice = _search_lattice(cell, pbc)
        _check_image_count(lattice, pbc, radius)
        # Wrap along periodic axes first (pymatgen's cell list spans the bounding box of
        # the positions, so far-drifted unwrapped atoms would make it huge), then shift
        # the offsets back so that they refer to the positions as given.
        shift = np.where(pbc, np.floor(np.linalg.solve(lattice.T, pos.T).T), 0.0)
        wrapped = np.ascontiguousarray(pos - np.einsum("ij,jk->ik", shift, lattice))
        ci, nj, offsets, _ = find_points_in_spheres(
            wrapped,
            wrapped,
            r=float(radius),
            pbc=np.ascontiguousarray(pbc.astype(np.int64)),
            lattice=np.ascontiguousarray(lattice),
            tol=1e-8,
        )
        ci = np.asarray(ci, dtype=np.int64)
        nj = np.asarray(nj, dtype=np.int64)
        offsets = np.rint(np.asarray(offsets, dtype=np.float64).reshape(-1, 3))
        offsets += shift[ci] - shift[nj]
    if ci.size > 1 and not (ci[1:] >= ci[:-1]).all():
        order = np.argsort(ci, kind="stable")
        ci, nj, offsets = ci[order], nj[order], offsets[order]
    return ci, nj, offsets


# --------------------------------------------------------------------------- neighbour cap


def _cap_mask(
    ci: np.ndarray,
    nj: np.ndarray,
    offsets: np.ndarray,
    vec: np.ndarray,
    d2: np.ndarray,
    n_atoms: int,
    k: int,
    strict: bool,
) -> np.ndarray:
    """Boolean mask over candidates implementing the neighbour cap (see module doc).

    ``ci`` must be grouped by centre in ascending order; entries with ``d2 = inf`` are
    not candidates (never kept, never counted).
    """
    valid = np.isfinite(d2)
    all_counts = np.bincount(ci, minlength=n_atoms)
    counts = np.bincount(ci[valid], minlength=n_atoms)
    over = counts > k
    if not over.any():
        return valid
    starts = np.zeros(n_atoms + 1, dtype=np.int64)
    np.cumsum(all_counts, out=starts[1:])
    over_atoms = np.flatnonzero(over)
    row_of = np.full(n_atoms, -1, dtype=np.int64)
    row_of[over_atoms] = np.arange(over_atoms.shape[0])

    # k-th and (k+1)-th smallest d² of every centre above the cap, via a padded
    # (centres x max candidates) matrix and a partial sort (no full sort needed).
    sel = np.flatnonzero(over[ci])
    c_sel = ci[sel]
    padded = np.full((over_atoms.shape[0], int(all_counts.max())), np.inf)
    padded[row_of[c_sel], sel - starts[c_sel]] = d2[sel]
    part = np.partition(padded, [k - 1, k], axis=1)
    d2_k = np.full(n_atoms, np.inf)
    d2_k1 = np.full(n_atoms, np.inf)
    d2_k[over_atoms] = part[:, k - 1]
    d2_k1[over_atoms] = part[:, k]
    del padded, part

    if not strict:
        return valid & (d2 <= d2_k1[ci] + NONSTRICT_TOLERANCE_A2)

    d_k1 = np.sqrt(d2_k1)
    tie = np.zeros(n_atoms, dtype=bool)
    tie[over_atoms] = (d_k1[over_atoms] - np.sqrt(d2_k[over_atoms])) <= TIE_TOL_A
    # Without a tie at the cut exactly k candidates have d² <= d²_k.
    keep = valid & (d2 <= d2_k[ci]) & ~tie[ci]
    if tie.any():
        t_all = np.flatnonzero(tie[ci] & valid)
        # Only candidates up to a window above d_(k+1) can share the cut shell, unless a
        # chain of near-equal distances spans the whole window: then rank them all.
        t_idx = t_all[np.sqrt(d2[t_all]) <= d_k1[ci[t_all]] + _TIE_WINDOW_A]
        ranked = _rank_tied(t_idx, ci, nj, offsets, vec, d2, k, d_k1)
        if ranked is None:
            ranked = _rank_tied(t_all, ci, nj, offsets, vec, d2, k, None)
        r_c = ci[ranked]
        first = np.searchsorted(r_c, r_c, side="left")
        keep[ranked[(np.arange(ranked.shape[0]) - first) < k]] = True
    return keep


def _rank_tied(
    t_idx: np.ndarray,
    ci: np.ndarray,
    nj: np.ndarray,
    offsets: np.ndarray,
    vec: np.ndarray,
    d2: np.ndarray,
    k: int,
    d_k1: np.ndarray | None,
) -> np.ndarray | None:
    """Rank candidates of tied centres by (chained distance shell, gridded edge vector).

    Returns candidate indices grouped by centre in rank order, or None when ``d_k1`` is
    given and a cut shell reaches the top of the distance window (caller widens it).
    """
    t_idx = t_idx[np.lexsort((d2[t_idx], ci[t_idx]))]
    t_c = ci[t_idx]
    t_d = np.sqrt(d2[t_idx])
    # Chained shells: a new shell starts at a new centre or a gap > TIE_TOL_A.
    new_shell = np.ones(t_idx.shape[0], dtype=bool)
    new_shell[1:] = (t_c[1:] != t_c[:-1]) | (np.diff(t_d) > TIE_TOL_A)
    shell = np.cumsum(new_shell)  # increases along centres too, so it orders them
    if d_k1 is not None:
        centres, first = np.unique(t_c, return_index=True)
        cut_shell = shell[first + k]  # shell of each centre's (k+1)-th nearest
        last = np.searchsorted(shell, cut_shell, side="right") - 1
        if (t_d[last] >= d_k1[centres] + _TIE_WINDOW_A - TIE_TOL_A).any():
            return None
    grid = np.rint(vec[t_idx] / VEC_GRID_A).astype(np.int64)
    off = offsets[t_idx]
    keys = (off[:, 2], off[:, 1], off[:, 0], nj[t_idx], grid[:, 2], grid[:, 1], grid[:, 0], shell)
    return t_idx[np.lexsort(keys)]


# --------------------------------------------------------------------------- public API


def check_cutoff_and_cap(cutoff, max_neighbors) -> tuple[float, int | None]:
    """Validate a neighbour-search radius (Å) and per-centre cap; return them as float / int.

    Raises:
        ValueError: cutoff is not a positive finite number, or max_neighbors is not a
            positive integer or None.
    """
    try:
        cutoff = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a positive number in Å, got {cutoff!r}") from None
    if not np.isfinite(cutoff) or cutoff <= 0:
        raise ValueError(f"cutoff must be a positive finite distance in Å, got {cutoff!r}")
    if max_neighbors is not None:
        if isinstance(max_neighbors, bool) or int(max_neighbors) != max_neighbors:
            raise ValueError(
                f"max_neighbors must be a positive integer or None, got {max_neighbors!r}"
            )
        max_neighbors = int(max_neighbors)
        if max_neighbors < 1:
            raise ValueError(
                f"max_neighbors must be a positive integer or None (no cap), got {max_neighbors}"
            )
    return cutoff, max_neighbors


def build_graph(
    positions,
    cell,
    pbc,
    *,
    cutoff: float,
    max_neighbors: int | None,
    strict: bool,
) -> Graph:
    """Build the radius graph of one structure.

    Args:
        positions: (N, 3) Cartesian positions in Å (not wrapped; offsets refer to them).
        cell: (3, 3) lattice vectors as rows in Å (ase ``Cell`` accepted; may be zero or
            None along non-periodic axes).
        pbc: bool or 3 bools, periodicity per lattice axis.
        cutoff: radius in Å; pairs with d <= cutoff are candidates.
        max_neighbors: per-centre cap k, or None for no cap.
        strict: True keeps exactly the k nearest (deterministic tie rule, see module
            doc); False keeps all with d² <= d²₍ₖ₊₁₎ + 0.01 Å².

    Returns:
        Graph with edges ordered by centre, neighbour, then lattice offset.

    Raises:
        ValueError: non-finite positions (names the atom), a periodic axis with a zero
            or degenerate lattice vector, cutoff <= 0, or a bad max_neighbors.
    """
    cutoff, max_neighbors = check_cutoff_and_cap(cutoff, max_neighbors)
    pos = _as_positions(positions)
    pbc_arr = _as_pbc(pbc)
    cell_arr = _as_cell(cell)
    n_atoms = int(pos.shape[0])

    if n_atoms == 0:
        ci = nj = np.zeros(0, dtype=np.int64)
        offsets = np.zeros((0, 3))
    else:
        if pbc_arr.any():
            _search_lattice(cell_arr, pbc_arr)  # validate before searching
        ci, nj, offsets = _candidate_pairs(pos, cell_arr, pbc_arr, cutoff)

    # Offsets along non-periodic axes are 0 by construction; only periodic lattice
    # vectors enter the edge vectors (the others may be zero or arbitrary).
    cell_used = np.where(pbc_arr[:, None], cell_arr, 0.0)
    # (einsum, not @: a multithreaded BLAS call on an (E, 3) x (3, 3) product is slow.)
    vec = pos[nj] - pos[ci] + np.einsum("ij,jk->ik", offsets, cell_used)
    d2 = np.einsum("ij,ij->i", vec, vec)

    min_d2 = MIN_PAIR_DISTANCE_A**2
    close = d2 <= min_d2
    close_idx = np.flatnonzero(close)
    overlap = close_idx[(ci[close_idx] != nj[close_idx]) | offsets[close_idx].any(axis=1)]
    if overlap.size:  # distinct atoms (or an atom and its image) on top of each other
        e = int(overlap[0])
        warnings.warn(
            f"atoms {int(ci[e])} and {int(nj[e])} (offset {offsets[e].astype(int).tolist()}) "
            f"are {np.sqrt(d2[e]):.4g} Å apart (<= {MIN_PAIR_DISTANCE_A} Å); such pairs "
            "are not edges",
            RuntimeWarning,
            stacklevel=2,
        )
    d2 = np.where((d2 <= cutoff * cutoff) & ~close, d2, np.inf)  # inf = not a candidate
    if max_neighbors is not None and ci.size:
        keep = _cap_mask(ci, nj, offsets, vec, d2, n_atoms, max_neighbors, strict)
    else:
        keep = np.isfinite(d2)
    ci, nj, offsets, vec = ci[keep], nj[keep], offsets[keep], vec[keep]
    offsets = offsets.astype(np.int64)
    order = np.lexsort((offsets[:, 2], offsets[:, 1], offsets[:, 0], nj, ci))
    return Graph(
        edge_index=np.ascontiguousarray(np.stack([nj[order], ci[order]]).astype(np.int64)),
        cell_offsets=np.ascontiguousarray(offsets[order]),
        edge_vec=np.ascontiguousarray(vec[order]),
        num_atoms=n_atoms,
        cutoff=cutoff,
        max_neighbors=max_neighbors,
        strict=bool(strict),
    )


def graph_from_atoms(atoms, *, cutoff: float, max_neighbors: int | None, strict: bool) -> Graph:
    """Build the radius graph of an ``ase.Atoms`` (positions as stored, not wrapped).

    See :func:`build_graph` for the arguments (cutoff in Å).
    """
    return build_graph(
        atoms.get_positions(),
        atoms.cell.array,
        atoms.pbc,
        cutoff=cutoff,
        max_neighbors=max_neighbors,
        strict=strict,
    )


def batch_graphs(graphs: Sequence[Graph]) -> BatchedGraph:
    """Concatenate per-structure graphs, shifting atom indices to global numbering."""
    graphs = list(graphs)
    num_atoms = np.array([g.num_atoms for g in graphs], dtype=np.int64)
    num_edges = np.array([g.num_edges for g in graphs], dtype=np.int64)
    atom_ptr = np.zeros(len(graphs) + 1, dtype=np.int64)
    np.cumsum(num_atoms, out=atom_ptr[1:])
    edge_ptr = np.zeros(len(graphs) + 1, dtype=np.int64)
    np.cumsum(num_edges, out=edge_ptr[1:])
    if graphs:
        edge_index = np.concatenate(
            [g.edge_index + atom_ptr[b] for b, g in enumerate(graphs)], axis=1
        ).astype(np.int64)
        cell_offsets = np.concatenate([g.cell_offsets for g in graphs], axis=0).astype(np.int64)
        edge_vec = np.concatenate([g.edge_vec for g in graphs], axis=0).astype(np.float64)
    else:
        edge_index = np.zeros((2, 0), dtype=np.int64)
        cell_offsets = np.zeros((0, 3), dtype=np.int64)
        edge_vec = np.zeros((0, 3), dtype=np.float64)
    b_idx = np.arange(len(graphs), dtype=np.int64)
    return BatchedGraph(
        edge_index=edge_index,
        cell_offsets=cell_offsets,
        edge_vec=edge_vec,
        batch=np.repeat(b_idx, num_atoms),
        num_atoms=num_atoms,
        num_edges=num_edges,
        edge_batch=np.repeat(b_idx, num_edges),
        atom_ptr=atom_ptr,
        edge_ptr=edge_ptr,
    )
