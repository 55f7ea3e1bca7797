"""eqv2calc: an independent EquiformerV2 implementation with an ASE calculator and drivers.

Units throughout: energies in eV, forces in eV/Å, stress in eV/Å³, lengths in Å.
"""

from __future__ import annotations

from eqv2calc.version import __version__

__all__ = ["EquiformerV2Calculator", "load_checkpoint", "__version__"]


def __getattr__(name: str):
    # Lazy imports keep `import eqv2calc` cheap (torch is imported only when needed).
    if name == "EquiformerV2Calculator":
        from eqv2calc.calculator import EquiformerV2Calculator

        return EquiformerV2Calculator
    if name == "load_checkpoint":
        from eqv2calc.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'eqv2calc' has no attribute {name!r}")
