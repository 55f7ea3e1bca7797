"""Batched radius graphs on the model's device (torch), with :mod:`eqv2calc.graph` semantics.

:func:`neighbor_graph` gives, for a whole batch of structures held as tensors, exactly the edges
that :func:`eqv2calc.graph.build_graph` gives structure by structure: the same candidates
(``0.01 Å < d <= cutoff``, images only along periodic axes), the same non-strict and strict
neighbour caps, the same deterministic tie rule and the same edge order (centre, neighbour,
lattice offset). See the :mod:`eqv2calc.graph` module docstring for the rules; this module only
re-implements them with tensor operations, in float64 whatever the model's dtype.

Candidate search (``method``):

* ``"dense"``: every pair of atoms of a structure against every lattice image that can lie
  within the cutoff, all structures at once (no Python loop over structures), in chunks of
  ``DENSE_CHUNK`` candidates. Fastest for small structures; cost grows as N² per structure.
* ``"vesin"``: `vesin-torch <https://github.com/Luthaf/vesin>`_'s cell list, one call per
  structure (``pip install eqv2calc[vesin]``); linear in N, for large structures.
* ``"host"``: :mod:`eqv2calc.graph`'s own search (pymatgen cell list, k-d tree) on the host,
  one structure at a time; on a CPU device this is the fastest (no transfer involved).
* ``"auto"`` (default): host on CPU; on CUDA dense while every structure has at most
  ``AUTO_DENSE_MAX_ATOMS`` atoms, else vesin when installed, else dense. (Measured in
  ``benchmarks/README.md``.)

The neighbour cap is applied on the device too (sorts, no per-centre loop). Output sizes
depend on the data, so building a graph synchronises with the host once or twice (tensor
sizes); :class:`NeighborCache` avoids most builds during relaxations and MD by keeping the
candidates within ``cutoff + skin`` and re-filtering them while no atom has moved more than
``skin / 2`` and no cell has changed (the standard Verlet-list argument: every pair that is
now within the cutoff was within ``cutoff + skin`` at the last build), which gives the same
edges as a fresh build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eqv2calc.graph import (
    MIN_PAIR_DISTANCE_A,
    NONSTRICT_TOLERANCE_A2,
    TIE_TOL_A,
    VEC_GRID_A,
    check_cutoff_and_cap,
)

__all__ = [
    "DeviceGraph",
    "NeighborCache",
    "candidate_pairs",
    "neighbor_graph",
    "AUTO_DENSE_MAX_ATOMS",
    "DENSE_CHUNK",
]

#: ``method="auto"`` uses the dense search for structures up to this many atoms.
AUTO_DENSE_MAX_ATOMS = 200
#: Candidates (pair x image) handled per chunk by the dense search.
DENSE_CHUNK = 4_000_000

_SEARCH_PAD_A = 1e-6  # as eqv2calc.graph: search at cutoff + pad, filter exactly afterwards
_TIE_WINDOW_A = 1e-3  # as eqv2calc.graph: strict ties ranked up to d_(k+1) + this


@dataclass
class DeviceGraph:
    """Edges of a batch of structures, as tensors on one device.

    Attributes:
        edge_index: ``[2, E]`` long, global atom indices; row 0 = neighbour j, row 1 = centre i.
        cell_offsets: ``[E, 3]`` long lattice offsets n (neighbour image at ``x_j + n·cell``).
        edge_batch: ``[E]`` long structure index of every edge.
        num_edges: ``[B]`` long edges per structure.
    """

    edge_index: torch.Tensor
    cell_offsets: torch.Tensor
    edge_batch: torch.Tensor
    num_edges: torch.Tensor

    def edge_vectors(self, positions: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """``[E, 3]`` edge vectors ``x_j + n·cell − x_i`` (Å) in the dtype of ``positions``."""
        from eqv2calc.edges import edge_vectors

        return edge_vectors(positions, cells, self.edge_index, self.cell_offsets, self.edge_batch)


# --------------------------------------------------------------------------- helpers


def _ptr(batch: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=batch.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return counts, ptr


def _periodic_cells(cells: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Cells with the rows of non-periodic axes zeroed (those vectors are ignored)."""
    return cells * pbc.to(cells.dtype).unsqueeze(-1)


def _dual_basis(cells_p: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 3]`` R with ``a_k · R[:, l] = δ_kl`` for periodic k, l; zero columns elsewhere.

    R spans the periodic lattice vectors only, so ``x @ R`` gives the fractional coordinates
    along the periodic axes of the component of x in their span.
    """
    eye = torch.eye(3, dtype=cells_p.dtype, device=cells_p.device)
    gram = cells_p @ cells_p.transpose(1, 2) + torch.diag_embed((~pbc).to(cells_p.dtype))
    return cells_p.transpose(1, 2) @ torch.linalg.solve(gram, eye.expand_as(gram))


def _check_cells(cells_p: torch.Tensor, pbc: torch.Tensor) -> None:
    """Same checks as :func:`eqv2calc.graph._search_lattice` (host sync; once per build)."""
    lengths = torch.linalg.vector_norm(cells_p, dim=-1)
    bad = pbc & (lengths < 1e-8)
    if bool(bad.any()):
        b, k = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"structure {b}: pbc[{k}] is True but cell vector {k} ({'abc'[k]}) has zero length; "
            f"give a lattice vector in Å or set pbc[{k}] = False"
        )
    unit = cells_p / lengths.clamp_min(1e-300).unsqueeze(-1)
    sv = torch.linalg.svdvals(unit)  # zero rows contribute zero singular values
    n_per = pbc.sum(-1)
    smallest = torch.gather(sv, 1, (n_per - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    degenerate = (n_per >= 2) & (smallest < 1e-6)
    if bool(degenerate.any()):
        b = int(torch.nonzero(degenerate)[0, 0])
        raise ValueError(
            f"structure {b}: periodic cell vectors are linearly dependent (degenerate cell "
            f"{cells_p[b].tolist()}); the cell volume/area spanned by them is ~0"
        )


def _stable_lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Permutation sorting by ``keys`` (first key most significant), stable."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def _packed(cols: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Keys sorting like the three integer columns of ``cols`` (first most significant).

    One int64 key when every value fits in ``bits`` signed bits (a data-dependent check:
    one host sync), else the three columns.
    """
    if cols.numel() == 0:
        return [cols[:, 0], cols[:, 1], cols[:, 2]]
    half = 1 << (bits - 1)
    if bool(cols.abs().amax() < half - 1):
        u = cols + half
        return [(u[:, 0] << (2 * bits)) | (u[:, 1] << bits) | u[:, 2]]
    return [cols[:, 0], cols[:, 1], cols[:, 2]]


def _packed_nj_off(nj: torch.Tensor, off: torch.Tensor) -> list[torch.Tensor]:
    """Keys sorting like (nj, n1, n2, n3)."""
    return [nj, *_packed(off, 11)]


# --------------------------------------------------------------------------- candidates


def _dense_candidates(
    pos: torch.Tensor,
    cells_p: torch.Tensor,
    pbc: torch.Tensor,
    counts: torch.Tensor,
    ptr: torch.Tensor,
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (centre i, neighbour j, offset n) with d <= radius, by brute force over images."""
    dev = pos.device
    nb = counts.shape[0]
    batch = torch.repeat_interleave(torch.arange(nb, device=dev), counts)
    dual = _dual_basis(cells_p, pbc)  # [B, 3, 3]
    frac = torch.einsum("nk,nkl->nl", pos, dual[batch])  # periodic fractional coordinates
    shift = torch.floor(frac) * pbc[batch]  # wrap along periodic axes (integers)
    wrapped = pos - torch.einsum("nk,nkl->nl", shift, cells_p[batch])
    # images needed per structure and axis: |f_j - f_i + n_k| <= radius * |R[:, k]|
    nmax = torch.ceil(radius * torch.linalg.vector_norm(dual, dim=1)).long() * pbc.long()
    nmax_host = nmax.amax(0).tolist() if nb else [0, 0, 0]
    rng = [torch.arange(-m, m + 1, device=dev) for m in nmax_host]
    grid = torch.cartesian_prod(*rng).reshape(-1, 3)  # [G, 3]
    valid = (grid.abs().unsqueeze(0) <= nmax.unsqueeze(1)).all(-1)  # [B, G]
    img_b, img_g = torch.nonzero(valid, as_tuple=True)  # grouped by structure
    n_img = valid.sum(1)  # [B]
    img_ptr = torch.zeros(nb + 1, dtype=torch.long, device=dev)
    img_ptr[1:] = torch.cumsum(n_img, 0)
    images = grid[img_g]  # [sum M_b, 3]
    img_vec = torch.einsum("gk,gkl->gl", images.to(pos.dtype), cells_p[img_b])  # [sum M_b, 3]

    # pairs (i, j) of the same structure, chunked so that pairs x images stays bounded
    per_struct = counts * counts * n_img
    totals = per_struct.tolist()
    out_i, out_j, out_n = [], [], []
    r2 = radius * radius
    start_b = 0
    while start_b < nb:
        end_b, acc = start_b, 0
        while end_b < nb and (end_b == start_b or acc + totals[end_b] <= DENSE_CHUNK):
            acc += totals[end_b]
            end_b += 1
        sl = slice(start_b, end_b)
        c = counts[sl]
        bidx = torch.arange(start_b, end_b, device=dev)
        if acc > DENSE_CHUNK:  # one structure above the chunk size: split its centres
            b = start_b
            n_b = int(counts[b])
            step = max(1, DENSE_CHUNK // max(1, n_b * int(n_img[b])))
            for i0 in range(0, n_b, step):
                ii, jj, nn = _dense_block(
                    wrapped,
                    cells_p,
                    images,
                    p0=int(ptr[b]),
                    n_b=n_b,
                    i0=i0,
                    i1=min(n_b, i0 + step),
                    g0=int(img_ptr[b]),
                    m=int(n_img[b]),
                    b=b,
                    r2=r2,
                )
                out_i.append(ii)
                out_j.append(jj)
                out_n.append(nn + (shift[ii] - shift[jj]).long())
            start_b = end_b
            continue
        # pairs (i, j) of structures start_b..end_b-1, then every image of each pair
        pair_b = torch.repeat_interleave(bidx, c * c)
        pair_ptr = torch.zeros(end_b - start_b + 1, dtype=torch.long, device=dev)
        pair_ptr[1:] = torch.cumsum(c * c, 0)
        local = torch.arange(pair_b.shape[0], device=dev) - pair_ptr[pair_b - start_b]
        nb_atoms = counts[pair_b]
        pi = ptr[pair_b] + local // nb_atoms
        pj = ptr[pair_b] + local % nb_atoms
        d0 = wrapped[pj] - wrapped[pi]  # [P, 3]
        m_pair = n_img[pair_b]
        cand_pair = torch.repeat_interleave(torch.arange(pair_b.shape[0], device=dev), m_pair)
        cand_start = torch.cumsum(m_pair, 0) - m_pair
        g = img_ptr[pair_b[cand_pair]] + (
            torch.arange(cand_pair.shape[0], device=dev) - cand_start[cand_pair]
        )
        vec = d0[cand_pair] + img_vec[g]
        keep = (vec * vec).sum(-1) <= r2
        cp, gk = cand_pair[keep], g[keep]
        ii, jj, nn = pi[cp], pj[cp], images[gk]
        out_i.append(ii)
        out_j.append(jj)
        out_n.append(nn + (shift[ii] - shift[jj]).long())
        start_b = end_b
    if not out_i:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return z, z, torch.zeros(0, 3, dtype=torch.long, device=dev)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_n).long()


def _dense_block(wrapped, cells_p, images, *, p0, n_b, i0, i1, g0, m, b, r2):
    """Candidates of centres i0..i1-1 of one (large) structure, as in the dense search."""
    dev = wrapped.device
    ci = torch.arange(i0, i1, device=dev)
    cj = torch.arange(n_b, device=dev)
    gi = torch.arange(m, device=dev)
    ii, jj, gg = torch.meshgrid(ci, cj, gi, indexing="ij")
    ii, jj, gg = ii.reshape(-1) + p0, jj.reshape(-1) + p0, gg.reshape(-1) + g0
    nn = images[gg]
    vec = wrapped[jj] - wrapped[ii] + nn.to(wrapped.dtype) @ cells_p[b]
    keep = (vec * vec).sum(-1) <= r2
    return ii[keep], jj[keep], nn[keep]


def _vesin_candidates(
    pos: torch.Tensor,
    cells_p: torch.Tensor,
    pbc: torch.Tensor,
    counts: torch.Tensor,
    ptr: torch.Tensor,
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates from vesin-torch's cell list, one structure at a time."""
    try:
        from vesin_torch import NeighborList
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the vesin neighbour search needs vesin-torch: pip install eqv2calc[vesin]"
        ) from err
    from eqv2calc.graph import _search_lattice

    nl = NeighborList(cutoff=float(radius), full_list=True)
    out_i, out_j, out_n = [], [], []
    pbc_host = pbc.cpu()
    cells_host = cells_p.detach().cpu().double().numpy()
    for b in range(counts.shape[0]):
        p0, n_b = int(ptr[b]), int(counts[b])
        if n_b == 0:
            continue
        x = pos[p0 : p0 + n_b]
        per = pbc_host[b]
        if bool(per.any()):
            lattice = torch.as_tensor(
                _search_lattice(cells_host[b], per.numpy()), dtype=pos.dtype, device=pos.device
            )
            frac = torch.linalg.solve(lattice.T, x.T).T
            shift = torch.floor(frac) * per.to(pos.device)
            x = x - shift @ lattice
        else:
            lattice = torch.zeros(3, 3, dtype=pos.dtype, device=pos.device)
            shift = torch.zeros_like(x)
        i, j, s = nl.compute(x.contiguous(), lattice, per.to(pos.device), quantities="ijS")
        i, j = i.long(), j.long()
        out_i.append(i + p0)
        out_j.append(j + p0)
        out_n.append(s.long() + (shift[i] - shift[j]).long())
    if not out_i:
        z = torch.zeros(0, dtype=torch.long, device=pos.device)
        return z, z, torch.zeros(0, 3, dtype=torch.long, device=pos.device)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_n)


def _host_candidates(
    pos: torch.Tensor,
    cells_p: torch.Tensor,
    pbc: torch.Tensor,
    counts: torch.Tensor,
    ptr: torch.Tensor,
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates from :mod:`eqv2calc.graph`'s search (pymatgen cell list / k-d tree) on the
    host, one structure at a time; the fastest search on a CPU device."""
    from eqv2calc.graph import _candidate_pairs

    pos_h = pos.detach().cpu().numpy()
    cells_h = cells_p.detach().cpu().numpy()
    pbc_h = pbc.cpu().numpy()
    out_i, out_j, out_n = [], [], []
    for b, (p0, n_b) in enumerate(zip(ptr[:-1].tolist(), counts.tolist())):
        if n_b == 0:
            continue
        ci, nj, off = _candidate_pairs(
            np.ascontiguousarray(pos_h[p0 : p0 + n_b]), cells_h[b], pbc_h[b], radius
        )
        out_i.append(torch.from_numpy(ci + p0))
        out_j.append(torch.from_numpy(nj + p0))
        out_n.append(torch.from_numpy(off.astype(np.int64)))
    dev = pos.device
    if not out_i:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return z, z, torch.zeros(0, 3, dtype=torch.long, device=dev)
    return tuple(torch.cat(t).to(dev) for t in (out_i, out_j, out_n))


def _vesin_available() -> bool:
    try:
        import vesin_torch  # noqa: F401
    except ImportError:
        return False
    return True


def candidate_pairs(
    positions: torch.Tensor,
    cells: torch.Tensor,
    pbc: torch.Tensor,
    batch: torch.Tensor,
    num_graphs: int,
    radius: float,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (centre i, neighbour j, lattice offset n) with ``|x_j + n·cell − x_i| <= radius``.

    A superset filter at ``radius`` (Å) computed on wrapped copies of the positions; the
    offsets refer to ``positions`` as given. Zero-distance self pairs are included (callers
    drop them). Order is arbitrary.

    Args:
        positions: ``[N, 3]`` float64 positions (Å) of all structures, grouped by structure.
        cells: ``[B, 3, 3]`` float64 cells (Å); rows of non-periodic axes are ignored.
        pbc: ``[B, 3]`` bool periodicity per structure and axis.
        batch: ``[N]`` long structure index (non-decreasing).
        num_graphs: B.
        radius: search radius in Å.
        method: ``"dense"``, ``"vesin"`` or ``"auto"`` (see module docstring).

    Returns:
        ``(i, j, n)``: ``[C]`` long, ``[C]`` long, ``[C, 3]`` long (global atom indices).
    """
    counts, ptr = _ptr(batch, num_graphs)
    cells_p = _periodic_cells(cells, pbc)
    _check_cells(cells_p, pbc)
    if method == "auto":
        if positions.device.type == "cpu":
            method = "host"
        else:
            big = num_graphs > 0 and int(counts.max()) > AUTO_DENSE_MAX_ATOMS
            method = "vesin" if (big and _vesin_available()) else "dense"
    if method == "host":
        return _host_candidates(positions, cells_p, pbc, counts, ptr, radius)
    if method == "dense":
        return _dense_candidates(positions, cells_p, pbc, counts, ptr, radius)
    if method == "vesin":
        return _vesin_candidates(positions, cells_p, pbc, counts, ptr, radius)
    raise ValueError(
        f"neighbour search method must be 'auto', 'host', 'dense' or 'vesin', got {method!r}"
    )


# --------------------------------------------------------------------------- cap and order


def _cap_keep(
    ci: torch.Tensor,
    nj: torch.Tensor,
    off: torch.Tensor,
    vec: torch.Tensor,
    d2: torch.Tensor,
    n_atoms: int,
    k: int,
    strict: bool,
) -> torch.Tensor:
    """Boolean mask implementing the neighbour cap of :mod:`eqv2calc.graph` (all candidates
    valid).

    The (k+1)-th smallest d² of every centre comes from ``topk`` on a padded (centre x
    candidates) matrix. Strict mode then ranks, for centres above the cap, the candidates up to
    ``d₍ₖ₊₁₎ + 1e-3 Å`` (all of them when a chain of near-equal distances reaches that bound)
    by (chained distance shell, gridded edge vector x, y, z, neighbour, offset) and keeps the
    first k: the module's tie rule, and the k nearest whenever there is no tie at the cut.
    """
    dev = ci.device
    n_c = ci.shape[0]
    counts = torch.bincount(ci, minlength=n_atoms)
    over = counts > k
    starts = torch.cumsum(counts, 0) - counts
    by_c = torch.sort(ci, stable=True).indices
    c_sorted = ci[by_c]
    slot = torch.arange(n_c, device=dev) - starts[c_sorted]
    max_c = int(counts.max())
    inf = float("inf")
    if max_c <= k:
        return torch.ones_like(ci, dtype=torch.bool)
    padded = torch.full((n_atoms, max_c), inf, dtype=d2.dtype, device=dev)
    padded[c_sorted, slot] = d2[by_c]
    d2_k1 = torch.topk(padded, k + 1, dim=1, largest=False, sorted=True).values[:, k]
    del padded
    if not strict:
        return d2 <= d2_k1[ci] + NONSTRICT_TOLERANCE_A2
    d_k1 = torch.sqrt(d2_k1)
    dist = torch.sqrt(d2)
    keep = ~over[ci]
    window = over[ci] & (dist <= d_k1[ci] + _TIE_WINDOW_A)
    ranked = _rank_tied(
        torch.nonzero(window).squeeze(1), ci, nj, off, vec, d2, k=k, d_k1=d_k1, over=over
    )
    if ranked is None:  # a shell chain reaches the window top: rank all their candidates
        ranked = _rank_tied(
            torch.nonzero(over[ci]).squeeze(1), ci, nj, off, vec, d2, k=k, d_k1=None, over=over
        )
    idx, pos_in = ranked
    keep[idx[pos_in < k]] = True
    return keep


def _rank_tied(idx, ci, nj, off, vec, d2, *, k, d_k1, over):
    """(candidate indices in rank order, position within their centre) for ``idx``; None when
    ``d_k1`` is given and a cut shell reaches the top of the distance window."""
    dev = ci.device
    order = idx[_stable_lexsort([ci[idx], d2[idx]])]
    c_s = ci[order]
    dist = torch.sqrt(d2[order])
    new_shell = torch.ones_like(c_s, dtype=torch.bool)
    new_shell[1:] = (c_s[1:] != c_s[:-1]) | ((dist[1:] - dist[:-1]) > TIE_TOL_A)
    shell_sorted = torch.cumsum(new_shell.long(), 0)
    cnt = torch.bincount(c_s, minlength=over.shape[0])
    first = torch.cumsum(cnt, 0) - cnt
    if d_k1 is not None:
        centres = torch.nonzero(over & (cnt > k)).squeeze(1)
        cut_shell = shell_sorted[first[centres] + k]
        last = torch.searchsorted(shell_sorted, cut_shell, right=True) - 1
        if bool((dist[last] >= d_k1[centres] + _TIE_WINDOW_A - TIE_TOL_A).any()):
            return None
    grid = torch.round(vec[order] / VEC_GRID_A).long()
    ranked = order[
        _stable_lexsort([shell_sorted, *_packed(grid, 18), *_packed_nj_off(nj[order], off[order])])
    ]
    r_c = ci[ranked]  # grouped by centre (shells increase with the centre)
    return ranked, torch.arange(ranked.shape[0], device=dev) - first[r_c]


def _filter_and_cap(
    positions64: torch.Tensor,
    cells64: torch.Tensor,
    pbc: torch.Tensor,
    batch: torch.Tensor,
    num_graphs: int,
    candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    cutoff: float,
    max_neighbors: int | None,
    strict: bool,
) -> DeviceGraph:
    """The graph from candidate pairs ``(centre, neighbour, offset)``: distances from the
    current positions (Å), the cutoff, the cap, and the edge order of ``build_graph``."""
    ci, nj, off = candidates
    cells_p = _periodic_cells(cells64, pbc)
    b_e = batch[ci]
    vec = (
        positions64[nj]
        - positions64[ci]
        + torch.einsum("ek,ekl->el", off.to(positions64.dtype), cells_p[b_e])
    )
    d2 = (vec * vec).sum(-1)
    ok = (d2 <= cutoff * cutoff) & (d2 > MIN_PAIR_DISTANCE_A**2)
    ci, nj, off, vec, d2, b_e = ci[ok], nj[ok], off[ok], vec[ok], d2[ok], b_e[ok]
    if max_neighbors is not None and ci.numel():
        keep = _cap_keep(ci, nj, off, vec, d2, positions64.shape[0], max_neighbors, strict)
        ci, nj, off, b_e = ci[keep], nj[keep], off[keep], b_e[keep]
    n_all = positions64.shape[0]
    order = _stable_lexsort([ci * n_all + nj, *_packed(off, 11)])
    ci, nj, off, b_e = ci[order], nj[order], off[order], b_e[order]
    return DeviceGraph(
        edge_index=torch.stack([nj, ci]),
        cell_offsets=off,
        edge_batch=b_e,
        num_edges=torch.bincount(b_e, minlength=num_graphs),
    )


def neighbor_graph(
    positions: torch.Tensor,
    cells: torch.Tensor,
    pbc: torch.Tensor,
    batch: torch.Tensor,
    num_graphs: int,
    *,
    cutoff: float,
    max_neighbors: int | None,
    strict: bool,
    method: str = "auto",
) -> DeviceGraph:
    """Radius graph of a batch of structures on their device (semantics of ``build_graph``).

    Args:
        positions: ``[N, 3]`` positions (Å, any float dtype; distances are computed in
            float64), structures concatenated in order.
        cells: ``[B, 3, 3]`` cells (Å, rows are lattice vectors; ignored along non-periodic
            axes).
        pbc: ``[B, 3]`` bool (or ``[3]`` for all structures).
        batch: ``[N]`` long structure index of every atom (non-decreasing).
        num_graphs: number of structures B.
        cutoff: radius in Å (pairs with d <= cutoff).
        max_neighbors: per-centre cap k or None.
        strict: exact k nearest with the deterministic tie rule (True) or the reference's
            non-strict rule (False).
        method: candidate search, ``"auto"``, ``"dense"`` or ``"vesin"``.

    Returns:
        :class:`DeviceGraph` with edges ordered by centre, neighbour, then lattice offset, i.e.
        edge for edge what :func:`eqv2calc.graph.build_graph` + ``batch_graphs`` give.
    """
    cutoff, max_neighbors = check_cutoff_and_cap(cutoff, max_neighbors)
    pos64, cells64, pbc = _as_float64(positions, cells, pbc, num_graphs)
    if not bool(torch.isfinite(pos64).all()):
        idx = int(torch.nonzero(~torch.isfinite(pos64).all(-1))[0, 0])
        raise ValueError(f"atom {idx} has a non-finite position (NaN or inf)")
    candidates = candidate_pairs(
        pos64, cells64, pbc, batch, num_graphs, cutoff + _SEARCH_PAD_A, method
    )
    limits = {"cutoff": cutoff, "max_neighbors": max_neighbors, "strict": strict}
    return _filter_and_cap(pos64, cells64, pbc, batch, num_graphs, candidates, **limits)


def _as_float64(
    positions: torch.Tensor, cells: torch.Tensor, pbc, num_graphs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detached float64 positions ``[N, 3]`` (Å) and cells ``[B, 3, 3]`` (Å), pbc ``[B, 3]``."""
    pos64 = positions.detach().to(torch.float64)
    cells64 = cells.detach().to(torch.float64).reshape(-1, 3, 3)
    return pos64, cells64, _as_pbc(pbc, num_graphs, positions.device)


def _as_pbc(pbc, num_graphs: int, device) -> torch.Tensor:
    pbc = torch.as_tensor(pbc, dtype=torch.bool, device=device)
    if pbc.ndim == 0:
        pbc = pbc.expand(3)
    if pbc.ndim == 1:
        pbc = pbc.expand(num_graphs, 3)
    if pbc.shape != (num_graphs, 3):
        raise ValueError(f"pbc must have shape [3] or [{num_graphs}, 3], got {tuple(pbc.shape)}")
    return pbc


class NeighborCache:
    """Verlet-style reuse of neighbour candidates between steps (same edges as a fresh build).

    Keeps every candidate within ``cutoff + skin`` from the last build and, on each call,
    recomputes the distances from the current positions, applies the cutoff, the neighbour cap
    and the edge order. A new search is made when any atom has moved more than ``skin / 2``
    (Å) since the last build, when any cell changed, or when the structures (batch layout,
    atomic count) changed. With ``skin = 0`` every call rebuilds.

    Args:
        cutoff: radius in Å.
        max_neighbors: cap k or None.
        strict: strict cap (see :func:`neighbor_graph`).
        skin: extra search radius in Å.
        method: candidate search (see :func:`candidate_pairs`).

    Attributes:
        builds: number of candidate searches made so far.
        calls: number of graphs returned so far.
    """

    def __init__(
        self,
        cutoff: float,
        max_neighbors: int | None,
        strict: bool,
        skin: float = 1.0,
        method: str = "auto",
    ) -> None:
        self.cutoff, self.max_neighbors = check_cutoff_and_cap(cutoff, max_neighbors)
        self.strict = bool(strict)
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.skin = float(skin)
        self.method = method
        self.builds = 0
        self.calls = 0
        self._ref: tuple | None = None
        self._cand: tuple | None = None

    def reset(self) -> None:
        """Forget the stored candidates (the next call searches again)."""
        self._ref = None
        self._cand = None

    def _stale(self, pos64, cells64, pbc, batch) -> bool:
        if self._ref is None or self.skin == 0.0:
            return True
        ref_pos, ref_cells, ref_pbc, ref_batch = self._ref
        if ref_pos.shape != pos64.shape or ref_cells.shape != cells64.shape:
            return True
        if not torch.equal(ref_batch, batch) or not torch.equal(ref_pbc, pbc):
            return True
        if not torch.equal(ref_cells, cells64):
            return True
        moved2 = ((pos64 - ref_pos) ** 2).sum(-1).amax() if pos64.numel() else pos64.new_zeros(())
        return bool(moved2 > (0.5 * self.skin) ** 2)

    def __call__(
        self,
        positions: torch.Tensor,
        cells: torch.Tensor,
        pbc: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
    ) -> DeviceGraph:
        """Graph for the current positions (arguments as :func:`neighbor_graph`)."""
        pos64, cells64, pbc = _as_float64(positions, cells, pbc, num_graphs)
        if self._stale(pos64, cells64, pbc, batch):
            self._cand = candidate_pairs(
                pos64,
                cells64,
                pbc,
                batch,
                num_graphs,
                self.cutoff + self.skin + _SEARCH_PAD_A,
                self.method,
            )
            self._ref = (pos64.clone(), cells64.clone(), pbc.clone(), batch.clone())
            self.builds += 1
        self.calls += 1
        limits = {"cutoff": self.cutoff, "max_neighbors": self.max_neighbors, "strict": self.strict}
        return _filter_and_cap(pos64, cells64, pbc, batch, num_graphs, self._cand, **limits)
