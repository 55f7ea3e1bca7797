"""Chunked evaluation (eqv2calc.model.chunking): results must not depend on the chunk sizes.

The model evaluates per-edge work (attention, edge-degree embedding, stress head) and the
feed-forward networks in chunks. Here the same random-weight model runs with chunks of a few
edges/nodes (many chunks, ragged last chunk) and with one chunk for everything, in float64.
"""

from __future__ import annotations

import pytest
import torch
from eqv2_reference import structure

from eqv2calc.graph import batch_graphs, graph_from_atoms
from eqv2calc.model import chunking
from eqv2calc.model.backbone import GraphInput
from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.model.potential import EquiformerV2Potential, HeadSpec

SMALL = dict(
    num_layers=2,
    lmax_list=[4],
    mmax_list=[2],
    sphere_channels=16,
    attn_hidden_channels=16,
    num_heads=2,
    attn_alpha_channels=8,
    attn_value_channels=4,
    ffn_hidden_channels=16,
    edge_channels=16,
    grid_resolution=18,
    max_neighbors=12,
    max_radius=5.0,
    norm_type="layer_norm_sh",
    use_grid_mlp=True,
    use_sep_s2_act=True,
)
HEADS = {
    "energy": HeadSpec("energy"),
    "forces": HeadSpec("forces"),
    "stress": HeadSpec("rank2", {"decompose": True, "use_source_target_embedding": True}),
}


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
