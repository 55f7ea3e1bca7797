"""Chunked evaluation (eqv2calc.model.chunking): results must not depend on the chunk sizes.

The model evaluates per-edge work (attention, edge-degree embedding, stress head) and the
feed-forward networks in chunks. Here the same random-weight model runs with chunks of a few
edges/nodes (many chunks, ragged last chunk) and with one chunk for everything, in float64.
"""

from __future__ import annotations

import pytest
import torch
from eqv2_reference import ALL_CHECKPOINTS, all_cases, fixture_graph, loaded, structure

from eqv2calc.graph import batch_graphs, graph_from_atoms
from eqv2calc.model import chunking
from eqv2calc.model.backbone import GraphInput
from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.model.constants import ExactConstants
from eqv2calc.model.potential import EquiformerV2Potential, HeadSpec

SMALL = dict(
    num_layers=2,
    lmax=4,
    mmax=2,
    sphere_channels=16,
    attn_hidden_channels=16,
    num_heads=2,
    attn_alpha_channels=8,
    attn_value_channels=4,
    ffn_hidden_channels=16,
    edge_channels=16,
    grid_resolution=18,
    max_neighbors=12,
    cutoff=5.0,
    norm_type="layer_norm_sh",
    use_grid_mlp=True,
    use_sep_s2_act=True,
)
HEADS = {
    "energy": HeadSpec("energy"),
    "forces": HeadSpec("forces"),
    "stress": HeadSpec("rank2", {"decompose": True, "use_source_target_embedding": True}),
}


#: structures batched together in the float64 test (periodic slab, molecule, strained crystal)
BATCH_STRUCTURES = ("slab_cu111_co", "molecule_ethanol_nopbc", "bulk_mgo_strained")


def cases_of(name: str) -> list[dict]:
    return [c for c in all_cases() if c["checkpoint"] == name]


def chunk_sizes(monkeypatch, edges: int, nodes: int) -> None:
    for name in ("EDGE_CHUNK_SIZE", "EDGE_CHUNK_SIZE_GPU"):
        monkeypatch.setattr(chunking, name, edges)
    for name in ("NODE_CHUNK_SIZE", "NODE_CHUNK_SIZE_GPU"):
        monkeypatch.setattr(chunking, name, nodes)


def _graph(dtype: torch.dtype) -> GraphInput:
    atoms = [structure("slab_cu111_co"), structure("molecule_ethanol_nopbc")]
    graphs = batch_graphs(
        [graph_from_atoms(a, cutoff=5.0, max_neighbors=12, strict=True) for a in atoms]
    )
    return GraphInput(
        atomic_numbers=torch.cat([torch.as_tensor(a.numbers) for a in atoms]),
        edge_index=torch.as_tensor(graphs.edge_index),
        edge_vec=torch.as_tensor(graphs.edge_vec).to(dtype),
        batch=torch.as_tensor(graphs.batch),
        num_graphs=2,
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_gate_act": True, "use_grid_mlp": False},
        {"use_sep_s2_act": False, "use_grid_mlp": False},
        {"use_m_share_rad": True, "norm_type": "rms_norm_sh"},
    ],
    ids=["grid_mlp_sep_s2", "gate", "s2", "m_share_rad"],
)
def test_outputs_do_not_depend_on_chunk_sizes(monkeypatch, options):
    torch.manual_seed(0)
    model = (
        EquiformerV2Potential(EquiformerV2Config(**{**SMALL, **options}), heads=HEADS)
        .double()
        .eval()
    )
    graph = _graph(torch.float64)
    assert graph.edge_index.shape[1] > 300 and graph.atomic_numbers.shape[0] > 40
    with torch.inference_mode():
        chunk_sizes(monkeypatch, 10**9, 10**9)
        whole = model(graph)
        chunk_sizes(monkeypatch, 37, 5)  # many chunks, the last one ragged
        chunked = model(graph)
    assert set(whole) == {"energy", "forces", "stress"}
    for key in whole:
        assert whole[key].abs().max() > 0
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-12, atol=1e-12)


def test_chunks_cover_the_range_once():
    assert chunking.chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunking.chunks(8, 4) == [(0, 4), (4, 8)]
    assert chunking.chunks(0, 4) == []
    cpu = torch.device("cpu")
    assert chunking.edge_chunks(chunking.EDGE_CHUNK_SIZE + 1, cpu)[-1] == (
        chunking.EDGE_CHUNK_SIZE,
        chunking.EDGE_CHUNK_SIZE + 1,
    )


def _concatenate(graphs: list[GraphInput]) -> GraphInput:
    """One batch from single-structure graphs (node indices offset, structure ids in order)."""
    offsets = torch.cumsum(torch.tensor([0] + [g.atomic_numbers.shape[0] for g in graphs]), 0)
    return GraphInput(
        atomic_numbers=torch.cat([g.atomic_numbers for g in graphs]),
        edge_index=torch.cat([g.edge_index + offsets[i] for i, g in enumerate(graphs)], dim=1),
        edge_vec=torch.cat([g.edge_vec for g in graphs]),
        batch=torch.cat([torch.full_like(g.batch, i) for i, g in enumerate(graphs)]),
        num_graphs=len(graphs),
    )


def _assert_relative(a: torch.Tensor, b: torch.Tensor, what: str, rel: float = 1e-12) -> None:
    scale = float(b.abs().max())
    assert scale > 0, what
    assert float((a - b).abs().max()) <= rel * scale, (what, float((a - b).abs().max()), scale)


@pytest.mark.parametrize("name", ALL_CHECKPOINTS)
def test_float64_outputs_do_not_depend_on_chunks_or_batching(monkeypatch, name):
    """float64 is float64: every fixture checkpoint gives the same outputs to 1e-12 relative
    whether edges/nodes are evaluated in one chunk or many, and whether a structure is
    evaluated alone or batched with others. Its constants (grid matrices, rescale factors,
    norm balances, tensor bases) carry float64 digits, not float32 values widened."""
    model = loaded(name, torch.float64).model
    constants = [
        (module_name, const)
        for module_name, module in model.named_modules()
        if isinstance(module, ExactConstants)
        for const in module._exact_constants
    ]
    assert {c for _, c in constants} >= {"to_flat", "from_flat", "stress_iso_basis"}
    for module_name, const in constants:
        value = model.get_submodule(module_name).get_buffer(const)
        assert value.dtype == torch.float64
        if const != "inverse_rescale" or model.config.mmax < model.config.lmax:
            assert (value.float().double() != value).any(), (module_name, const)
    picked = [c for c in cases_of(name) if c["structure"] in BATCH_STRUCTURES]
    singles = [fixture_graph(c, torch.float64) for c in picked]
    with torch.inference_mode():
        chunk_sizes(monkeypatch, 10**9, 10**9)
        alone = [model(g) for g in singles]
        whole = model(_concatenate(singles))
        chunk_sizes(monkeypatch, 23, 3)  # many chunks, ragged, crossing structure boundaries
        chunked = model(_concatenate(singles))
    counts = [g.atomic_numbers.shape[0] for g in singles]
    for key in whole:
        _assert_relative(chunked[key], whole[key], f"{key} chunked")
        parts = torch.split(whole[key], counts) if key == "forces" else whole[key].unbind(0)
        for i, part in enumerate(parts):
            single = alone[i][key] if key == "forces" else alone[i][key][0]
            _assert_relative(part, single, f"{key} batched, structure {i}")


def test_cpu_chunks_grow_only_for_small_rows():
    cpu = torch.device("cpu")
    base = chunking.EDGE_CHUNK_SIZE
    # rows of the bundled model's attention (42 grid points x 32 channels, float32): 4x the base
    small = 42 * 32 * 4
    assert chunking.edge_chunks(10**6, cpu, small)[0] == (0, chunking.CPU_SCALE_MAX * base)
    # rows of the 31M model (~0.2 MB per edge): the base size
    assert chunking.edge_chunks(10**6, cpu, 200_000)[0] == (0, base)
    # a chunk never holds more than CPU_CHUNK_BYTES when it grows
    rows = chunking.CPU_CHUNK_BYTES // (2 * base)
    size = chunking.edge_chunks(10**6, cpu, rows)[0][1]
    assert base < size <= chunking.CPU_SCALE_MAX * base and size * rows <= chunking.CPU_CHUNK_BYTES
    assert chunking.node_chunks(10**6, cpu)[0] == (0, chunking.NODE_CHUNK_SIZE)
