"""Predictions for many structures at once, and splitting work by a memory budget.

:func:`predict_many` is the one place where drivers ask a calculator for results. A
calculator with ``predict_batch(atoms_list) -> list[dict]`` (such as
``EquiformerV2Calculator``) gets all structures in one call; any other ASE calculator (EMT,
...) is called once per structure. Both paths return the same dictionaries:

* ``"energy"``: float, eV
* ``"free_energy"``: float, eV (equal to the energy when the calculator does not give it)
* ``"forces"``: ``(N, 3)`` float64 array, eV/Å, **raw** (constraints not applied)
* ``"stress"``: ``(6,)`` Voigt ``xx, yy, zz, yz, xz, xy``, eV/Å³, when asked for and available
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

__all__ = [
    "DEFAULT_MAX_ATOMS_PER_BATCH",
    "chunk_by_atoms",
    "error_text",
    "predict_isolating",
    "predict_many",
    "supports_stress",
]

#: Default memory budget of a batch, in atoms.
DEFAULT_MAX_ATOMS_PER_BATCH = 1000


def supports_stress(calc: Calculator) -> bool:
    """Whether ``calc`` can give a stress (``"stress" in calc.implemented_properties``)."""
    return "stress" in getattr(calc, "implemented_properties", ())


def _normalise(result: dict[str, Any], n_atoms: int, want_stress: bool) -> dict[str, Any]:
    energy = float(result["energy"])
    out: dict[str, Any] = {
        "energy": energy,
        "free_energy": float(result.get("free_energy", energy)),
        "forces": np.array(result["forces"], dtype=np.float64).reshape(n_atoms, 3),
    }
    if want_stress and result.get("stress") is not None:
        stress = np.asarray(result["stress"], dtype=np.float64)
        if stress.shape == (3, 3):
            stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        out["stress"] = stress.reshape(6).copy()
    return out


def _predict_one(calc: Calculator, atoms: Atoms, want_stress: bool) -> dict[str, Any]:
    work = atoms.copy()  # never attach the calculator to the caller's Atoms
    work.calc = calc
    try:
        result: dict[str, Any] = {"energy": work.get_potential_energy()}
        if "free_energy" in getattr(calc, "implemented_properties", ()):
            result["free_energy"] = work.get_potential_energy(force_consistent=True)
        result["forces"] = work.get_forces(apply_constraint=False)
        if want_stress:
            result["stress"] = work.get_stress(voigt=True, apply_constraint=False)
    except Exception:
        # A calculator that failed half-way (EMT on an unknown element, say) may keep a
        # broken cached state; forget it so the next structure is computed from scratch.
        reset = getattr(calc, "reset", None)
        if callable(reset):
            reset()
        raise
    return result


def predict_many(
    calc: Calculator, atoms_list: Sequence[Atoms], *, stress: bool | None = None
) -> list[dict[str, Any]]:
    """Energies, forces (and stress) for many structures, batched when the calculator can.

    Args:
        calc: Any ASE calculator. If it has ``predict_batch``, all structures go through one
            call of it; otherwise the structures are computed one after another.
        atoms_list: The structures (not modified; no calculator is attached to them).
        stress: Whether to return the stress (eV/Å³). None: when the calculator implements
            stress and the structure is periodic in all three directions. True: always
            (a calculator without stress raises). False: never.

    Returns:
        One dictionary per structure with the keys described in the module docstring.

    Raises:
        Whatever the calculator raises, e.g. ``ValueError`` for an element the model does not
        know (EMT raises ``NotImplementedError``).
    """
    atoms_list = list(atoms_list)
    if not atoms_list:
        return []

    def want(atoms: Atoms) -> bool:
        if stress is None:
            return supports_stress(calc) and bool(np.all(atoms.pbc))
        return stress

    predict_batch = getattr(calc, "predict_batch", None)
    if callable(predict_batch):
        raw = predict_batch(atoms_list)
        if len(raw) != len(atoms_list):
            raise RuntimeError(
                f"{type(calc).__name__}.predict_batch returned {len(raw)} results "
                f"for {len(atoms_list)} structures"
            )
        if stress is True and any(r.get("stress") is None for r in raw):
            raise ValueError(
                f"{type(calc).__name__} returned no stress (the model has no stress head)"
            )
        return [_normalise(r, len(a), want(a)) for r, a in zip(raw, atoms_list)]
    return [_normalise(_predict_one(calc, a, want(a)), len(a), want(a)) for a in atoms_list]


def chunk_by_atoms(sizes: Sequence[int], max_atoms: int) -> list[list[int]]:
    """Split structures, in order, into chunks of at most ``max_atoms`` atoms in total.

    A structure larger than the budget on its own gets a chunk to itself.

    Args:
        sizes: Number of atoms of each structure.
        max_atoms: Budget per chunk (atoms).

    Returns:
        Lists of indices into ``sizes``.
    """
    if max_atoms < 1:
        raise ValueError(f"max_atoms must be at least 1, got {max_atoms}")
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if current and total + n > max_atoms:
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    if current:
        chunks.append(current)
    return chunks


def _check_finite(result: dict[str, Any]) -> str | None:
    if not math.isfinite(result["energy"]):
        return f"calculator returned a non-finite energy ({result['energy']})"
    if not np.isfinite(result["forces"]).all():
        atom = int(np.flatnonzero(~np.isfinite(result["forces"]).all(axis=1))[0])
        return f"calculator returned non-finite forces (first on atom {atom})"
    if "stress" in result and not np.isfinite(result["stress"]).all():
        return "calculator returned a non-finite stress"
    return None


def error_text(err: BaseException) -> str:
    """One line for an exception: its message (prefixed by its type unless a ValueError)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    kind = type(err).__name__
    if isinstance(err, ValueError) and text:
        return text
    return f"{kind}: {text}" if text else kind


def predict_isolating(
    calculator: Calculator, atoms_list: Sequence[Atoms], want_stress: bool | None = None
) -> list[dict[str, Any] | str]:
    """:func:`predict_many`, but a failure is pinned on the structures that cause it.

    If the batched call raises, every structure is retried on its own. Non-finite outputs
    also count as failures.

    Returns:
        Per structure either the result dictionary or a one-line error message (str).
    """
    try:
        results: list[Any] = predict_many(calculator, atoms_list, stress=want_stress)
    except Exception as err:
        if len(atoms_list) == 1:
            return [error_text(err)]
        results = []
        for atoms in atoms_list:
            try:
                results.append(predict_many(calculator, [atoms], stress=want_stress)[0])
            except Exception as single_err:
                results.append(error_text(single_err))
    out: list[dict[str, Any] | str] = []
    for r in results:
        if isinstance(r, str):
            out.append(r)
        else:
            problem = _check_finite(r)
            out.append(problem if problem else r)
    return out
