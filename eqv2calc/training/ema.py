"""Exponential moving average (EMA) of a model's parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class ExponentialMovingAverage:
    """Shadow copies ``s ← d·s + (1 − d)·p`` of every parameter, updated after each step.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates
    (``n`` = number of updates), so early, random weights are forgotten quickly. The shadow list
    follows ``model.parameters()`` order, the order ``save_checkpoint(ema_state=...)`` stores.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for s, p in zip(self.shadow, model.parameters()):
            if p.requires_grad:
                s.mul_(d).add_(p.detach(), alpha=1.0 - d)
            else:
                s.copy_(p.detach())

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``model`` (restored on exit)."""
        saved = [p.detach().clone() for p in model.parameters()]
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(model.parameters(), saved):
                    p.copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, s in zip(model.parameters(), self.shadow):
            p.copy_(s)

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow_params": [s.clone() for s in self.shadow],
        }

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow):
            raise ValueError(
                f"EMA state has {len(shadow)} tensors, the model {len(self.shadow)} parameters"
            )
        self.shadow = [
            t.detach().clone().to(device=s.device, dtype=s.dtype)
            for t, s in zip(shadow, self.shadow)
        ]
        self.num_updates = int(state.get("num_updates") or 0)
        if state.get("decay") is not None:
            self.decay = float(state["decay"])
