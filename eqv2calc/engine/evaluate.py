"""Energies, forces and stress for a batch held as tensors.

An *evaluator* is called as ``ev(positions, cells, numbers, batch, pbc, num_graphs, stress)``
and returns float64 tensors on the positions' device: ``"energy"`` ``[B]`` (eV), ``"forces"``
``[N, 3]`` (eV/Å, raw: fixed atoms not zeroed) and, when ``stress`` is true, ``"stress"``
``[B, 3, 3]`` (eV/Å³).

* :class:`ModelEvaluator` runs an :class:`~eqv2calc.calculator.EquiformerV2Calculator`
  straight from the tensors (graph built on the device, neighbour candidates reused with a
  skin), under a precision mode.
* :class:`AseEvaluator` wraps any other ASE calculator (EMT, say) through ``ase.Atoms`` on the
  host; it exists for tests and for calculators without a tensor entry point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from eqv2calc.batching import predict_many

__all__ = ["AseEvaluator", "ModelEvaluator", "make_evaluator"]


class ModelEvaluator:
    """Evaluate an ``EquiformerV2Calculator`` on tensors (no numpy round trip).

    Args:
        calc: the calculator (its model, device and dtype are used).
        skin: neighbour-list skin in Å (0 rebuilds every call; see
            :class:`eqv2calc.neighbors.NeighborCache`).
        precision: a :class:`eqv2calc.engine.precision.Precision` (None: the calculator's dtype
            as it is).
    """

    def __init__(self, calc, skin: float = 0.5, precision=None) -> None:
        from eqv2calc.neighbors import NeighborCache

        s = calc.loaded.graph_settings
        self.calc = calc
        self.device = calc.device
        self.has_stress = bool(calc.has_stress)
        self.max_atomic_number = calc.max_atomic_number
        self.neighbors = NeighborCache(s.cutoff, s.max_neighbors, s.strict, skin=skin)
        self.precision = precision

    def __call__(self, positions, cells, numbers, batch, pbc, num_graphs, stress=False):
        if stress and not self.has_stress:
            raise ValueError("this model has no stress head; cell relaxation needs one")
        if self.precision is not None:
            with self.precision.context(self.device):
                out = self.calc.predict_state(
                    positions, cells, numbers, batch, pbc, num_graphs, self.neighbors
                )
        else:
            out = self.calc.predict_state(
                positions, cells, numbers, batch, pbc, num_graphs, self.neighbors
            )
        res = {"energy": out["energy"].double(), "forces": out["forces"].double()}
        if stress:
            res["stress"] = out["stress"].double()
        return res

    def reset(self) -> None:
        """Forget reused neighbour candidates (call when the batch composition changes)."""
        self.neighbors.reset()


class AseEvaluator:
    """Evaluate any ASE calculator on tensors via ``ase.Atoms`` (host round trip).

    Args:
        calc: an ASE calculator; with ``predict_batch`` it is called once per evaluation.
        templates_getter: returns the ``Atoms`` templates (numbers, pbc, constraints) of the
            structures currently in the batch, in batch order.
    """

    def __init__(self, calc, templates_getter=None) -> None:
        self.calc = calc
        self.device = torch.device("cpu")
        self.has_stress = "stress" in getattr(calc, "implemented_properties", ())
        self.max_atomic_number = None
        self.templates_getter = templates_getter

    def __call__(self, positions, cells, numbers, batch, pbc, num_graphs, stress=False):
        pos = positions.detach().double().cpu().numpy()
        cel = cells.detach().double().cpu().numpy()
        z = numbers.cpu().numpy()
        per = pbc.cpu().numpy()
        counts = torch.bincount(batch, minlength=num_graphs).tolist()
        atoms_list: list[Atoms] = []
        start = 0
        for b, n in enumerate(counts):
            atoms_list.append(
                Atoms(
                    numbers=z[start : start + n],
                    positions=pos[start : start + n],
                    cell=cel[b],
                    pbc=per[b],
                )
            )
            start += n
        results = predict_many(self.calc, atoms_list, stress=bool(stress))
        dev = positions.device
        out = {
            "energy": torch.tensor([r["energy"] for r in results], dtype=torch.float64, device=dev),
            "forces": torch.as_tensor(
                np.concatenate([r["forces"] for r in results]).reshape(-1, 3),
                dtype=torch.float64,
                device=dev,
            ),
        }
        if stress:
            out["stress"] = torch.as_tensor(
                np.array([_voigt_to_3x3(r["stress"]) for r in results]),
                dtype=torch.float64,
                device=dev,
            )
        return out

    def reset(self) -> None:
        """Nothing to forget."""


def _voigt_to_3x3(s: Sequence[float] | np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.shape == (3, 3):
        return s
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def make_evaluator(calc, skin: float = 0.5, precision=None):
    """:class:`ModelEvaluator` for an eqv2calc calculator, :class:`AseEvaluator` otherwise."""
    if hasattr(calc, "predict_state"):
        return ModelEvaluator(calc, skin=skin, precision=precision)
    if precision is not None and precision.name not in ("float32", "float64"):
        raise ValueError(f"precision {precision.name!r} needs an eqv2calc model")
    return AseEvaluator(calc)
