"""Reference-calculator specs and single reference calculations."""

from __future__ import annotations

import math

import pytest
from ase.build import fcc100
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT

from eqv2calc.adsorbml.reference import make_reference_calculator, run_reference


class Broken(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        raise RuntimeError("SCF did not converge")


def test_specs(monkeypatch, tmp_path):
    calc, label = make_reference_calculator("EMT")
    assert isinstance(calc, EMT) and label == "emt"
    calc, label = make_reference_calculator("ase.calculators.emt:EMT", tmp_path)
    assert isinstance(calc, EMT) and label == "ase.calculators.emt:EMT"
    with pytest.raises(ValueError, match="cannot import module"):
        make_reference_calculator("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="no callable"):
        make_reference_calculator("ase.calculators.emt:nothing_here")
    with pytest.raises(ValueError, match="use emt, vasp or module:function"):
        make_reference_calculator("gaussian")
    for var in ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="ASE_VASP_COMMAND"):
        make_reference_calculator("vasp", tmp_path)


def test_single_point_and_failure():
    slab = fcc100("Cu", size=(2, 2, 2), vacuum=6.0)
    res = run_reference(slab, EMT(), "sp")
    ref = slab.copy()
    ref.calc = EMT()
    assert res.calls == 1 and res.error is None
    assert res.energy == pytest.approx(ref.get_potential_energy())
    bad = run_reference(slab, Broken(), "sp")
    assert bad.error is not None and "SCF did not converge" in bad.error
    assert math.isnan(bad.energy)
    with pytest.raises(ValueError, match="sp or rx"):
        run_reference(slab, EMT(), "md")


def test_relaxation_counts_ionic_steps():
    slab = fcc100("Cu", size=(2, 2, 2), vacuum=6.0)
    slab.rattle(0.05, seed=0)
    res = run_reference(slab, EMT(), "rx", fmax=0.05, steps=200)
    assert res.converged and res.error is None
    assert res.calls >= 2  # ionic steps = optimizer steps + the starting point
    ref = res.atoms.copy()
    ref.calc = EMT()
    assert res.energy == pytest.approx(ref.get_potential_energy())
