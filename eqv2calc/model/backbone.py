"""The EquiformerV2 trunk: embeddings, transformer blocks, final norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eqv2calc.model.attention import EquivariantGraphAttention
from eqv2calc.model.block import TransformerBlock
from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.model.edge_degree import EdgeDegreeEmbedding
from eqv2calc.model.envelope import polynomial_envelope
from eqv2calc.model.ffn import FeedForward
from eqv2calc.model.layer_norm import make_norm
from eqv2calc.model.radial import EdgeInvariants, GaussianDistanceBasis
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
    distance_basis: torch.Tensor  # [E, D] edge invariants: distance basis (+ shared elements)
    rotation: EdgeRotation
    graph: GraphInput
    edge_weight: torch.Tensor | None = None  # [E] smooth-cutoff weights (envelope), or None


class EquiformerV2Backbone(nn.Module):
    """Shared parts (layouts, grids) are built once here and handed to every submodule."""

    def __init__(self, config: EquiformerV2Config) -> None:
        super().__init__()
        self.config = c = config
        lmax, mmax = c.lmax, c.mmax
        self.layout = CoefficientLayout(lmax, mmax)
        # attention values (edge frame, truncated orders) and feed-forward (node frame, all orders)
        self.grid_reduced = SphereGrid(lmax, mmax, c.grid_resolution, edge_frame=True)
        self.grid_full = SphereGrid(lmax, lmax, c.grid_resolution, edge_frame=False)

        self.sphere_embedding = nn.Embedding(c.num_elements, c.sphere_channels)
        self.distance_basis = GaussianDistanceBasis(0.0, c.cutoff, 600, c.distance_basis_width)
        edge_in = self.distance_basis.num_output
        # one pair of element embeddings shared by every module, or one pair per module
        self.shared_elements = c.use_atom_edge_embedding and c.share_atom_edge_embedding
        self.module_elements = c.use_atom_edge_embedding and not c.share_atom_edge_embedding
        if self.shared_elements:
            self.shared_edge_invariants = EdgeInvariants(
                c.num_elements, c.edge_channels, use_elements=True
            )
            edge_in += 2 * c.edge_channels
        self.edge_channels = [edge_in, c.edge_channels, c.edge_channels]
        if c.dens_inputs:
            # DeNS: encodes the forces of a noisy structure as node features (and, with
            # sigma_encoding, the noise level). Without noise both inputs are zero, so only the
            # biases on l = 0 survive; the layers are kept so the checkpoint loads and saves whole.
            self.force_embedding = DegreeWiseLinear(1, c.sphere_channels, lmax)
            if c.sigma_encoding:
                self.sigma_embedding = nn.Linear(1, c.sphere_channels)

        self.edge_degree = EdgeDegreeEmbedding(
            self.layout,
            channels=c.sphere_channels,
            edge_channels=self.edge_channels,
            num_elements=c.num_elements,
            use_element_embedding=self.module_elements,
            avg_degree=c.avg_degree,
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                self.make_attention(c.sphere_channels),
                self.make_ffn(c.sphere_channels),
                norm_type=c.norm_type,
                lmax=lmax,
                channels=c.sphere_channels,
            )
            for _ in range(c.num_layers)
        )
        self.norm = make_norm(c.norm_type, lmax, c.sphere_channels)

    def make_attention(self, out_channels: int) -> EquivariantGraphAttention:
        """An attention block with this backbone's settings (also used by the force heads)."""
        c = self.config
        return EquivariantGraphAttention(
            self.layout,
            self.grid_reduced,
            channels=c.sphere_channels,
            hidden_channels=c.attn_hidden_channels,
            num_heads=c.num_heads,
            alpha_channels=c.attn_alpha_channels,
            value_channels=c.attn_value_channels,
            out_channels=out_channels,
            edge_channels=self.edge_channels,
            num_elements=c.num_elements,
            use_element_embedding=self.module_elements,
            use_m_share_rad=c.use_m_share_rad,
            use_gate_act=c.use_gate_act,
            use_sep_s2_act=c.use_sep_s2_act,
            use_attn_renorm=c.use_attn_renorm,
        )

    def make_ffn(self, out_channels: int) -> FeedForward:
        """A feed-forward network with this backbone's settings (also used by energy heads)."""
        c = self.config
        return FeedForward(
            self.grid_full,
            in_channels=c.sphere_channels,
            hidden=c.ffn_hidden_channels,
            out_channels=out_channels,
            use_gate_act=c.use_gate_act,
            use_grid_mlp=c.use_grid_mlp,
            use_sep_s2_act=c.use_sep_s2_act,
        )

    def forward(self, graph: GraphInput) -> BackboneOutput:
        c = self.config
        z = graph.atomic_numbers
        num_nodes = z.shape[0]
        rotation = EdgeRotation(graph.edge_vec, self.layout)
        distance = graph.edge_vec.norm(dim=1)
        basis = self.distance_basis(distance)
        weight = None
        if c.envelope == "polynomial":
            weight = polynomial_envelope(distance, c.cutoff)  # [E]
        if self.shared_elements:
            basis = self.shared_edge_invariants(basis, z, graph.edge_index).cat()

        x = torch.zeros(
            num_nodes,
            self.layout.num_full,
            c.sphere_channels,
            dtype=graph.edge_vec.dtype,
            device=z.device,
        )
        x[:, 0] = self.sphere_embedding(z)
        if c.dens_inputs:
            x[:, 0] = x[:, 0] + self.force_embedding.bias
            if c.sigma_encoding:
                x[:, 0] = x[:, 0] + self.sigma_embedding.bias
        x = x + self.edge_degree(z, basis, graph.edge_index, rotation, num_nodes, weight)
        for block in self.blocks:
            x = block(x, z, basis, graph.edge_index, rotation, weight)
        x = self.norm(x)
        return BackboneOutput(x, basis, rotation, graph, weight)
