"""SO(2) convolution in the edge frame (eSCN; EquiformerV2 §3).

Once an edge's features are rotated so the edge lies on the polar axis, a rotation by angle
phi about the edge turns each pair ``(x_{+m}, x_{-m})`` by ``m·phi``. The most general linear
map commuting with that is, per order m, a complex-like product

    y_{+m} = W_r x_{+m} - W_i x_{-m}
    y_{-m} = W_i x_{+m} + W_r x_{-m}

mixing all degrees ``l >= m`` and channels, with separate real weights for ``m = 0``. This
replaces the SO(3) tensor product and costs O(L³) instead of O(L⁶).
"""

from __future__ import annotations

import torch
from torch import nn

from eqv2calc.model.radial import RadialMLP, SplitInvariants
from eqv2calc.model.so3 import CoefficientLayout


class OrderConvolution(nn.Module):
    """The ``m > 0`` part for one order: weights ``[W_r; W_i]`` stacked in one Linear."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        # fc.weight = [W_r; W_i], [2 out, in] (the reference's parameter layout)
        self.fc = nn.Linear(in_features, 2 * out_features, bias=False)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[E, 2, in]`` (row 0 = +m, row 1 = -m) → ``[E, 2, out]``.

        One matrix product with the real form of the complex weight,
        ``[y_+; y_-] = [[W_r, -W_i], [W_i, W_r]] [x_+; x_-]``: the same multiply-adds as
        ``[W_r; W_i] x`` for both rows, without recombining the four products afterwards.
        """
        w_r, w_i = self.fc.weight[: self.out_features], self.fc.weight[self.out_features :]
        block = torch.cat((torch.cat((w_r, -w_i), 1), torch.cat((w_i, w_r), 1)), 0)
        y = nn.functional.linear(x.reshape(x.shape[0], -1), block)  # [E, 2 out]
        return y.view(x.shape[0], 2, self.out_features)


class SO2Convolution(nn.Module):
    """SO(2)-equivariant linear map on truncated edge-frame features.

    Input ``[E, R, C_in]`` (truncated, order-major layout), output ``[E, R, C_out]``. When
    ``edge_channels`` is given, the input is first multiplied element-wise by weights that a
    radial MLP computes from the edge invariants (distance and elements); different weights
    for every (order, degree, channel). ``extra_scalars`` extra invariant outputs are taken
    from the ``m = 0`` map and returned separately (attention logits and gates).
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        in_channels: int,
        out_channels: int,
        edge_channels: list[int] | None = None,
        extra_scalars: int = 0,
        radial_bias: bool = True,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.in_channels, self.out_channels = in_channels, out_channels
        self.extra_scalars = extra_scalars
        n0 = layout.order_sizes[0]
        self.fc_m0 = nn.Linear(n0 * in_channels, n0 * out_channels + extra_scalars)
        self.orders = nn.ModuleList(
            OrderConvolution(n * in_channels, n * out_channels) for n in layout.order_sizes[1:]
        )
        self.radial_sizes = [n * in_channels for n in layout.order_sizes]
        self.radial = None
        if edge_channels is not None:
            self.radial = RadialMLP([*edge_channels, sum(self.radial_sizes)], bias=radial_bias)

    def forward(
        self,
        x: torch.Tensor,
        edge_invariants: torch.Tensor | SplitInvariants | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[E, R, C_in]`` → ``([E, R, C_out], extra scalars [E, extra] or None)``.

        Features are in the order-major layout (:class:`CoefficientLayout`): all ``m = 0``
        coefficients, then the ``+m`` and ``-m`` ones of each order.
        """
        num_edges = x.shape[0]
        weights = None
        if self.radial is not None:
            weights = self.radial(edge_invariants).split(self.radial_sizes, dim=1)

        sizes = self.layout.order_sizes
        # m = 0: real only
        x0 = x[:, : sizes[0]].reshape(num_edges, -1)
        if weights is not None:
            x0 = x0 * weights[0]
        y0 = self.fc_m0(x0)
        extra = y0[:, : self.extra_scalars] if self.extra_scalars else None
        outputs = [y0[:, self.extra_scalars :].reshape(num_edges, sizes[0], self.out_channels)]

        offset = sizes[0]
        for m, conv in enumerate(self.orders, start=1):
            n = sizes[m]
            xm = x[:, offset : offset + 2 * n].reshape(num_edges, 2, n * self.in_channels)
            if weights is not None:
                xm = xm * weights[m].unsqueeze(1)
            outputs.append(conv(xm).reshape(num_edges, 2 * n, self.out_channels))
            offset += 2 * n

        return torch.cat(outputs, dim=1), extra  # [E, R, C_out] order-major
