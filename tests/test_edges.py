"""Edge vectors from tensors equal the neighbour search's own (numpy) vectors."""

import numpy as np
import torch
from ase.build import bulk, fcc111, molecule

from eqv2calc.edges import edge_vectors
from eqv2calc.graph import batch_graphs, graph_from_atoms


def test_edge_vectors_match_graph_builder():
    structures = [
        bulk("Cu", "fcc", a=3.6),
        fcc111("Pt", size=(2, 2, 3), vacuum=6.0),
        molecule("CH3CH2OH"),
    ]
    structures[0].rattle(0.05, seed=1)
    structures[1].rattle(0.05, seed=2)
    graphs = [graph_from_atoms(a, cutoff=6.0, max_neighbors=20, strict=False) for a in structures]
    batched = batch_graphs(graphs)
    positions = torch.as_tensor(np.concatenate([a.positions for a in structures]))
    cells = torch.as_tensor(np.stack([a.cell.array for a in structures]))
    vec = edge_vectors(
        positions,
        cells,
        torch.as_tensor(batched.edge_index),
        torch.as_tensor(batched.cell_offsets),
        torch.as_tensor(batched.edge_batch),
    )
    np.testing.assert_allclose(vec.numpy(), batched.edge_vec, rtol=0, atol=1e-12)
    assert batched.edge_vec.shape[0] > 100
