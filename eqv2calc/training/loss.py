"""Energy + force (+ stress) loss and the validation error metrics.

The model returns physical units (eV, eV/Å, eV/Å³); each loss term is divided by a scale
(:class:`LossScales`, from the model's normalizers) so that the weights are unitless:

* energy: per-atom error ``(E_pred − E) / N`` (eV/atom), MAE or MSE;
* forces: ``"l2mae"`` = per-atom Euclidean norm of the error, or ``"mse"`` over components,
  averaged with per-atom weights ``w_i`` (``Σ w_i·err_i / Σ w_i``);
* stress: MAE or MSE over the 9 components, only for structures that carry stress.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqv2calc.model.potential import EquiformerV2Potential
from eqv2calc.training.config import LossConfig
from eqv2calc.training.data import Batch


@dataclass
class LossScales:
    """Divisors of the loss terms: eV/atom, eV/Å, eV/Å³."""

    energy_per_atom: float
    forces: float
    stress: float

    @classmethod
    def from_model(cls, model: EquiformerV2Potential) -> LossScales:
        norms = model.normalizers
        energy = norms.get("energy")
        forces = norms.get("forces")
        # a sum-pooled energy head is divided by avg_num_nodes: std / avg_num_nodes is per atom
        e = energy.std if energy is not None else 1.0
        if getattr(model.heads["energy"], "reduce", "sum") == "sum":
            e = e / float(model.config.avg_num_nodes)
        s = norms.get("stress_anisotropic") or norms.get("stress")
        return cls(
            energy_per_atom=max(float(e), 1e-6),
            forces=max(float(forces.std), 1e-6) if forces is not None else 1.0,
            stress=max(float(s.std), 1e-8) if s is not None else 1.0,
        )


def _reduce(err: torch.Tensor, kind: str) -> torch.Tensor:
    return err.abs() if kind == "mae" else err.pow(2)


def compute_loss(
    pred: dict[str, torch.Tensor], batch: Batch, config: LossConfig, scales: LossScales
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total loss (a scalar tensor) and its parts (floats, for logging)."""
    parts: dict[str, torch.Tensor] = {}
    e_err = (pred["energy"].float() - batch.energy) / batch.num_atoms / scales.energy_per_atom
    parts["energy"] = _reduce(e_err, config.energy_loss).mean()

    f_err = (pred["forces"].float() - batch.forces) / scales.forces
    per_atom = f_err.norm(dim=1) if config.forces_loss == "l2mae" else f_err.pow(2).mean(dim=1)
    weights = batch.force_weights
    parts["forces"] = (per_atom * weights).sum() / weights.sum().clamp(min=1e-12)

    total = config.energy_weight * parts["energy"] + config.forces_weight * parts["forces"]
    if "stress" in pred and bool(batch.has_stress.any()):
        mask = batch.has_stress
        s_err = (pred["stress"].float()[mask] - batch.stress[mask]) / scales.stress
        parts["stress"] = _reduce(s_err, config.stress_loss).mean()
        total = total + config.stress_weight * parts["stress"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


class ErrorAccumulator:
    """Running mean absolute errors over many batches.

    ``energy_per_atom`` (eV/atom), ``energy`` (eV/structure), ``forces`` (eV/Å, per component,
    as fairchem reports it), ``forces_l2`` (eV/Å, per atom vector norm), ``stress`` (eV/Å³,
    per component, structures with stress only).
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def _add(self, key: str, total: float, count: int) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    @torch.no_grad()
    def update(self, pred: dict[str, torch.Tensor], batch: Batch) -> None:
        e_err = (pred["energy"].double() - batch.energy.double()).abs()
        self._add("energy", float(e_err.sum()), int(e_err.numel()))
        self._add(
            "energy_per_atom", float((e_err / batch.num_atoms.double()).sum()), int(e_err.numel())
        )
        f_err = pred["forces"].double() - batch.forces.double()
        self._add("forces", float(f_err.abs().sum()), int(f_err.numel()))
        self._add("forces_l2", float(f_err.norm(dim=1).sum()), int(f_err.shape[0]))
        if "stress" in pred and bool(batch.has_stress.any()):
            s_err = (pred["stress"].double() - batch.stress.double())[batch.has_stress]
            self._add("stress", float(s_err.abs().sum()), int(s_err.numel()))

    def result(self) -> dict[str, float]:
        return {f"{k}_mae": self.sums[k] / max(self.counts[k], 1) for k in self.sums}
