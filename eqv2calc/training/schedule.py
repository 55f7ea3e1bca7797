"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_factor: float, min_ratio: float
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Rises linearly from ``warmup_factor`` to 1 over ``warmup_steps``, then follows a cosine
    from 1 down to ``min_ratio`` at ``total_steps`` (and stays there afterwards).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """A ``LambdaLR`` using :func:`warmup_cosine_factor`; ``step()`` once per optimizer step.

    Its ``state_dict`` holds only numbers, so checkpoints stay loadable with ``weights_only``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        warmup_factor: float = 0.2,
        min_ratio: float = 0.01,
    ) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.min_ratio = float(min_ratio)
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        return warmup_cosine_factor(
            step, self.total_steps, self.warmup_steps, self.warmup_factor, self.min_ratio
        )

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "lr_lambdas"}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(
            {**state_dict, "lr_lambdas": [None] * len(self.optimizer.param_groups)}
        )
