"""Hessians ∂²E/∂x∂x (eV/Å²) of one structure, and how non-conservative a model is.

* Gradient (conservative) models: second derivatives of the energy by autograd
  (:func:`eqv2calc.model.conservative.gradient_hessian`): exact and symmetric.
* Any other calculator (direct eqV2 heads, EMT, ...): central finite differences of the forces,
  ``H[3i+a, :] = −(F(x + δ·e_ia) − F(x − δ·e_ia)) / 2δ``, with all ``6N`` displaced copies
  evaluated in one batched call when the calculator has ``predict_batch`` (else one by one).

A conservative model has a symmetric Hessian. Forces that are not an energy gradient (direct
heads) give ``H ≠ Hᵀ``; :attr:`HessianResult.asymmetry` = ‖H − Hᵀ‖_F / ‖H‖_F measures it.
Phonons and vibrational analyses use the symmetrised ``(H + Hᵀ)/2``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

__all__ = ["HessianResult", "asymmetry", "compute_hessian", "finite_difference_hessian"]

#: Default displacement of the finite differences, Å (as ASE's Vibrations and phonopy use).
DEFAULT_DELTA = 0.01


@dataclass
class HessianResult:
    """A Hessian and how it was obtained.

    Attributes:
        hessian: ``(3N, 3N)`` eV/Å², row/column ``3i + a`` = atom ``i``, Cartesian axis ``a``
            (as computed; not symmetrised).
        method: ``"autograd"`` or ``"finite differences"``.
        asymmetry: ‖H − Hᵀ‖_F / ‖H‖_F (0 for an exactly conservative model).
        delta: finite-difference displacement (Å), None for autograd.
        seconds: wall time.
    """

    hessian: np.ndarray
    method: str
    asymmetry: float
    delta: float | None
    seconds: float

    @property
    def symmetrized(self) -> np.ndarray:
        """``(H + Hᵀ) / 2`` (eV/Å²)."""
        return 0.5 * (self.hessian + self.hessian.T)

    def summary(self) -> str:
        """One line: method, size and the force-asymmetry measure."""
        how = self.method + (f" (δ = {self.delta:g} Å)" if self.delta is not None else "")
        return (
            f"Hessian {self.hessian.shape[0]}×{self.hessian.shape[1]} by {how}: "
            f"‖H − Hᵀ‖/‖H‖ = {self.asymmetry:.2e} in {self.seconds:.2f} s"
        )


def asymmetry(hessian: np.ndarray) -> float:
    """‖H − Hᵀ‖_F / ‖H‖_F (0 when ‖H‖ = 0)."""
    h = np.asarray(hessian, dtype=np.float64)
    norm = np.linalg.norm(h)
    return float(np.linalg.norm(h - h.T) / norm) if norm > 0 else 0.0


def displaced_copies(atoms: Atoms, delta: float) -> list[Atoms]:
    """The ``6N`` copies ``x ± δ·e_ia`` in the order atom i, axis a, then sign (+, −)."""
    copies = []
    for i in range(len(atoms)):
        for a in range(3):
            for sign in (1.0, -1.0):
                moved = atoms.copy()
                moved.calc = None
                positions = moved.get_positions()
                positions[i, a] += sign * delta
                moved.set_positions(positions, apply_constraint=False)
                copies.append(moved)
    return copies


def _forces_of(calc, structures: Sequence[Atoms], batch_size: int | None) -> list[np.ndarray]:
    """Forces (eV/Å, constraints not applied) of many structures: batched when possible."""
    if hasattr(calc, "predict_batch"):
        size = len(structures) if batch_size is None else max(1, int(batch_size))
        out = []
        for start in range(0, len(structures), size):
            out += [r["forces"] for r in calc.predict_batch(structures[start : start + size])]
        return out
    out = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append(np.array(atoms.get_forces(apply_constraint=False)))
    return out


def finite_difference_hessian(
    calc, atoms: Atoms, delta: float = DEFAULT_DELTA, batch_size: int | None = None
) -> np.ndarray:
    """Central-difference Hessian ``(3N, 3N)`` eV/Å² from forces at ``x ± δ·e_ia``.

    Args:
        calc: an ASE calculator; with ``predict_batch`` (eqv2calc) all ``6N`` displaced copies
            go in one batched call (or calls of ``batch_size`` structures).
        atoms: the structure (positions in Å).
        delta: displacement, Å.
        batch_size: most structures per batched call (None: all at once).
    """
    if delta <= 0:
        raise ValueError(f"delta must be a positive displacement in Å, got {delta}")
    n = len(atoms)
    forces = _forces_of(calc, displaced_copies(atoms, delta), batch_size)
    h = np.empty((3 * n, 3 * n))
    for row in range(3 * n):
        plus, minus = forces[2 * row], forces[2 * row + 1]
        h[row] = -(plus - minus).reshape(-1) / (2.0 * delta)
    return h


def compute_hessian(
    calc,
    atoms: Atoms,
    *,
    method: str = "auto",
    delta: float = DEFAULT_DELTA,
    batch_size: int | None = None,
) -> HessianResult:
    """The Hessian of ``atoms`` with ``calc`` (see the module docstring).

    Args:
        calc: an eqv2calc :class:`~eqv2calc.calculator.EquiformerV2Calculator` or any ASE
            calculator.
        atoms: the structure.
        method: ``"auto"`` (autograd for gradient models, else finite differences),
            ``"autograd"`` (gradient models only) or ``"finite-differences"``.
        delta: finite-difference displacement, Å.
        batch_size: most structures per batched call of the finite differences.
    """
    if method not in ("auto", "autograd", "finite-differences"):
        raise ValueError(
            f"method must be 'auto', 'autograd' or 'finite-differences', got {method!r}"
        )
    gradient = getattr(calc, "forces_kind", "direct") == "gradient"
    if method == "autograd" and not gradient:
        raise ValueError(
            "method='autograd' needs a model with gradient forces (forces_kind 'gradient'); "
            "this one predicts forces directly: use method='finite-differences'"
        )
    t0 = time.perf_counter()
    if gradient and method != "finite-differences":
        from eqv2calc.model.conservative import gradient_hessian

        h = gradient_hessian(calc.model, calc.structure_input([atoms])).double().cpu().numpy()
        used, used_delta = "autograd", None
    else:
        h = finite_difference_hessian(calc, atoms, delta, batch_size)
        used, used_delta = "finite differences", float(delta)
    return HessianResult(h, used, asymmetry(h), used_delta, time.perf_counter() - t0)
