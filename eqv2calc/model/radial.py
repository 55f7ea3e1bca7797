"""Invariant edge features: Gaussian distance basis and the radial MLP."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class GaussianDistanceBasis(nn.Module):
    """Gaussians with centres evenly spaced on ``[start, stop]`` Å.

    ``phi_k(d) = exp(-(d - mu_k)**2 / (2 (w * delta)**2))`` with ``delta`` the centre spacing and
    ``w`` a width multiplier. EquiformerV2 uses 600 Gaussians on ``[0, cutoff]`` with ``w = 2``
    (its ``num_distance_basis`` option is ignored by the reference; we follow that).

    Each distance only reaches the centres within ``10 w`` spacings of it: further ones are below
    ``exp(-50) ≈ 2e-22`` (under float64 rounding of the values that are kept), so only those are
    evaluated and the rest of the ``[E, num]`` output is zero. This is the reference's basis to
    rounding, at a fraction of the cost (the dense form spent more time in ``exp`` than in any
    layer of the small models).
    """

    def __init__(self, start: float, stop: float, num: int = 600, width: float = 2.0) -> None:
        super().__init__()
        centres = torch.linspace(start, stop, num)
        self.register_buffer("centres", centres)
        self.start, self.spacing = float(start), float(centres[1] - centres[0])
        self.width = float(width)  # in centre spacings
        self.coeff = -0.5 / (width * self.spacing) ** 2
        self.num_output = num
        #: centres evaluated on either side of a distance's nearest one: exp(-(k/w)²/2) ≤ e^-50
        self.window = min(math.ceil(10.0 * width), num)
        self.register_buffer(
            "offsets", torch.arange(-self.window, self.window + 1), persistent=False
        )

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        """``[E]`` distances (Å) → ``[E, num]`` basis values."""
        distance = distance.view(-1)
        num, window = self.num_output, self.window
        if num < 2 * window + 1:  # fewer centres than one window: evaluate them all
            diff = distance.unsqueeze(1) - self.centres.to(distance.dtype)
            return torch.exp(self.coeff * diff.pow(2))
        # the window around the nearest centre, shifted inwards at either end so that it stays
        # inside [0, num): it still covers every centre within ``window`` spacings, and its
        # columns are distinct, so the values can be written straight into the output rows
        nearest = torch.round((distance - self.start) / self.spacing).long()
        nearest = nearest.clamp(window, num - 1 - window).detach()
        index = nearest.unsqueeze(1) + self.offsets  # [E, 2 window + 1], inside [0, num)
        diff = distance.unsqueeze(1) - self.centres[index].to(distance.dtype)
        values = torch.exp(self.coeff * diff.pow(2))
        rows = torch.arange(0, distance.shape[0] * num, num, device=distance.device)
        flat = (rows.unsqueeze(1) + index).view(-1)
        out = distance.new_zeros(distance.shape[0] * num)
        return out.index_put_((flat,), values.view(-1)).view(-1, num)


def widen_distance_basis(model: nn.Module, width: float) -> None:
    """Give ``model`` Gaussians ``width`` centre spacings wide, keeping what it has learnt.

    ``model`` holds the basis at ``model.backbone.distance_basis``. Every radial MLP in it — the
    backbone's and the direct force/stress heads', which read the same basis — reads the basis
    through the first columns of its first linear layer. The sum of the Gaussians at any
    distance is ``≈ √(2π)·w`` (w the width in spacings), so scaling those columns by
    ``w_old / w_new`` makes each layer see its old input smoothed over the new width instead of
    a larger one: a warm start for fine-tuning with a smoother basis.
    """
    old: GaussianDistanceBasis = model.backbone.distance_basis
    stop = float(old.centres[-1])
    new = GaussianDistanceBasis(old.start, stop, old.num_output, width).to(old.centres)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RadialMLP):
                first: nn.Linear = module.net[0]
                first.weight[:, : old.num_output] *= old.width / width
    model.backbone.distance_basis = new


@dataclass(frozen=True)
class SplitInvariants:
    """Edge invariants ``[basis | source | target]`` kept as three blocks, not concatenated.

    The first linear layer of a :class:`RadialMLP` acts on each block with its own columns of
    the weight, which is the same product as on the concatenation without copying the
    ``[E, 600]`` basis for every module (the concatenation took as long as the layer itself).
    """

    basis: torch.Tensor  # [E, D] distance basis
    source: torch.Tensor  # [E, C] source-element embedding
    target: torch.Tensor  # [E, C] target-element embedding

    def __getitem__(self, rows: slice) -> SplitInvariants:
        """The invariants of a range of edges (as ``tensor[start:stop]``)."""
        return SplitInvariants(self.basis[rows], self.source[rows], self.target[rows])

    def cat(self) -> torch.Tensor:
        """The ``[E, D + 2C]`` concatenation."""
        return torch.cat((self.basis, self.source, self.target), dim=1)


class RadialMLP(nn.Module):
    """Linear → LayerNorm → SiLU blocks, ending with a plain Linear.

    ``channels = [in, hidden, ..., out]``. Maps invariant edge features (distance basis and
    element embeddings, as one tensor or as :class:`SplitInvariants`) to per-edge weights.
    """

    def __init__(self, channels: list[int], bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(1, len(channels)):
            layers.append(nn.Linear(channels[i - 1], channels[i], bias=bias))
            if i < len(channels) - 1:
                layers.append(nn.LayerNorm(channels[i]))
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor | SplitInvariants) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return self.net(x)
        first: nn.Linear = self.net[0]
        d, c = x.basis.shape[1], x.source.shape[1]
        w = first.weight  # [hidden, D + 2C]
        h = nn.functional.linear(x.basis, w[:, :d], first.bias)
        h = torch.addmm(h, x.source, w[:, d : d + c].t())
        h = torch.addmm(h, x.target, w[:, d + c :].t())
        return self.net[1:](h)


class EdgeInvariants(nn.Module):
    """Per-edge invariant features: distance basis ⊕ source-element ⊕ target-element embeddings.

    One instance lives in every module that consumes edge invariants (the reference gives each
    attention block and the edge-degree embedding its own element embeddings). The result is a
    :class:`SplitInvariants` (the basis alone without element embeddings).
    """

    def __init__(self, num_elements: int, channels: int, use_elements: bool) -> None:
        super().__init__()
        self.use_elements = use_elements
        if use_elements:
            self.source_embedding = nn.Embedding(num_elements, channels)
            self.target_embedding = nn.Embedding(num_elements, channels)

    def forward(
        self, distance_basis: torch.Tensor, atomic_numbers: torch.Tensor, edge_index: torch.Tensor
    ) -> torch.Tensor | SplitInvariants:
        if not self.use_elements:
            return distance_basis
        return SplitInvariants(
            distance_basis,
            self.source_embedding(atomic_numbers[edge_index[0]]),
            self.target_embedding(atomic_numbers[edge_index[1]]),
        )
