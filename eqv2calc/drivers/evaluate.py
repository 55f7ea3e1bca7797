"""Single-point energies, forces and stress for many structures, batched by atom count.

Structures are validated, split into chunks of at most ``max_atoms_per_batch`` atoms and
each chunk goes through one :func:`~eqv2calc.batching.predict_many` call. A chunk
that makes the calculator fail is retried structure by structure, so one bad structure
(unknown element, ...) is reported and the others still get results.

Units: energy eV, forces eV/Å, stress eV/Å³ (Voigt order xx, yy, zz, yz, xz, xy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from eqv2calc.batching import (
    DEFAULT_MAX_ATOMS_PER_BATCH,
    chunk_by_atoms,
    error_text,
    predict_isolating,
)
from eqv2calc.checks import validate_structure
from eqv2calc.drivers.relax import final_copy, max_free_force

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """Single-point result for one structure.

    Attributes:
        label: Name of the structure.
        atoms: Copy of the structure with energy, forces (and stress) attached as a
            ``SinglePointCalculator`` (no results when it failed).
        energy: eV (NaN if it failed).
        forces: ``(N, 3)`` eV/Å, raw (constraints not applied), or None.
        stress: ``(6,)`` Voigt, eV/Å³, or None (no stress head or not 3D-periodic).
        max_force: Largest force norm on a free atom, eV/Å.
        error: One-line reason when it failed; None otherwise.
    """

    label: str
    atoms: Atoms
    energy: float = math.nan
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    max_force: float = math.nan
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the structure was evaluated."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (forces summarised by their maximum)."""
        n = len(self.atoms)
        ok = self.error is None
        return {
            "label": self.label,
            "status": "ok" if ok else "error",
            "error": self.error,
            "n_atoms": n,
            "formula": self.atoms.get_chemical_formula(),
            "energy_eV": self.energy if ok else None,
            "energy_per_atom_eV": self.energy / n if ok and n else None,
            "max_force_eV_per_A": self.max_force if ok else None,
            "stress_eV_per_A3": self.stress.tolist() if self.stress is not None else None,
        }

    def summary_line(self) -> str:
        """One human-readable line."""
        if self.error:
            return f"{self.label}: FAILED: {self.error}"
        line = (
            f"{self.label}: E {self.energy:.6f} eV ({self.energy / len(self.atoms):.6f} eV/atom), "
            f"max force {self.max_force:.4f} eV/Å"
        )
        if self.stress is not None:
            pressure_gpa = -float(np.mean(self.stress[:3])) * 160.21766208
            line += f", pressure {pressure_gpa:.3f} GPa"
        return line


def evaluate(
    atoms_list: Sequence[Atoms],
    calculator: Calculator,
    *,
    max_atoms_per_batch: int = DEFAULT_MAX_ATOMS_PER_BATCH,
    labels: Sequence[str] | None = None,
    stress: bool | None = None,
    progress: bool = False,
    on_result: Callable[[int, EvalResult], None] | None = None,
) -> list[EvalResult]:
    """Energies, forces (and stress) for many structures, one batched call per chunk.

    Args:
        atoms_list: Structures (not modified).
        calculator: Any ASE calculator; with ``predict_batch`` each chunk is one call.
        max_atoms_per_batch: Memory budget per call, in atoms (a larger structure runs alone).
        labels: Names of the structures (default ``<formula>_<index>``).
        stress: Compute the stress: None means when the calculator has it and the structure
            is periodic in 3D.
        progress: Show a tqdm progress bar over structures.
        on_result: Called as ``on_result(index, result)`` when each structure is done.

    Returns:
        One :class:`EvalResult` per input, in input order; failures have ``error`` set.
    """
    atoms_list = list(atoms_list)
    labels = (
        list(labels)
        if labels is not None
        else [f"{a.get_chemical_formula()}_{i}" for i, a in enumerate(atoms_list)]
    )
    if len(labels) != len(atoms_list):
        raise ValueError(f"{len(labels)} labels for {len(atoms_list)} structures")
    results: list[EvalResult | None] = [None] * len(atoms_list)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(atoms_list), desc="structures", unit="struct")

    def done(i: int, res: EvalResult) -> None:
        results[i] = res
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(i, res)

    valid: list[int] = []
    for i, atoms in enumerate(atoms_list):
        try:
            validate_structure(atoms, label=labels[i])
        except Exception as err:
            done(i, EvalResult(label=labels[i], atoms=atoms.copy(), error=error_text(err)))
            continue
        valid.append(i)
    try:
        for chunk in chunk_by_atoms([len(atoms_list[i]) for i in valid], max_atoms_per_batch):
            indices = [valid[k] for k in chunk]
            outputs = predict_isolating(calculator, [atoms_list[i] for i in indices], stress)
            for i, out in zip(indices, outputs):
                if isinstance(out, str):
                    done(i, EvalResult(label=labels[i], atoms=atoms_list[i].copy(), error=out))
                    continue
                final = final_copy(atoms_list[i], out)
                done(
                    i,
                    EvalResult(
                        label=labels[i],
                        atoms=final,
                        energy=float(out["energy"]),
                        forces=out["forces"],
                        stress=out.get("stress"),
                        max_force=max_free_force(final),
                    ),
                )
    finally:
        if bar is not None:
            bar.close()
    return [r for r in results if r is not None]
