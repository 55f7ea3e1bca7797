"""The record of one relaxation, as every relaxation path produces it.

The ASE drivers (:mod:`eqv2calc.drivers.relax`, :mod:`eqv2calc.drivers.batch_relax`) and the
batched torch engine (:mod:`eqv2calc.engine.relax`) all return :class:`RelaxResult`; it lives
here, below both, so that the engine does not import the drivers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms


@dataclass
class RelaxResult:
    """Outcome of relaxing one structure.

    Attributes:
        label: Name of the structure.
        atoms: Relaxed copy (constraints kept) with the final energy (eV), forces (eV/Å) and,
            if computed, stress (eV/Å³) attached as a ``SinglePointCalculator``. For a failed
            structure: a copy of the input, without results.
        initial_energy: Energy of the starting structure, eV (NaN if it failed).
        final_energy: Energy of the final structure, eV (NaN if it failed).
        max_force: Largest force norm on a free atom at the end, eV/Å (NaN if it failed).
        steps: Optimizer steps taken (including those before a restart).
        converged: Whether the convergence criterion was met.
        energies: Energy after every step (index 0: start), eV.
        optimizer: Optimizer name.
        fmax: Convergence threshold used, eV/Å.
        relax_cell: Whether the cell was relaxed.
        max_stress: Largest absolute stress component at the end (eV/Å³), when relaxing
            the cell.
        trajectory: Trajectory file written, if any.
        error: One-line reason when the structure could not be relaxed; None otherwise.
        restarted_from: Number of steps read back from an earlier trajectory (0: fresh start).
        wall_time: Seconds spent on this structure (wall clock; for batched runs, from its
            first to its last evaluation).
    """

    label: str
    atoms: Atoms
    initial_energy: float = math.nan
    final_energy: float = math.nan
    max_force: float = math.nan
    steps: int = 0
    converged: bool = False
    energies: list[float] = field(default_factory=list)
    optimizer: str = "FIRE"
    fmax: float = 0.05
    relax_cell: bool = False
    max_stress: float | None = None
    trajectory: Path | None = None
    error: str | None = None
    restarted_from: int = 0
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the relaxation ran (converged or not) without an error."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays except the per-step energies)."""
        return {
            "label": self.label,
            "status": "error"
            if self.error
            else ("converged" if self.converged else "not_converged"),
            "converged": self.converged,
            "error": self.error,
            "n_atoms": len(self.atoms) if self.atoms is not None else None,
            "formula": self.atoms.get_chemical_formula() if self.atoms is not None else None,
            "initial_energy_eV": _finite_or_none(self.initial_energy),
            "final_energy_eV": _finite_or_none(self.final_energy),
            "max_force_eV_per_A": _finite_or_none(self.max_force),
            "max_stress_eV_per_A3": self.max_stress,
            "steps": self.steps,
            "optimizer": self.optimizer,
            "fmax_eV_per_A": self.fmax,
            "relax_cell": self.relax_cell,
            "restarted_from_step": self.restarted_from,
            "trajectory": str(self.trajectory) if self.trajectory else None,
            "wall_time_s": round(self.wall_time, 3),
            "energies_eV": [float(e) for e in self.energies],
        }

    def summary_line(self) -> str:
        """One human-readable line: status, steps, energies, final max force."""
        if self.error:
            return f"{self.label}: FAILED: {self.error}"
        status = "converged" if self.converged else "NOT CONVERGED"
        return (
            f"{self.label}: {status} after {self.steps} {self.optimizer} steps, "
            f"E {self.initial_energy:.6f} -> {self.final_energy:.6f} eV "
            f"(dE {self.final_energy - self.initial_energy:+.6f} eV), "
            f"max force {self.max_force:.4f} eV/Å (fmax {self.fmax})"
        )


def written_file(path: str | Path | None) -> str | None:
    """``str(path)`` if that file exists, else None: the record of a failed relaxation names
    only the files it left (a structure refused before its first step wrote no trajectory
    and no log)."""
    return str(path) if path is not None and Path(path).is_file() else None


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def max_free_force(atoms: Atoms) -> float:
    """Largest force norm (eV/Å) after constraints are applied, i.e. over free atoms."""
    forces = atoms.get_forces()  # constraints applied: fixed atoms read zero
    return float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
