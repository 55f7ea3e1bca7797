"""Edge vectors as a differentiable function of positions and cells (torch).

The neighbour search (:mod:`eqv2calc.graph`, or a device-side search) decides *which* pairs are
edges and through which periodic image (integer lattice offsets ``n``). The vectors themselves,

    r_ij = x_j + n_ij · cell_b − x_i        (Å)

are computed here from tensors, so that they live on the model's device and so that autograd can
differentiate through them: with respect to positions (forces = −∂E/∂x) and, through a strain
applied to positions and cells, with respect to the cell (stress = (1/V) ∂E/∂ε).
"""

from __future__ import annotations

import torch


def edge_vectors(
    positions: torch.Tensor,
    cells: torch.Tensor,
    edge_index: torch.Tensor,
    cell_offsets: torch.Tensor,
    edge_batch: torch.Tensor,
) -> torch.Tensor:
    """Edge vectors ``x_j + n·cell − x_i`` in Å.

    Args:
        positions: ``[N, 3]`` Cartesian positions (Å), all structures concatenated.
        cells: ``[B, 3, 3]`` cells (Å), rows are lattice vectors.
        edge_index: ``[2, E]`` long; row 0 = source j (neighbour), row 1 = target i (centre).
        cell_offsets: ``[E, 3]`` integer lattice offsets n of the neighbour image.
        edge_batch: ``[E]`` long, structure index of every edge.

    Returns:
        ``[E, 3]`` edge vectors in the dtype of ``positions``.
    """
    src, dst = edge_index[0], edge_index[1]
    shift = torch.einsum(
        "ek,ekl->el", cell_offsets.to(positions.dtype), cells[edge_batch]
    )  # [E, 3]
    return positions[src] + shift - positions[dst]
