"""eqv2calc.neighbors (device graphs) against eqv2calc.graph, edge for edge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule

from eqv2calc.graph import batch_graphs, build_graph
from eqv2calc.neighbors import NeighborCache, neighbor_graph

DATA = Path(__file__).parent / "data" / "eqv2"
REFERENCE = json.loads((DATA / "reference.json").read_text())
CASES = REFERENCE["cases"]


def _methods() -> list[str]:
    methods = ["dense", "host"]
    try:
        import vesin_torch  # noqa: F401

        methods.append("vesin")
    except ImportError:
        pass
    return methods


def _batch_tensors(structs):
    """(positions, cells, pbc, batch) tensors in float64 from (pos, cell, pbc) triples."""
    pos = torch.tensor(np.concatenate([s[0] for s in structs]), dtype=torch.float64)
    cells = torch.tensor(np.stack([s[1] for s in structs]), dtype=torch.float64)
    pbc = torch.tensor(np.stack([np.broadcast_to(s[2], 3) for s in structs]), dtype=torch.bool)
    batch = torch.repeat_interleave(
        torch.arange(len(structs)), torch.tensor([len(s[0]) for s in structs])
    )
    return pos, cells, pbc, batch


def _assert_same(structs, cutoff, k, strict, method, dg=None):
    ref = batch_graphs(
        [build_graph(p, c, b, cutoff=cutoff, max_neighbors=k, strict=strict) for p, c, b in structs]
    )
    if dg is None:
        pos, cells, pbc, batch = _batch_tensors(structs)
        dg = neighbor_graph(
            pos,
            cells,
            pbc,
            batch,
            len(structs),
            cutoff=cutoff,
            max_neighbors=k,
            strict=strict,
            method=method,
        )
    np.testing.assert_array_equal(dg.edge_index.numpy(), ref.edge_index)
    np.testing.assert_array_equal(dg.cell_offsets.numpy(), ref.cell_offsets)
    np.testing.assert_array_equal(dg.edge_batch.numpy(), ref.edge_batch)
    np.testing.assert_array_equal(dg.num_edges.numpy(), ref.num_edges)
    return ref


@pytest.mark.parametrize("method", _methods())
def test_fixture_structures_match_graph_builder(method):
    """Every fixture case (four checkpoints' settings x six structures), batched per setting."""
    by_setting: dict[tuple, list] = {}
    for case in CASES:
        sel = case["neighbor_selection"]
        npz = np.load(DATA / case["edges_file"])
        pbc = np.asarray(REFERENCE["structures"][case["structure"]]["pbc"], dtype=bool)
        key = (sel["cutoff"], sel["max_neighbors"], sel["mode"] == "strict")
        by_setting.setdefault(key, []).append(
            (npz["pos_float32"].astype(np.float64), npz["cell_float32"][0].astype(np.float64), pbc)
        )
    assert len(by_setting) >= 2
    for (cutoff, k, strict), structs in by_setting.items():
        ref = _assert_same(structs, cutoff, k, strict, method)
        assert ref.edge_index.shape[1] > 0


def _random_structures(rng: np.random.Generator, count: int):
    structs = []
    for s in range(count):
        n = int(rng.integers(1, 14))
        cell = np.diag(rng.uniform(2.5, 7.0, 3)) + rng.uniform(-1.2, 1.2, (3, 3))
        pbc = rng.random(3) < 0.6 if s % 3 else np.array([True, True, True])
        frac = rng.random((n, 3))
        pos = frac @ cell + rng.normal(0, 3.0, (n, 3)) * (s % 2)  # some unwrapped positions
        structs.append((pos, cell, pbc))
    return structs


@pytest.mark.parametrize("method", _methods())
@pytest.mark.parametrize("strict", [True, False])
def test_random_cells_mixed_pbc_match(method, strict):
    rng = np.random.default_rng(7 + int(strict))
    structs = _random_structures(rng, 12)
    for k in (None, 3, 12):
        _assert_same(structs, 4.5, k, strict, method)


@pytest.mark.parametrize("method", _methods())
def test_perfect_crystal_ties_follow_the_tie_rule(method):
    """fcc cut inside a shell (k=20 keeps 2 of the 24 third-shell atoms), translated copies."""
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    shifted = a.copy()
    shifted.translate([0.37, -1.1, 2.3])
    slab = fcc111("Pt", size=(3, 3, 3), vacuum=6.0)
    mol = molecule("CH3CH2OH")
    structs = [
        (x.get_positions(), x.cell.array, x.pbc)
        for x in (a, shifted, slab, bulk("Cu", "fcc", a=3.6))
    ] + [(mol.get_positions(), np.zeros((3, 3)), np.zeros(3, bool))]
    for k, strict in ((20, True), (20, False), (8, True)):
        _assert_same(structs, 6.0, k, strict, method)


def test_small_cell_large_cutoff_many_images():
    """A 2.5 Å primitive cell with a 12 Å cutoff needs +-5 images per axis."""
    cu = bulk("Cu", "fcc", a=3.6)
    structs = [(cu.get_positions(), cu.cell.array, cu.pbc)]
    _assert_same(structs, 12.0, 20, True, "dense")
    _assert_same(structs, 12.0, None, True, "dense")


def test_chunked_dense_search_matches(monkeypatch):
    """The dense search split into many chunks (one large structure split by centres too)."""
    import eqv2calc.neighbors as nb

    monkeypatch.setattr(nb, "DENSE_CHUNK", 500)
    slab = fcc111("Cu", size=(3, 3, 3), vacuum=5.0)
    structs = [(slab.get_positions(), slab.cell.array, slab.pbc)] + _random_structures(
        np.random.default_rng(3), 5
    )
    _assert_same(structs, 5.0, 12, True, "dense")


def test_skin_reuse_gives_fresh_build_edges():
    """Reused candidates (no atom moved > skin/2) give the same graph as a fresh search."""
    rng = np.random.default_rng(11)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    structs = [(x.get_positions(), x.cell.array, x.pbc) for x in (slab, cu)]
    pos, cells, pbc, batch = _batch_tensors(structs)
    cache = NeighborCache(cutoff=5.0, max_neighbors=12, strict=True, skin=1.0, method="dense")
    for _step in range(8):
        pos = pos + torch.tensor(rng.normal(0, 0.06, pos.shape))
        dg = cache(pos, cells, pbc, batch, 2)
        moved = [(pos[batch == b].numpy(), structs[b][1], structs[b][2]) for b in range(2)]
        _assert_same(moved, 5.0, 12, True, "dense", dg=dg)
    assert cache.builds < cache.calls  # the list was reused at least once
    # a changed cell forces a new search
    builds = cache.builds
    cache(pos, cells * 1.01, pbc, batch, 2)
    assert cache.builds == builds + 1


def test_bad_inputs_are_named():
    pos = torch.zeros(2, 3, dtype=torch.float64)
    pos[1, 0] = 1.0
    batch = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="zero length"):
        neighbor_graph(
            pos,
            torch.zeros(1, 3, 3),
            torch.tensor([True, False, False]),
            batch,
            1,
            cutoff=3.0,
            max_neighbors=None,
            strict=False,
        )
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_graph(
            pos, torch.eye(3)[None], False, batch, 1, cutoff=-1, max_neighbors=None, strict=False
        )
    pos[1, 1] = float("nan")
    with pytest.raises(ValueError, match="atom 1"):
        neighbor_graph(
            pos, torch.eye(3)[None], False, batch, 1, cutoff=3, max_neighbors=None, strict=False
        )


def test_tie_window_fallback_ranks_everything(monkeypatch):
    """With a vanishing tie window every tied cut takes the rank-all path: same edges."""
    import eqv2calc.neighbors as nb

    monkeypatch.setattr(nb, "_TIE_WINDOW_A", 1e-9)
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    structs = [(a.get_positions(), a.cell.array, a.pbc)]
    _assert_same(structs, 6.0, 20, True, "dense")
