"""One EquiformerV2 transformer block: pre-norm attention and pre-norm feed-forward, each residual."""

from __future__ import annotations

import torch
from torch import nn

from eqv2calc.model.attention import EquivariantGraphAttention
from eqv2calc.model.ffn import FeedForward
from eqv2calc.model.layer_norm import make_norm
from eqv2calc.model.so3 import EdgeRotation


class TransformerBlock(nn.Module):
    """``x + Attn(Norm(x))`` then ``x + FFN(Norm(x))``.

    The reference also applies drop-path and dropout during training; both are the identity at
    inference, and eqv2calc does not implement them (its trainer fine-tunes without them).
    """

    def __init__(
        self,
        attention: EquivariantGraphAttention,
        ffn: FeedForward,
        *,
        norm_type: str,
        lmax: int,
        channels: int,
    ) -> None:
        super().__init__()
        self.norm_1 = make_norm(norm_type, lmax, channels)
        self.attention = attention
        self.norm_2 = make_norm(norm_type, lmax, channels)
        self.ffn = ffn

    def forward(
        self,
        x: torch.Tensor,
        atomic_numbers: torch.Tensor,
        distance_basis: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attention(
            self.norm_1(x), atomic_numbers, distance_basis, edge_index, rotation, edge_weight
        )
        return x + self.ffn(self.norm_2(x))
