"""Reference (DFT) cost of an AdsorbML run, counted the two ways the papers do.

* **Ionic steps** (EquiformerV2 Table 3 and AdsorbML's headline speed-ups): a single point is
  one ionic step; a relaxation is as many ionic steps as it has force evaluations (optimizer
  steps + 1). The dense search relaxes every placement with the reference method.
* **SCF steps** (AdsorbML also reports them): DFT cost per ionic step is not constant. The
  first ionic step of a calculation starts from scratch (random wavefunctions) and needs many
  self-consistent-field iterations; later ionic steps of a relaxation start from the previous
  step's wavefunctions and need fewer. Without a DFT code at hand we *estimate* SCF steps with
  the model of :class:`SCFModel`::

      SCF(calculation with n ionic steps) = first + (n - 1) * later

  The defaults (``first`` = 25, ``later`` = 8) are typical magnitudes for a metal slab with
  VASP at EDIFF = 1e-4 (5 non-self-consistent start-up steps, NELMDL = -5, plus ~20 to converge
  from scratch; 5–10 per warm-started ionic step). They are an assumption, not a measurement:
  change them to your code's numbers (read them from your OSZICARs). With them a single point
  costs as much as ~3 relaxation steps, so SCF speed-ups are smaller than ionic-step ones for
  ML+SP and close to them for ML+RX, as in AdsorbML.

Clean-slab and gas-phase reference calculations are needed by the dense search too; they are
counted apart ("overhead") and left out of the speed-ups, as in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SCFModel", "CostAccount", "account", "dense_estimate", "speedup"]


@dataclass(frozen=True)
class SCFModel:
    """SCF steps per reference calculation: ``first`` for the first ionic step (from scratch),
    ``later`` for each further ionic step of a relaxation (see module docstring)."""

    first: float = 25.0
    later: float = 8.0

    def __post_init__(self) -> None:
        if not (self.first > 0 and self.later > 0):
            raise ValueError(
                f"SCF model needs positive steps per ionic step, got first={self.first}, "
                f"later={self.later}"
            )

    def scf_steps(self, ionic_steps: float) -> float:
        """Estimated SCF steps of one calculation with ``ionic_steps`` ionic steps (>= 1)."""
        if ionic_steps <= 0:
            return 0.0
        return self.first + (ionic_steps - 1.0) * self.later

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["formula"] = "SCF = first + (ionic_steps - 1) * later, per calculation"
        return d


@dataclass
class CostAccount:
    """Reference cost of a set of calculations.

    Attributes:
        calculations: reference jobs (single points or relaxations).
        ionic_steps: reference ionic steps (force evaluations) over all jobs.
        scf_steps: estimated SCF steps over all jobs (:class:`SCFModel`).
    """

    calculations: float
    ionic_steps: float
    scf_steps: float

    def as_dict(self, nd: int = 1) -> dict[str, float]:
        return {
            "calculations": round(float(self.calculations), nd),
            "ionic_steps": round(float(self.ionic_steps), nd),
            "scf_steps_estimate": round(float(self.scf_steps), nd),
        }


def account(ionic_steps_per_job: Sequence[float], model: SCFModel | None = None) -> CostAccount:
    """Cost of the jobs whose ionic-step counts are ``ionic_steps_per_job`` (1 per single
    point, optimizer steps + 1 per relaxation)."""
    model = model or SCFModel()
    steps = [float(n) for n in ionic_steps_per_job]
    return CostAccount(
        calculations=float(len(steps)),
        ionic_steps=float(sum(steps)),
        scf_steps=float(sum(model.scf_steps(n) for n in steps)),
    )


def dense_estimate(
    n_placements: int, mean_ionic_steps: float, model: SCFModel | None = None
) -> CostAccount:
    """Cost of relaxing all ``n_placements`` with the reference method, each taking
    ``mean_ionic_steps`` ionic steps (the measured per-placement counts, when known, are better:
    pass them to :func:`account`)."""
    model = model or SCFModel()
    if not math.isfinite(mean_ionic_steps):
        nan = float("nan")
        return CostAccount(float(n_placements), nan, nan)
    return CostAccount(
        calculations=float(n_placements),
        ionic_steps=n_placements * float(mean_ionic_steps),
        scf_steps=n_placements * model.scf_steps(float(mean_ionic_steps)),
    )


def speedup(dense: float, used: float) -> float:
    """``dense / used`` (NaN when either is missing or ``used`` is 0)."""
    if not (math.isfinite(dense) and math.isfinite(used)) or used <= 0:
        return float("nan")
    return float(dense) / float(used)
