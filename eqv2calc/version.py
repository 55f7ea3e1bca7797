"""The package version and the versions of what a result depends on (for provenance)."""

from __future__ import annotations

import platform

__version__ = "0.2.0"

__all__ = ["__version__", "software_versions"]


def software_versions() -> dict[str, str]:
    """Versions of eqv2calc, Python, torch, ASE and numpy, for provenance records.

    torch is imported here only if it is already loaded or importable; a missing package is
    reported as ``"missing"`` rather than raising.
    """
    out = {"eqv2calc": __version__, "python": platform.python_version()}
    for name in ("torch", "ase", "numpy"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "unknown"))
        except ImportError:
            out[name] = "missing"
    return out
