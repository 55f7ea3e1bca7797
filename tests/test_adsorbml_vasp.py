"""VASP input folders (OC20 settings) written with ASE's writer and read back with ASE."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111
from ase.calculators.vasp import Vasp
from ase.constraints import FixAtoms
from ase.io import read

from eqv2calc.adsorbml.adsorbates import get_adsorbate
from eqv2calc.adsorbml.placement import generate_placements
from eqv2calc.adsorbml.slabs import prepare_slab
from eqv2calc.adsorbml.vasp_inputs import oc20_kpoints, write_vasp_inputs


@pytest.fixture(scope="module")
def adslab():
    slab = fcc111("Cu", size=(3, 3, 3), vacuum=7.0)
    slab.info.pop("adsorbate_info", None)
    system = prepare_slab(slab, "cu111")
    return generate_placements(system.atoms, get_adsorbate("*OCH3"), num_random=1, seed=0)[-1].atoms


def _incar(folder):
    calc = Vasp(directory=str(folder))
    calc.read_incar(str(folder / "INCAR"))
    return calc


def test_oc20_kpoint_rule_uses_the_largest_cartesian_component():
    # fairchem calculate_surface_k_points: round(40 / ||a||_inf), round(40 / ||b||_inf), 1
    atoms = Atoms("Cu", cell=[[6.0, 6.0, 0.0], [0.0, 13.0, 0.0], [0.0, 0.0, 20.0]], pbc=True)
    assert oc20_kpoints(atoms) == (7, 3, 1)  # 40/6 = 6.67 -> 7 (not 40/8.49 -> 5)
    big = Atoms("Cu", cell=[[90.0, 0, 0], [0, 90.0, 0], [0, 0, 20.0]], pbc=True)
    assert oc20_kpoints(big) == (1, 1, 1)


@pytest.mark.parametrize("mode,nsw,nelm", [("sp", 0, 300), ("rx", 2000, 60)])
def test_folder_opens_in_ase_with_oc20_settings(tmp_path, adslab, mode, nsw, nelm):
    folder = write_vasp_inputs(adslab, tmp_path / mode, mode)
    for name in ("POSCAR", "INCAR", "KPOINTS", "POTCAR.README", "ase-sort.dat"):
        assert (folder / name).is_file(), name
    assert not (folder / "POTCAR").exists()

    back = read(folder / "POSCAR", format="vasp")
    sort = np.loadtxt(folder / "ase-sort.dat", dtype=int)[:, 0]  # POSCAR order -> input order
    assert sorted(back.get_chemical_symbols()) == sorted(adslab.get_chemical_symbols())
    assert np.allclose(back.cell, adslab.cell, atol=1e-8)
    assert np.allclose(back.positions, adslab.positions[sort], atol=1e-6)
    fixed_in = set(adslab.constraints[0].get_indices().tolist())
    fixed_back = {int(sort[i]) for i in back.constraints[0].get_indices()}
    assert fixed_back == fixed_in

    calc = _incar(folder)
    assert calc.string_params["gga"] == "RP"
    assert calc.float_params["encut"] == pytest.approx(350.0)
    assert calc.exp_params["ediffg"] == pytest.approx(-0.03)
    assert calc.int_params["ibrion"] == 2
    assert calc.int_params["isif"] == 0
    assert calc.int_params["isym"] == 0
    assert calc.special_params["lreal"] == "Auto"
    assert calc.int_params["nsw"] == nsw
    assert calc.int_params["nelm"] == nelm

    calc.read_kpoints(str(folder / "KPOINTS"))
    assert tuple(int(k) for k in calc.input_params["kpts"]) == oc20_kpoints(adslab)
    note = (folder / "POTCAR.README").read_text()
    species = read(folder / "POSCAR", format="vasp").get_chemical_symbols()
    assert " ".join(dict.fromkeys(species)) in note


def test_left_handed_cell_is_made_right_handed(tmp_path):
    slab = fcc111("Pt", size=(2, 3, 3), vacuum=7.0)
    slab.set_cell(slab.cell[[1, 0, 2]], scale_atoms=False)  # a x b now points down
    slab.set_constraint(FixAtoms(indices=[0]))
    assert np.linalg.det(slab.cell) < 0
    back = read(write_vasp_inputs(slab, tmp_path / "lh") / "POSCAR", format="vasp")
    assert np.linalg.det(back.cell) > 0
    assert np.allclose(back.cell[0], slab.cell[1]) and np.allclose(back.cell[1], slab.cell[0])


def test_unknown_mode_is_an_error(tmp_path, adslab):
    with pytest.raises(ValueError, match="unknown VASP mode 'md'"):
        write_vasp_inputs(adslab, tmp_path / "x", "md")
