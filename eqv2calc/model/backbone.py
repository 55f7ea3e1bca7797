"""The EquiformerV2 trunk: embeddings, transformer blocks, final norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eqv2calc.model.attention import EquivariantGraphAttention
from eqv2calc.model.block import TransformerBlock
from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.model.edge_degree import EdgeDegreeEmbedding
from eqv2calc.model.ffn import FeedForward
from eqv2calc.model.layer_norm import make_norm
from eqv2calc.model.radial import GaussianDistanceBasis
from eqv2calc.model.s2_grid import SphereGrid
from eqv2calc.model.so3 import CoefficientLayout, EdgeRotation
from eqv2calc.model.so3_linear import DegreeWiseLinear


@dataclass
class GraphInput:
    """A (batched) graph as the model consumes it.

    Attributes:
        atomic_numbers: ``[N]`` long.
        edge_index: ``[2, E]`` long; row 0 = source j (neighbour), row 1 = target i (centre).
        edge_vec: ``[E, 3]`` float, ``x_j + n·cell − x_i`` in Å.
        batch: ``[N]`` long, structure index of every atom.
        num_graphs: number of structures B.
    """

    atomic_numbers: torch.Tensor
    edge_index: torch.Tensor
    edge_vec: torch.Tensor
    batch: torch.Tensor
    num_graphs: int


@dataclass
class BackboneOutput:
    node_features: torch.Tensor  # [N, (lmax+1)**2, C]
    distance_basis: torch.Tensor  # [E, num_basis]
    rotation: EdgeRotation
    graph: GraphInput


class EquiformerV2Backbone(nn.Module):
    """Shared parts (layouts, grids) are built once here and handed to every submodule."""

    def __init__(self, config: EquiformerV2Config) -> None:
        super().__init__()
        self.config = c = config
        lmax, mmax = c.lmax, c.mmax
        self.layout = CoefficientLayout(lmax, mmax)
        self.grid_reduced = SphereGrid(lmax, mmax, c.grid)  # attention values (truncated orders)
        self.grid_full = SphereGrid(lmax, lmax, c.grid)  # feed-forward (all orders)

        self.sphere_embedding = nn.Embedding(c.max_num_elements, c.sphere_channels)
        self.distance_basis = GaussianDistanceBasis(0.0, c.max_radius, 600, 2.0)
        self.edge_channels = [self.distance_basis.num_output, c.edge_channels, c.edge_channels]
        if c.use_force_encoding:
            # DeNS: encodes (noisy-structure) forces as node features. At inference there are
            # none, so only the bias on l = 0 survives; kept so the checkpoint loads.
            self.force_embedding = DegreeWiseLinear(1, c.sphere_channels, lmax)

        self.edge_degree = EdgeDegreeEmbedding(
            self.layout,
            c.sphere_channels,
            self.edge_channels,
            c.max_num_elements,
            c.use_atom_edge_embedding,
            c.avg_degree,
            c.radial_bias,
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                self.make_attention(c.sphere_channels),
                self.make_ffn(c.sphere_channels),
                c.norm_type,
                lmax,
                c.sphere_channels,
            )
            for _ in range(c.num_layers)
        )
        self.norm = make_norm(c.norm_type, lmax, c.sphere_channels)

    def make_attention(self, out_channels: int) -> EquivariantGraphAttention:
        c = self.config
        return EquivariantGraphAttention(
            self.layout,
            self.grid_reduced,
            c.sphere_channels,
            c.attn_hidden_channels,
            c.num_heads,
            c.attn_alpha_channels,
            c.attn_value_channels,
            out_channels,
            self.edge_channels,
            c.max_num_elements,
            c.use_atom_edge_embedding,
            c.use_m_share_rad,
            c.use_gate_act,
            c.use_sep_s2_act,
            c.use_attn_renorm,
            c.radial_bias,
        )

    def make_ffn(self, out_channels: int) -> FeedForward:
        c = self.config
        return FeedForward(
            self.grid_full,
            c.sphere_channels,
            c.ffn_hidden_channels,
            out_channels,
            c.use_gate_act,
            c.use_grid_mlp,
            c.use_sep_s2_act,
        )

    def forward(self, graph: GraphInput) -> BackboneOutput:
        c = self.config
        z = graph.atomic_numbers
        num_nodes = z.shape[0]
        rotation = EdgeRotation(graph.edge_vec, self.layout)
        distance = graph.edge_vec.norm(dim=1)
        basis = self.distance_basis(distance)

        x = torch.zeros(
            num_nodes,
            self.layout.num_full,
            c.sphere_channels,
            dtype=graph.edge_vec.dtype,
            device=z.device,
        )
        x[:, 0] = self.sphere_embedding(z)
        if c.use_force_encoding:
            x[:, 0] = x[:, 0] + self.force_embedding.bias
        x = x + self.edge_degree(z, basis, graph.edge_index, rotation, num_nodes)
        for block in self.blocks:
            x = block(x, z, basis, graph.edge_index, rotation)
        x = self.norm(x)
        return BackboneOutput(x, basis, rotation, graph)
