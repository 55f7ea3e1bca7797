"""Tests for eqv2calc.checks: specific errors for unusable structures."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT

from eqv2calc.checks import StructureError, check_stress_support, validate_structure


class _NoStress(Calculator):
    implemented_properties = ["energy", "forces"]


def test_good_structures_pass():
    validate_structure(bulk("Cu", cubic=True), relax_cell=True)
    validate_structure(molecule("H2O"))


def test_empty():
    with pytest.raises(StructureError, match="empty"):
        validate_structure(Atoms())


def test_nan_position_names_the_atom():
    atoms = molecule("H2O")
    atoms.positions[2, 1] = np.nan
    with pytest.raises(StructureError, match=r"atom 2 \(H\).*non-finite"):
        validate_structure(atoms, label="water.xyz")


def test_overlap_names_pair_and_distance():
    atoms = Atoms("CuO", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[8, 8, 8], pbc=True)
    with pytest.raises(StructureError) as info:
        validate_structure(atoms, label="x.cif")
    text = str(info.value)
    assert text.startswith("x.cif: ")
    assert "atoms 0 (Cu) and 1 (O)" in text
    assert "0.300" in text


def test_overlap_across_the_periodic_boundary():
    atoms = Atoms("Cu2", positions=[[0.1, 0, 0], [4.9, 0, 0]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(StructureError, match="0.200"):
        validate_structure(atoms)
    atoms.pbc = False  # without periodicity they are 4.8 Å apart
    validate_structure(atoms)


def test_cell_relaxation_needs_3d_periodicity():
    water = molecule("H2O")
    with pytest.raises(StructureError, match="periodic in all three"):
        validate_structure(water, relax_cell=True)


def test_periodic_direction_without_cell_vector():
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[3, 3, 0], pbc=True)
    with pytest.raises(StructureError, match="cell vector c is zero"):
        validate_structure(atoms)


def test_check_stress_support():
    check_stress_support(EMT())
    with pytest.raises(ValueError, match="no stress head"):
        check_stress_support(_NoStress())
