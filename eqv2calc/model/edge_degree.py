"""Edge-degree embedding (EquiformerV2 §4.4).

Initial node features get, besides the element embedding on l = 0, a sum over neighbours of
rotation-aware edge terms: a radial MLP of the edge invariants gives ``m = 0`` coefficients
(one per degree and channel) in the edge frame, which are rotated back to the global frame and
summed over incoming edges, divided by the average degree.
"""

from __future__ import annotations

import torch
from torch import nn

from eqv2calc.model.chunking import edge_chunks
from eqv2calc.model.radial import EdgeInvariants, RadialMLP
from eqv2calc.model.so3 import CoefficientLayout, EdgeRotation


class EdgeDegreeEmbedding(nn.Module):
    def __init__(
        self,
        layout: CoefficientLayout,
        *,
        channels: int,
        edge_channels: list[int],
        num_elements: int,
        use_element_embedding: bool,
        avg_degree: float,
        radial_bias: bool = True,
    ) -> None:
        super().__init__()
        self.layout, self.channels, self.avg_degree = layout, channels, avg_degree
        self.edge_invariants = EdgeInvariants(
            num_elements, edge_channels[-1], use_element_embedding
        )
        edge_in = list(edge_channels)
        if use_element_embedding:
            edge_in[0] += 2 * edge_channels[-1]
        self.num_m0 = layout.order_sizes[0]  # lmax + 1
        self.radial = RadialMLP([*edge_in, self.num_m0 * channels], bias=radial_bias)

    def forward(
        self,
        atomic_numbers: torch.Tensor,
        distance_basis: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
        num_nodes: int,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum over incoming edges ``[N, K, C]``; ``edge_weight`` ``[E]`` (smooth cutoff, see
        :mod:`eqv2calc.model.envelope`) scales each edge's term when given."""
        out = distance_basis.new_zeros(num_nodes, self.layout.num_full, self.channels)
        row_bytes = (distance_basis.shape[1] + self.num_m0 * self.channels) * out.element_size()
        for start, stop in edge_chunks(edge_index.shape[1], distance_basis.device, row_bytes):
            part = edge_index[:, start:stop]
            edge_inv = self.edge_invariants(distance_basis[start:stop], atomic_numbers, part)
            # edge frame: only the m = 0 coefficients are non-zero, one per degree [n, lmax+1, C]
            m0 = self.radial(edge_inv).view(-1, self.num_m0, self.channels)
            if edge_weight is not None:
                m0 = m0 * edge_weight[start:stop].view(-1, 1, 1).to(m0.dtype)
            # under bf16 autocast the rotated terms come back in bfloat16: accumulate them in
            # the output's dtype (a no-op in float32/float64)
            rotated = rotation.narrow(start, stop).rotate_back_zonal(m0)  # [n, K, C]
            out.index_add_(0, part[1], rotated.to(out.dtype))
        return out / self.avg_degree
