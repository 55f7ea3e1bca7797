"""Equivariant graph attention with attention re-normalisation (EquiformerV2 §4.1).

For each edge j → i the message input is ``[x_j ; x_i]`` (source and target features
concatenated along channels), rotated into the edge frame and passed through

    SO(2) conv (radial weights) → { invariant attention logits, gate scalars, values }
    values → separable S2 activation → SO(2) conv → value heads
    logits → LayerNorm ("re-normalisation") → smooth leaky ReLU → · a_h → softmax over j

then the per-head weighted values are rotated back, summed over incoming edges and mixed by a
degree-wise linear map.
"""

from __future__ import annotations

import torch
from torch import nn

from eqv2calc.model.activation import (
    GateActivation,
    S2Activation,
    SeparableS2Activation,
    SmoothLeakyReLU,
)
from eqv2calc.model.chunking import edge_chunks
from eqv2calc.model.envelope import log_weight
from eqv2calc.model.radial import EdgeInvariants, RadialMLP
from eqv2calc.model.s2_grid import SphereGrid
from eqv2calc.model.scatter import segment_softmax
from eqv2calc.model.so2_conv import SO2Convolution
from eqv2calc.model.so3 import CoefficientLayout, EdgeRotation, degree_index
from eqv2calc.model.so3_linear import DegreeWiseLinear


class EquivariantGraphAttention(nn.Module):
    """Graph attention built on SO(2) convolutions.

    Args:
        layout: truncation layout (lmax, mmax) of edge-frame features.
        grid: S² grid for the truncated features (used by the S2 activation).
        channels: node feature channels C.
        hidden_channels: channels of the first SO(2) convolution's value output.
        num_heads, alpha_channels, value_channels: attention heads and their widths.
        out_channels: output channels (C inside blocks, 1 for the force head).
        edge_channels: ``[edge invariants, hidden, hidden]`` sizes of the radial MLP (the
            first entry excludes this module's own element embeddings).
        num_elements: size of the element embedding tables.
        use_element_embedding: add this module's own source/target element embeddings to the
            edge invariants (off when the backbone shares one pair among all modules).
        use_m_share_rad: one radial weight per (degree, channel) applied before rotation,
            instead of per-(order, degree, channel) weights inside the SO(2) convolution.
        use_gate_act / use_sep_s2_act: the value non-linearity (gate, separable S2, or S2).
        use_attn_renorm: LayerNorm on the attention logits.
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        grid: SphereGrid,
        *,
        channels: int,
        hidden_channels: int,
        num_heads: int,
        alpha_channels: int,
        value_channels: int,
        out_channels: int,
        edge_channels: list[int],
        num_elements: int,
        use_element_embedding: bool = True,
        use_m_share_rad: bool = False,
        use_gate_act: bool = False,
        use_sep_s2_act: bool = True,
        use_attn_renorm: bool = True,
        radial_bias: bool = True,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.num_heads, self.alpha_channels, self.value_channels = (
            num_heads,
            alpha_channels,
            value_channels,
        )
        self.hidden_channels = hidden_channels
        self.use_m_share_rad = use_m_share_rad
        self.use_gate_act, self.use_sep_s2_act = use_gate_act, use_sep_s2_act
        lmax = layout.lmax

        self.edge_invariants = EdgeInvariants(
            num_elements, edge_channels[-1], use_element_embedding
        )
        edge_in = list(edge_channels)
        if use_element_embedding:
            edge_in[0] += 2 * edge_channels[-1]

        num_alpha = num_heads * alpha_channels
        if use_gate_act:
            num_gates = lmax * hidden_channels
        elif use_sep_s2_act:
            num_gates = hidden_channels
        else:
            num_gates = 0
        self.num_alpha, self.num_gates = num_alpha, num_gates

        if use_m_share_rad:
            self.shared_radial = RadialMLP([*edge_in, 2 * channels * (lmax + 1)], bias=radial_bias)
            self.register_buffer("degree_of", degree_index(lmax), persistent=False)
        self.conv_1 = SO2Convolution(
            layout,
            2 * channels,
            hidden_channels,
            edge_channels=None if use_m_share_rad else edge_in,
            extra_scalars=num_alpha + num_gates,
            radial_bias=radial_bias,
        )
        self.alpha_norm = nn.LayerNorm(alpha_channels) if use_attn_renorm else nn.Identity()
        self.alpha_act = SmoothLeakyReLU(0.2)
        self.alpha_dot = nn.Parameter(
            torch.empty(num_heads, alpha_channels).uniform_(
                -(alpha_channels**-0.5), alpha_channels**-0.5
            )
        )

        if use_gate_act:
            self.value_act = GateActivation(lmax, layout.mmax, hidden_channels, edge_frame=True)
        elif use_sep_s2_act:
            self.value_act = SeparableS2Activation(grid)
        else:
            self.value_act = S2Activation(grid)

        self.conv_2 = SO2Convolution(layout, hidden_channels, num_heads * value_channels)
        # the largest per-edge intermediates (values): grid values, radial weights, message
        points = grid.shape[0] * grid.shape[1] if not use_gate_act else layout.num_reduced
        self.row_values = max(
            points * hidden_channels,
            sum(self.conv_1.radial_sizes),
            layout.num_full * 2 * channels,
        )
        self.proj = DegreeWiseLinear(num_heads * value_channels, out_channels, lmax)

    def forward(
        self,
        x: torch.Tensor,
        atomic_numbers: torch.Tensor,
        distance_basis: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[N, K, C]`` → ``[N, K, out_channels]`` (sum of attended messages per node).

        ``distance_basis`` ``[E, D]`` holds the edge invariants the backbone computed (distance
        basis, followed by the shared element embeddings when the backbone shares them).
        ``edge_weight`` ``[E]``: smooth-cutoff weights ``u`` (see :mod:`eqv2calc.model.envelope`):
        ``α_ij ∝ u_ij exp(a_ij)`` and the attended value is scaled by ``u_ij`` once more.

        Edges are processed a chunk at a time (see :mod:`eqv2calc.model.chunking`): only the
        logits ``[E, heads]`` and the values ``[E, R, heads * value]`` are kept for all edges.
        """
        num_nodes, num_edges = x.shape[0], edge_index.shape[1]
        dst = edge_index[1]
        logits = x.new_empty(num_edges, self.num_heads)
        values = x.new_empty(
            num_edges, self.layout.num_reduced, self.num_heads * self.value_channels
        )
        for start, stop in edge_chunks(num_edges, x.device, self.row_values * x.element_size()):
            logits[start:stop], values[start:stop] = self.edge_values(
                x,
                atomic_numbers,
                distance_basis[start:stop],
                edge_index[:, start:stop],
                rotation.narrow(start, stop),
            )
        if edge_weight is not None:
            logits = logits + log_weight(edge_weight).unsqueeze(1).to(logits.dtype)
        alpha = segment_softmax(logits, dst, num_nodes)  # [E, heads]
        if edge_weight is not None:
            alpha = alpha * edge_weight.unsqueeze(1).to(alpha.dtype)

        summed = x.new_zeros(num_nodes, self.layout.num_full, values.shape[2])
        for start, stop in edge_chunks(num_edges, x.device, self.row_values * x.element_size()):
            n = stop - start
            weighted = values[start:stop].view(n, -1, self.num_heads, self.value_channels) * alpha[
                start:stop
            ].view(n, 1, self.num_heads, 1)
            summed.index_add_(
                0,
                dst[start:stop],
                rotation.narrow(start, stop)
                .rotate_back(weighted.view(n, -1, values.shape[2]))
                .to(summed.dtype),  # bf16 autocast: accumulate in the features' dtype
            )
        return self.proj(summed)

    def edge_values(
        self,
        x: torch.Tensor,
        atomic_numbers: torch.Tensor,
        distance_basis: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention logits ``[E, heads]`` and edge-frame values ``[E, R, heads * value]`` (order-major)
        of some edges."""
        src, dst = edge_index[0], edge_index[1]
        edge_inv = self.edge_invariants(distance_basis, atomic_numbers, edge_index)

        message = torch.cat((x.index_select(0, src), x.index_select(0, dst)), dim=2)  # [E, K, 2C]
        if self.use_m_share_rad:
            w = self.shared_radial(edge_inv).view(message.shape[0], self.layout.lmax + 1, -1)
            message = message * w.index_select(1, self.degree_of)
        # edge frame, order-major layout from here on (the SO(2) convolutions' own layout)
        message = rotation.rotate(message)  # [E, R, 2C]

        values, scalars = self.conv_1(message, None if self.use_m_share_rad else edge_inv)
        logits_in = scalars[:, : self.num_alpha]
        if self.use_gate_act or self.use_sep_s2_act:
            values = self.value_act(scalars[:, self.num_alpha :], values)
        else:
            values = self.value_act(values)
        values, _ = self.conv_2(values)  # [E, R, heads * value]

        logits = self.alpha_act(
            self.alpha_norm(logits_in.view(-1, self.num_heads, self.alpha_channels))
        )
        logits = torch.einsum("ehk,hk->eh", logits, self.alpha_dot)
        return logits, values
