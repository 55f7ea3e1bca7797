"""Matplotlib, imported only when a figure is drawn.

Importing matplotlib costs about a second and it is needed only by the few functions that write
a PNG (phonon band structure, campaign summary, AdsorbML energies). They call :func:`pyplot`,
which loads matplotlib with the non-interactive ``Agg`` backend, or raises
:class:`MatplotlibMissingError` (an :class:`ImportError`) whose message says how to install it.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["INSTALL_HINT", "MatplotlibMissingError", "pyplot"]

INSTALL_HINT = "pip install matplotlib"


class MatplotlibMissingError(ImportError):
    """matplotlib is not installed (the message names the figure and how to install it)."""


def pyplot(figure: str = "this figure") -> ModuleType:
    """``matplotlib.pyplot`` on the ``Agg`` backend (files only, no window).

    Args:
        figure: what is being drawn, for the error message (e.g. ``"the phonon plot"``).

    Raises:
        MatplotlibMissingError: matplotlib cannot be imported.
    """
    try:
        import matplotlib
    except ImportError as err:
        raise MatplotlibMissingError(
            f"drawing {figure} needs matplotlib: {INSTALL_HINT} ({err})"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
