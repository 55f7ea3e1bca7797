"""matplotlib is imported only when a figure is drawn, with a clear message when it is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eqv2calc import plotting


def test_importing_the_package_does_not_import_matplotlib():
    code = (
        "import sys\n"
        "import eqv2calc, eqv2calc.cli, eqv2calc.drivers.phonons, eqv2calc.campaigns.report\n"
        "import eqv2calc.adsorbml\n"
        "print('matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pyplot_uses_the_agg_backend():
    plt = plotting.pyplot()
    assert plt.get_backend().lower() == "agg"


def test_missing_matplotlib_names_the_figure_and_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(plotting.MatplotlibMissingError, match="the phonon plot") as info:
        plotting.pyplot("the phonon plot")
    assert "pip install matplotlib" in str(info.value)
    assert isinstance(info.value, ImportError)  # the CLI reports ImportErrors without traceback
