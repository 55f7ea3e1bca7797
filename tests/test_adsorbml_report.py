"""adsorbml/report: the energy plot gets matplotlib through eqv2calc.plotting."""

from __future__ import annotations

import sys

import pytest

from eqv2calc.adsorbml.report import write_plot
from eqv2calc.plotting import MatplotlibMissingError


def test_energy_plot_without_matplotlib_names_the_plot_and_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(MatplotlibMissingError, match="the AdsorbML energy plot") as info:
        write_plot([], tmp_path / "energies.png")
    assert "pip install matplotlib" in str(info.value)
    assert not (tmp_path / "energies.png").exists()
