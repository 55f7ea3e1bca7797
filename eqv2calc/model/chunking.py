"""Evaluating per-edge (and per-node) work in fixed-size chunks.

EquiformerV2's per-edge intermediates are large: for every edge the attention builds messages
``[R, 2C]``, radial weights and S² grid values ``[18, 18, hidden]`` (about 0.2 MB per edge for
the 31M model). Building them for a chunk of edges at a time bounds peak memory by the chunk
size instead of the number of edges. On CPU small chunks also keep the working set in cache
(faster); on GPU chunks are large, so that kernels stay big and launches few, and only bound
memory for very large systems. Every operation inside a chunk acts row by row, so results do
not depend on the chunk sizes (up to float rounding of matrix products).
"""

from __future__ import annotations

import torch

#: Edges per chunk in the attention blocks and the edge-degree embedding, on CPU; a module whose
#: per-edge intermediates are small (``row_bytes``) takes more, up to ``CPU_SCALE_MAX`` times as
#: many, while the chunk stays under ``CPU_CHUNK_BYTES`` (fewer, larger operations: the bundled
#: model's batched forward is ~7 % faster with 1024-edge chunks, the 31M model's ~15 % slower).
EDGE_CHUNK_SIZE = 256
#: ... on GPU (about 3 GB of per-edge intermediates for the 31M model).
EDGE_CHUNK_SIZE_GPU = 16384

#: Nodes per chunk in the feed-forward networks (grid values: about 0.17 MB per node), on CPU.
NODE_CHUNK_SIZE = 32
#: Bytes of per-row intermediates one CPU chunk may hold when rows are small (see above).
CPU_CHUNK_BYTES = 6 * 2**20
#: Largest multiple of EDGE_CHUNK_SIZE / NODE_CHUNK_SIZE a CPU chunk may grow to.
CPU_SCALE_MAX = 4
#: ... on GPU.
NODE_CHUNK_SIZE_GPU = 8192


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``0..total`` in steps of ``size``."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _cpu_size(base: int, row_bytes: int) -> int:
    if row_bytes <= 0:
        return base
    return max(base, min(CPU_SCALE_MAX * base, CPU_CHUNK_BYTES // row_bytes))


def edge_chunks(num_edges: int, device: torch.device, row_bytes: int = 0) -> list[tuple[int, int]]:
    """Edge chunks for tensors on ``device`` (sizes read at call time, so they can be changed).

    ``row_bytes``: the largest per-edge intermediate of the caller (bytes); on CPU a small one
    lets the chunk grow past ``EDGE_CHUNK_SIZE`` (up to ``CPU_CHUNK_BYTES`` in all).
    """
    if device.type != "cpu":
        return chunks(num_edges, EDGE_CHUNK_SIZE_GPU)
    return chunks(num_edges, _cpu_size(EDGE_CHUNK_SIZE, row_bytes))


def node_chunks(num_nodes: int, device: torch.device, row_bytes: int = 0) -> list[tuple[int, int]]:
    """Node chunks for tensors on ``device`` (sizes read at call time, so they can be changed);
    ``row_bytes`` as for :func:`edge_chunks`."""
    if device.type != "cpu":
        return chunks(num_nodes, NODE_CHUNK_SIZE_GPU)
    return chunks(num_nodes, _cpu_size(NODE_CHUNK_SIZE, row_bytes))
