"""Test helpers for code that uses drivers: a batched wrapper around any ASE calculator.

:class:`CountingBatchCalculator` gives an ordinary ASE calculator (EMT, say) the
``predict_batch`` method that ``EquiformerV2Calculator`` has, and counts how often it is
called and with how many structures. Tests use it to check that a driver makes one batched
call per optimizer step without needing the EquiformerV2 model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

__all__ = ["CountingBatchCalculator"]


class CountingBatchCalculator(Calculator):
    """An ASE calculator with ``predict_batch`` that delegates to another calculator.

    Args:
        inner: The calculator doing the work (e.g. ``ase.calculators.emt.EMT()``).

    Attributes:
        batch_calls: Number of ``predict_batch`` calls.
        batch_sizes: Number of structures in each of those calls.
        batch_atoms: Total number of atoms in each of those calls.
        single_calls: Number of ordinary ASE ``calculate`` calls.
    """

    def __init__(self, inner: Calculator):
        super().__init__()
        self.inner = inner
        self.implemented_properties = [
            p
            for p in ("energy", "free_energy", "forces", "stress")
            if p in inner.implemented_properties
        ]
        self.batch_calls = 0
        self.batch_sizes: list[int] = []
        self.batch_atoms: list[int] = []
        self.single_calls = 0

    def _one(self, atoms: Atoms) -> dict[str, Any]:
        from eqv2calc.batching import predict_many

        # Plain per-structure ASE evaluation (stress only for 3D-periodic structures).
        return predict_many(self.inner, [atoms])[0]

    def predict_batch(self, atoms_list: Sequence[Atoms]) -> list[dict[str, Any]]:
        """Energies (eV), raw forces (eV/Å) and stress (eV/Å³, 3D-periodic only) per structure."""
        self.batch_calls += 1
        self.batch_sizes.append(len(atoms_list))
        self.batch_atoms.append(sum(len(a) for a in atoms_list))
        return [self._one(a) for a in atoms_list]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.single_calls += 1
        self.results = self._one(self.atoms)
