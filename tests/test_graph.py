"""Tests for eqv2calc.graph: parity with the fairchem 1.10 fixtures, brute-force checks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.io import read

from eqv2calc import graph as graph_mod
from eqv2calc.graph import Graph, batch_graphs, build_graph, graph_from_atoms

DATA = Path(__file__).parent / "data" / "eqv2"
REFERENCE = json.loads((DATA / "reference.json").read_text())
CASES = REFERENCE["cases"]


def _case_id(case: dict) -> str:
    return f"{case['checkpoint']}__{case['structure']}"


def _edge_keys(edge_index: np.ndarray, offsets: np.ndarray) -> list[tuple[int, ...]]:
    """(centre i, neighbour j, n1, n2, n3) per edge, in edge order."""
    return [
        (int(i), int(j), *map(int, n)) for j, i, n in zip(edge_index[0], edge_index[1], offsets)
    ]


def _fixture_graph(case: dict) -> tuple[Graph, dict]:
    sel = case["neighbor_selection"]
    npz = dict(np.load(DATA / case["edges_file"]))
    pbc = REFERENCE["structures"][case["structure"]]["pbc"]
    g = build_graph(
        npz["pos_float32"],
        npz["cell_float32"][0],
        pbc,
        cutoff=sel["cutoff"],
        max_neighbors=sel["max_neighbors"],
        strict=sel["mode"] == "strict",
    )
    return g, npz


def _assert_conventions(g: Graph, pos: np.ndarray, cell: np.ndarray) -> None:
    """Edge vectors follow x_j + n @ cell - x_i and edges are sorted by (i, j, n)."""
    j, i = g.edge_index
    expected = pos[j] + g.cell_offsets @ cell - pos[i]
    np.testing.assert_allclose(g.edge_vec, expected, atol=1e-9)
    keys = _edge_keys(g.edge_index, g.cell_offsets)
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert g.edge_index.dtype == np.int64 and g.cell_offsets.dtype == np.int64
    assert g.edge_vec.dtype == np.float64


# --------------------------------------------------------------------------- fixtures


NON_TIE = [c for c in CASES if not c["neighbor_selection"].get("tie_at_cut", False)]
TIE = [c for c in CASES if c["neighbor_selection"].get("tie_at_cut", False)]


def test_fixture_case_split():
    assert len(CASES) == 24
    assert {c["structure"] for c in TIE} == {"bulk_cu_fcc_conv", "bulk_cu_fcc_prim"}
    assert all(c["neighbor_selection"]["mode"] == "strict" for c in TIE)


@pytest.mark.parametrize("case", NON_TIE, ids=_case_id)
def test_matches_reference_edges(case):
    g, npz = _fixture_graph(case)
    # Same edges, same order, same offsets.
    assert g.edge_index.shape == npz["edge_index"].shape
    np.testing.assert_array_equal(g.edge_index, npz["edge_index"])
    np.testing.assert_array_equal(g.cell_offsets, npz["cell_offsets"])
    np.testing.assert_allclose(g.edge_vec, npz["edge_distance_vec"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(g.edge_distance, npz["edge_distance"], atol=1e-5, rtol=0)
    assert g.num_edges == case["num_edges"]
    np.testing.assert_array_equal(g.neighbors_per_atom(), case["neighbors_per_atom"])
    _assert_conventions(g, npz["pos_float32"].astype(np.float64), npz["cell_float32"][0])


@pytest.mark.parametrize("case", TIE, ids=_case_id)
def test_tie_cases_match_outside_the_tied_shell(case):
    g, npz = _fixture_graph(case)
    assert g.num_edges == case["num_edges"]
    np.testing.assert_array_equal(g.neighbors_per_atom(), case["neighbors_per_atom"])
    _assert_conventions(g, npz["pos_float32"].astype(np.float64), npz["cell_float32"][0])

    ref_keys = _edge_keys(npz["edge_index"], npz["cell_offsets"])
    ref_d = npz["edge_distance"].astype(np.float64)
    d_cut = ref_d.max()  # the tied (third) shell is the farthest one kept
    ours = dict(zip(_edge_keys(g.edge_index, g.cell_offsets), g.edge_distance))
    ref = dict(zip(ref_keys, ref_d))
    inner_ours = {k for k, d in ours.items() if d < d_cut - 1e-4}
    inner_ref = {k for k, d in ref.items() if d < d_cut - 1e-4}
    assert inner_ours == inner_ref
    assert len(inner_ref) < len(ref)  # the tie is really at the cut
    # The rest of our edges lie on the tied shell, as many per centre as the reference's.
    outer_ours = [k for k in ours if k not in inner_ours]
    outer_ref = [k for k in ref if k not in inner_ref]
    np.testing.assert_allclose([ours[k] for k in outer_ours], d_cut, atol=1e-5)
    for centre in range(g.num_atoms):
        assert sum(k[0] == centre for k in outer_ours) == sum(k[0] == centre for k in outer_ref)


def _canonical(g: Graph) -> list[tuple]:
    """Translation-invariant description of a graph: (i, j, rounded edge vector)."""
    vec = np.round(g.edge_vec, 4) + 0.0
    return sorted(
        (int(i), int(j), *map(float, v)) for j, i, v in zip(g.edge_index[0], g.edge_index[1], vec)
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", TIE, ids=_case_id)
def test_tie_choice_is_translation_invariant(case, dtype):
    """Same edges for 10 rigidly translated + wrapped copies (float32: rounded as in a
    float32 pipeline, so positions carry ~1e-7 Å noise)."""
    g, npz = _fixture_graph(case)
    pos = npz["pos_float32"].astype(dtype)
    cell = npz["cell_float32"][0].astype(dtype)
    sel = case["neighbor_selection"]
    reference = _canonical(g)
    rng = np.random.default_rng(12345)
    wrapped_differently = 0
    for _ in range(10):
        shifted = pos + rng.uniform(-7.0, 7.0, size=3).astype(dtype)
        frac = np.linalg.solve(cell.T.astype(np.float64), shifted.T.astype(np.float64)).T
        wrapped = ((frac % 1.0).astype(dtype) @ cell).astype(dtype)
        g2 = build_graph(
            wrapped,
            cell,
            True,
            cutoff=sel["cutoff"],
            max_neighbors=sel["max_neighbors"],
            strict=True,
        )
        assert _canonical(g2) == reference
        wrapped_differently += not np.array_equal(g2.cell_offsets, g.cell_offsets)
    if g.num_atoms > 1:  # (a lone atom's images do not depend on where it sits)
        assert wrapped_differently > 0  # wrapping changed the offsets, not the choice


def test_tie_choice_is_permutation_invariant():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    g = graph_from_atoms(atoms, cutoff=12.0, max_neighbors=20, strict=True)
    perm = np.random.default_rng(3).permutation(len(atoms))
    g2 = graph_from_atoms(atoms[perm], cutoff=12.0, max_neighbors=20, strict=True)
    remapped = Graph(
        edge_index=perm[g2.edge_index],
        cell_offsets=g2.cell_offsets,
        edge_vec=g2.edge_vec,
        num_atoms=g2.num_atoms,
    )
    assert _canonical(remapped) == _canonical(g)


def test_tie_window_fallback_gives_same_edges(monkeypatch):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    g = graph_from_atoms(atoms, cutoff=12.0, max_neighbors=20, strict=True)
    monkeypatch.setattr(graph_mod, "_TIE_WINDOW_A", 0.0)  # forces the full-ranking path
    g2 = graph_from_atoms(atoms, cutoff=12.0, max_neighbors=20, strict=True)
    np.testing.assert_array_equal(g.edge_index, g2.edge_index)
    np.testing.assert_array_equal(g.cell_offsets, g2.cell_offsets)
    assert np.all(g.neighbors_per_atom() == 20)


# --------------------------------------------------------------------------- brute force


def _brute_force(pos, cell, pbc, cutoff, max_neighbors=None, strict=True):
    """O(N² · images) reference: set of (i, j, n1, n2, n3) edges."""
    pos = np.asarray(pos, float)
    cell = np.asarray(cell, float)
    frac_span = 0.0
    reps = [0, 0, 0]
    if any(pbc):
        recip = np.linalg.inv(cell).T  # rows b_k with a_i . b_k = delta_ik
        frac = pos @ np.linalg.inv(cell)
        frac_span = np.ptp(frac, axis=0) if len(pos) else np.zeros(3)
        for k in range(3):
            if pbc[k]:
                reps[k] = int(np.ceil(cutoff * np.linalg.norm(recip[k]) + frac_span[k])) + 1
    shifts = list(itertools.product(*(range(-r, r + 1) for r in reps)))
    per_centre: dict[int, list[tuple[float, tuple]]] = {i: [] for i in range(len(pos))}
    for i, j in itertools.product(range(len(pos)), repeat=2):
        for n in shifts:
            d = np.linalg.norm(pos[j] + np.array(n) @ cell - pos[i])
            if 0.01 < d <= cutoff:
                per_centre[i].append((d, (i, j, *n)))
    edges = set()
    for cands in per_centre.values():
        cands.sort()
        if max_neighbors is None or len(cands) <= max_neighbors:
            edges.update(key for _, key in cands)
        elif strict:
            edges.update(key for _, key in cands[:max_neighbors])
        else:
            thr = cands[max_neighbors][0] ** 2 + 0.01
            edges.update(key for d, key in cands if d * d <= thr)
    return edges


def _random_triclinic(seed: int, n_atoms: int = 5):
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(3.0, 4.5, 3)) + np.triu(rng.uniform(-1.2, 1.2, (3, 3)), 1)
    cell = cell + np.tril(rng.uniform(-0.4, 0.4, (3, 3)), -1)
    frac = rng.uniform(-0.6, 1.6, (n_atoms, 3))  # deliberately not wrapped
    return frac @ cell, cell


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "pbc", [(True, True, True), (True, False, True), (False, True, False)], ids=str
)
@pytest.mark.parametrize("cap", [None, ("strict", 9), ("non-strict", 9)], ids=str)
def test_against_brute_force(seed, pbc, cap):
    pos, cell = _random_triclinic(seed)
    cutoff = 5.5
    max_n = None if cap is None else cap[1]
    strict = cap is not None and cap[0] == "strict"
    g = build_graph(pos, cell, pbc, cutoff=cutoff, max_neighbors=max_n, strict=strict)
    expected = _brute_force(pos, cell, pbc, cutoff, max_n, strict)
    assert set(_edge_keys(g.edge_index, g.cell_offsets)) == expected
    _assert_conventions(g, pos, cell)
    assert not g.cell_offsets[:, ~np.array(pbc)].any()
    if cap is not None:
        over = g.neighbors_per_atom() >= max_n
        assert over.any()  # the cap is exercised
        if strict:
            assert (g.neighbors_per_atom() <= max_n).all()


def test_cutoff_is_inclusive():
    pos = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    g = build_graph(pos, None, False, cutoff=3.0, max_neighbors=None, strict=False)
    assert set(_edge_keys(g.edge_index, g.cell_offsets)) == {(0, 1, 0, 0, 0), (1, 0, 0, 0, 0)}
    g = build_graph(pos, None, False, cutoff=2.999, max_neighbors=None, strict=False)
    assert g.num_edges == 0


def test_near_overlapping_atoms_are_dropped_with_warning():
    pos = np.array([[0.0, 0.0, 0.0], [0.005, 0.0, 0.0], [1.5, 0.0, 0.0]])
    with pytest.warns(RuntimeWarning, match="atoms 0 and 1"):
        g = build_graph(pos, None, False, cutoff=3.0, max_neighbors=None, strict=False)
    pairs = {(int(i), int(j)) for j, i in g.edge_index.T}
    assert (0, 1) not in pairs and (1, 0) not in pairs
    assert {(0, 2), (2, 0), (1, 2), (2, 1)} <= pairs
    # 0.02 Å apart is above the 0.01 Å threshold: an edge.
    pos[1, 0] = 0.02
    g = build_graph(pos, None, False, cutoff=3.0, max_neighbors=None, strict=False)
    assert (1, 0) in {(int(i), int(j)) for j, i in g.edge_index.T}


def test_self_images_in_a_small_cell():
    # One atom in a 2.5 Å cubic cell: all edges are images of itself, none at zero offset.
    g = build_graph(
        [[0.3, 0.2, 0.1]], np.eye(3) * 2.5, True, cutoff=5.0, max_neighbors=None, strict=False
    )
    assert g.num_edges == len(_brute_force([[0.3, 0.2, 0.1]], np.eye(3) * 2.5, [True] * 3, 5.0))
    assert g.cell_offsets.any(axis=1).all()
    assert (g.edge_index == 0).all()


# --------------------------------------------------------------------------- pbc handling


@pytest.mark.parametrize("cap", [(None, False), (20, True), (20, False)], ids=str)
def test_slab_xy_periodic_equals_full_pbc_with_vacuum(cap):
    cutoff = 6.0
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=4.0)  # 8 Å vacuum gap > cutoff
    slab.rattle(0.02, seed=4)
    assert list(slab.pbc) == [True, True, False]
    kw = dict(cutoff=cutoff, max_neighbors=cap[0], strict=cap[1])
    g_xy = graph_from_atoms(slab, **kw)
    full = slab.copy()
    full.pbc = True
    g_full = graph_from_atoms(full, **kw)
    np.testing.assert_array_equal(g_xy.edge_index, g_full.edge_index)
    np.testing.assert_array_equal(g_xy.cell_offsets, g_full.cell_offsets)
    np.testing.assert_allclose(g_xy.edge_vec, g_full.edge_vec, atol=1e-12)
    assert not g_xy.cell_offsets[:, 2].any()
    assert g_xy.cell_offsets[:, :2].any()
    # The non-periodic lattice vector is irrelevant, even when it is zero.
    flat = slab.copy()
    flat.cell[2] = 0.0
    g_flat = graph_from_atoms(flat, **kw)
    np.testing.assert_array_equal(g_flat.edge_index, g_xy.edge_index)
    np.testing.assert_array_equal(g_flat.cell_offsets, g_xy.cell_offsets)


def test_molecule_without_cell_matches_brute_force():
    atoms = read(DATA / "structures" / "molecule_ethanol_nopbc.extxyz")
    assert not atoms.pbc.any() and not atoms.cell.array.any()
    g = graph_from_atoms(atoms, cutoff=2.2, max_neighbors=None, strict=False)
    expected = _brute_force(atoms.positions, np.zeros((3, 3)), [False] * 3, 2.2)
    assert set(_edge_keys(g.edge_index, g.cell_offsets)) == expected
    assert 0 < g.num_edges < 9 * 8
    assert not g.cell_offsets.any()
    _assert_conventions(g, atoms.positions, atoms.cell.array)
    g_none = build_graph(atoms.positions, None, False, cutoff=2.2, max_neighbors=None, strict=False)
    np.testing.assert_array_equal(g_none.edge_index, g.edge_index)


def test_unwrapped_positions_shift_offsets_not_vectors():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=2)
    g = graph_from_atoms(atoms, cutoff=6.0, max_neighbors=None, strict=False)
    moved = atoms.copy()
    moved.positions[1] += atoms.cell[0] - 2 * atoms.cell[2]
    g2 = graph_from_atoms(moved, cutoff=6.0, max_neighbors=None, strict=False)
    assert _canonical(g2) == _canonical(g)
    _assert_conventions(g2, moved.positions, moved.cell.array)
    assert not np.array_equal(g2.cell_offsets, g.cell_offsets)
    # Far-drifted (unwrapped MD-style) positions: same edges, offsets absorb the drift.
    drift = atoms.copy()
    drift.positions += (np.arange(4)[:, None] * [300, -250, 800]) @ atoms.cell.array
    drift.positions += [1234.5, -777.25, 42.0]  # plus a rigid translation
    g3 = graph_from_atoms(drift, cutoff=6.0, max_neighbors=None, strict=False)
    assert _canonical(g3) == _canonical(g)
    _assert_conventions(g3, drift.positions, drift.cell.array)


def test_empty_and_single_atom():
    g = build_graph(np.zeros((0, 3)), np.eye(3) * 3, True, cutoff=5.0, max_neighbors=5, strict=True)
    assert g.num_edges == 0 and g.num_atoms == 0 and g.edge_index.shape == (2, 0)
    g = build_graph([[0.0, 0.0, 0.0]], None, False, cutoff=5.0, max_neighbors=5, strict=True)
    assert g.num_edges == 0 and g.neighbors_per_atom().tolist() == [0]


# --------------------------------------------------------------------------- errors


def test_error_non_finite_position_names_atom():
    pos = np.zeros((5, 3))
    pos[:, 0] = np.arange(5)
    pos[3, 1] = np.nan
    with pytest.raises(ValueError, match="atom 3 has a non-finite position"):
        build_graph(pos, None, False, cutoff=5.0, max_neighbors=None, strict=False)
    pos[3, 1] = np.inf
    with pytest.raises(ValueError, match="atom 3"):
        build_graph(pos, None, False, cutoff=5.0, max_neighbors=None, strict=False)


def test_error_periodic_axis_without_lattice_vector():
    cell = np.diag([3.0, 3.0, 0.0])
    with pytest.raises(ValueError, match=r"pbc\[2\] is True but cell vector 2"):
        build_graph([[0.0, 0.0, 0.0]], cell, True, cutoff=5.0, max_neighbors=None, strict=False)
    with pytest.raises(ValueError, match="linearly dependent"):
        build_graph(
            [[0.0, 0.0, 0.0]],
            [[3, 0, 0], [6, 0, 0], [0, 0, 3]],
            True,
            cutoff=5.0,
            max_neighbors=None,
            strict=False,
        )
    # Fine when that axis is not periodic.
    g = build_graph(
        [[0.0, 0.0, 0.0]], cell, [True, True, False], cutoff=5.0, max_neighbors=None, strict=False
    )
    # Square 3 Å net: 4 images at 3 Å and 4 at 3·√2 ≈ 4.24 Å lie within 5 Å.
    assert g.num_edges == 8
    np.testing.assert_allclose(np.sort(g.edge_distance), [3.0] * 4 + [np.sqrt(18.0)] * 4)


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan"), float("inf")])
def test_error_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        build_graph([[0.0, 0.0, 0.0]], None, False, cutoff=cutoff, max_neighbors=None, strict=False)


@pytest.mark.parametrize("max_neighbors", [0, -3, 2.5])
def test_error_bad_max_neighbors(max_neighbors):
    with pytest.raises(ValueError, match="max_neighbors must be a positive integer"):
        build_graph(
            [[0.0, 0.0, 0.0]], None, False, cutoff=3.0, max_neighbors=max_neighbors, strict=False
        )


def test_error_bad_shapes():
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        build_graph(np.zeros((4, 2)), None, False, cutoff=3.0, max_neighbors=None, strict=False)
    with pytest.raises(ValueError, match="cell must have shape"):
        build_graph(np.zeros((1, 3)), np.eye(2), True, cutoff=3.0, max_neighbors=None, strict=False)


# --------------------------------------------------------------------------- batching


def test_batch_graphs():
    mol = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.03, seed=7)
    graphs = [graph_from_atoms(a, cutoff=5.0, max_neighbors=12, strict=True) for a in (mol, cu)]
    b = batch_graphs(graphs)
    assert b.num_graphs == 2 and b.total_atoms == 7
    np.testing.assert_array_equal(b.num_atoms, [3, 4])
    np.testing.assert_array_equal(b.batch, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(b.num_edges, [graphs[0].num_edges, graphs[1].num_edges])
    np.testing.assert_array_equal(b.atom_ptr, [0, 3, 7])
    e0 = graphs[0].num_edges
    np.testing.assert_array_equal(b.edge_index[:, :e0], graphs[0].edge_index)
    np.testing.assert_array_equal(b.edge_index[:, e0:], graphs[1].edge_index + 3)
    np.testing.assert_array_equal(b.cell_offsets[e0:], graphs[1].cell_offsets)
    np.testing.assert_array_equal(b.edge_batch, np.repeat([0, 1], b.num_edges))
    np.testing.assert_array_equal(b.batch[b.edge_index], b.edge_batch[None].repeat(2, 0))
    np.testing.assert_array_equal(
        b.neighbors_per_atom(),
        np.concatenate([graphs[0].neighbors_per_atom(), graphs[1].neighbors_per_atom()]),
    )
    empty = batch_graphs([])
    assert empty.num_graphs == 0 and empty.edge_index.shape == (2, 0)
