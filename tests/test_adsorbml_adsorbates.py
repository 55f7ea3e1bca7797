"""Adsorbate library: coverage of the OC20 set, geometry sanity, lookup, close-match errors, files."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.data import covalent_radii
from ase.io import write
from ase.neighborlist import neighbor_list

from eqv2calc.adsorbml.adsorbates import (
    OC20_ADSORBATES,
    UnknownAdsorbateError,
    get_adsorbate,
    list_adsorbates,
    load_adsorbate_file,
    resolve_adsorbate,
)

# A sample of OC20 names (the data set's own spelling) across C1, C2, N and O chemistry.
OC20_SAMPLE = [
    "*O",
    "*H",
    "*OH",
    "*OH2",
    "*CO",
    "*COH",
    "*CHO",
    "*CH3",
    "*OCH3",
    "*CH2*O",
    "*C*C",
    "CH2*CO",
    "*COCH2OH",
    "*OCH2CH3",
    "*NH2",
    "*NH3",
    "*NO",
    "*N*NO",
    "*NO3",
    "*ONN(CH3)2",
    "*NH2N(CH3)2",
    "*CN",
    "*N2",
]


def test_library_holds_the_oc20_set():
    assert len(OC20_ADSORBATES) == 82
    assert len(set(OC20_ADSORBATES)) == 82
    for name in OC20_SAMPLE:
        assert name in OC20_ADSORBATES
    assert "*COOH" in list_adsorbates()  # extra, commonly used


@pytest.mark.parametrize("name", list_adsorbates())
def test_geometry_matches_intended_bonds(name):
    ads = get_adsorbate(name)
    atoms = ads.atoms.copy()
    # binding atom first, at the origin
    assert ads.binding_indices[0] == 0
    np.testing.assert_allclose(atoms.positions[0], 0.0, atol=1e-9)
    # bond graph from covalent radii (as the anomaly detector sees it) == the intended bonds
    box = atoms.copy()
    box.cell = [40, 40, 40]
    box.center()
    i, j = neighbor_list("ij", box, covalent_radii[box.numbers] + 0.3)
    found = {(min(a, b), max(a, b)) for a, b in zip(i, j)}
    wanted = {(min(a, b), max(a, b)) for a, b, _ in ads.bonds}
    assert found == wanted, name
    # the molecule points away from the surface: centre of mass not below the binding atom
    if len(atoms) > 1 and len(ads.binding_indices) == 1:
        assert atoms.get_center_of_mass()[2] > -0.05, name


def test_bidentate_binding_atoms_are_level():
    for name in ("*CH2*O", "*C*C", "*CH*CH", "*N*NH", "*CHO*CHO"):
        ads = get_adsorbate(name)
        z = ads.atoms.positions[ads.binding_indices, 2]
        assert abs(z[1] - z[0]) < 1e-6, name


def test_linear_co_points_up():
    ads = get_adsorbate("CO")
    assert ads.symbols == ["C", "O"]
    v = ads.atoms.positions[1] - ads.atoms.positions[0]
    assert v[2] > 0 and np.hypot(v[0], v[1]) < 1e-6


@pytest.mark.parametrize(
    "query,expected",
    [
        ("*O", "*O"),
        ("O", "*O"),
        ("CO", "*CO"),
        ("H2O", "*OH2"),
        ("CH2*CO", "CH2*CO"),
        ("COOH", "*COOH"),
    ],
)
def test_lookup_spellings(query, expected):
    assert resolve_adsorbate(query) == expected


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownAdsorbateError) as info:
        get_adsorbate("*COOOH")
    msg = str(info.value)
    assert "unknown adsorbate '*COOOH'" in msg
    assert "*COOH" in msg  # the closest real name is suggested


def test_adsorbate_file_with_binding_atoms(tmp_path):
    # methanol written with the O atom last; bind through O
    mol = Atoms(
        "CH3OH",
        positions=[
            [0, 0, 0],
            [1.09, 0, 0],
            [-0.36, 1.03, 0],
            [-0.36, -0.51, 0.89],
            [-0.47, -0.68, -1.21],
            [0.0, -0.4, -1.9],
        ],
    )
    path = tmp_path / "meoh.xyz"
    write(path, mol)
    ads = load_adsorbate_file(path, [4])
    assert ads.symbols[0] == "O"
    assert sorted(ads.symbols) == sorted(mol.get_chemical_symbols())
    np.testing.assert_allclose(ads.atoms.positions[0], 0.0, atol=1e-9)
    # the rest of the molecule is above the binding atom after orientation
    assert ads.atoms.get_center_of_mass()[2] > 0
    # interatomic distances are unchanged (a rigid motion)
    d0 = np.sort(mol.get_all_distances().ravel())
    d1 = np.sort(ads.atoms.get_all_distances().ravel())
    np.testing.assert_allclose(d0, d1, atol=1e-9)


def test_adsorbate_file_errors(tmp_path):
    path = tmp_path / "co.xyz"
    write(path, Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]]))
    with pytest.raises(ValueError, match="index 5 is out of range"):
        load_adsorbate_file(path, [5])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adsorbate_file(tmp_path / "missing.xyz", [0])
