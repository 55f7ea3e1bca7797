"""The node-wise feed-forward network (EquiformerV2 §4.3).

Degree-wise linear → non-linearity → degree-wise linear. With ``use_grid_mlp`` (the released
models) the non-linearity is an MLP applied point-wise on the S² grid, and with the separable
variant the l = 0 output comes instead from SiLU of a linear map of the input scalars.
"""

from __future__ import annotations

import torch
from torch import nn

from eqv2calc.model import chunking
from eqv2calc.model.activation import GateActivation, S2Activation, SeparableS2Activation
from eqv2calc.model.s2_grid import SphereGrid
from eqv2calc.model.so3_linear import DegreeWiseLinear


class FeedForward(nn.Module):
    """``[N, K, C_in]`` → ``[N, K, C_out]`` with hidden width ``hidden``."""

    def __init__(
        self,
        grid: SphereGrid,
        *,
        in_channels: int,
        hidden: int,
        out_channels: int,
        use_gate_act: bool = False,
        use_grid_mlp: bool = True,
        use_sep_s2_act: bool = True,
    ) -> None:
        super().__init__()
        lmax = grid.lmax
        self.grid = grid
        self.use_gate_act, self.use_grid_mlp, self.use_sep_s2_act = (
            use_gate_act,
            use_grid_mlp,
            use_sep_s2_act,
        )
        self.hidden = hidden
        self.linear_1 = DegreeWiseLinear(in_channels, hidden, lmax)
        # invariant scalars from the input's l = 0 channels: the grid MLP's separate l = 0 output
        # (scalar_linear) or the activations' gates / l = 0 inputs (gate_linear)
        self.scalar_linear: nn.Linear | None = None
        self.gate_linear: nn.Linear | None = None
        if use_grid_mlp:
            if use_sep_s2_act:
                self.scalar_linear = nn.Linear(in_channels, hidden)
            self.grid_mlp = nn.Sequential(
                nn.Linear(hidden, hidden, bias=False),
                nn.SiLU(inplace=True),  # in place on a fresh Linear output (autograd-safe)
                nn.Linear(hidden, hidden, bias=False),
                nn.SiLU(inplace=True),
                nn.Linear(hidden, hidden, bias=False),
            )
        elif use_gate_act:
            self.gate_linear = nn.Linear(in_channels, lmax * hidden)
            self.act = GateActivation(lmax, lmax, hidden, edge_frame=False)
        elif use_sep_s2_act:
            self.gate_linear = nn.Linear(in_channels, hidden)
            self.act = SeparableS2Activation(grid)
        else:
            self.act = S2Activation(grid)
        self.linear_2 = DegreeWiseLinear(hidden, out_channels, lmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        points = self.grid.shape[0] * self.grid.shape[1]  # the grid values are the largest rows
        parts = chunking.node_chunks(x.shape[0], x.device, points * self.hidden * x.element_size())
        if len(parts) <= 1:
            return self.forward_nodes(x)
        return torch.cat([self.forward_nodes(x[start:stop]) for start, stop in parts])

    def forward_nodes(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward network on a block of nodes ``[n, K, C_in]`` → ``[n, K, C_out]``."""
        linear = self.scalar_linear if self.use_grid_mlp else self.gate_linear
        scalars = linear(x[:, 0]) if linear is not None else None
        h = self.linear_1(x)
        if self.use_grid_mlp:
            h = self.grid.from_grid(self.grid_mlp(self.grid.to_grid(h)))
            if scalars is not None:
                h = torch.cat((torch.nn.functional.silu(scalars).unsqueeze(1), h[:, 1:]), dim=1)
        elif self.use_gate_act:
            h = self.act(scalars, h)
        elif self.use_sep_s2_act:
            h = self.act(scalars, h)
        else:
            h = self.act(h)
        return self.linear_2(h)
