"""Test helpers for campaigns: a slow, batched EMT calculator for fault-injection tests.

``CalculatorSpec(factory="eqv2calc.campaigns.testing:slow_emt", factory_kwargs=(("delay_s",
0.05),))`` gives every worker ASE's EMT behind a ``predict_batch`` that sleeps ``delay_s``
per batched call, so a relaxation lasts long enough to kill its worker or driver mid-run.
The energies and forces are EMT's, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ase import Atoms
from ase.calculators.emt import EMT

from eqv2calc.drivers.testing import CountingBatchCalculator

__all__ = ["SlowBatchCalculator", "slow_emt"]


class SlowBatchCalculator(CountingBatchCalculator):
    """:class:`~eqv2calc.drivers.testing.CountingBatchCalculator` that sleeps ``delay_s``
    seconds per batched call (and per single call)."""

    def __init__(self, inner: Any, delay_s: float):
        super().__init__(inner)
        self.delay_s = float(delay_s)

    def predict_batch(self, atoms_list: Sequence[Atoms]) -> list[dict[str, Any]]:
        time.sleep(self.delay_s)
        return super().predict_batch(atoms_list)

    def calculate(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.delay_s)
        super().calculate(*args, **kwargs)


def slow_emt(delay_s: float = 0.05) -> SlowBatchCalculator:
    """ASE's EMT, batched, ``delay_s`` seconds slower per call."""
    return SlowBatchCalculator(EMT(), delay_s)
