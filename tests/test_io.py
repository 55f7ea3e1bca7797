"""Tests for eqv2calc.io: reading structure files, directories and globs; atomic writes."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io.trajectory import Trajectory

from eqv2calc.io import (
    StructureReadError,
    expand_inputs,
    load_structures,
    read_structure_file,
    write_json_atomic,
    write_structure,
)


def _slab():
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    return slab


def test_reads_cif_poscar_extxyz(tmp_path):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    ase.io.write(tmp_path / "cu.cif", cu)
    ase.io.write(tmp_path / "POSCAR", cu, format="vasp")
    ase.io.write(tmp_path / "cu.extxyz", cu)
    for name in ("cu.cif", "POSCAR", "cu.extxyz"):
        (atoms,) = read_structure_file(tmp_path / name)
        assert atoms.get_chemical_formula() == "Cu4"
        np.testing.assert_allclose(atoms.cell.cellpar(), cu.cell.cellpar(), atol=1e-6)
        np.testing.assert_allclose(
            atoms.get_scaled_positions() % 1.0, cu.get_scaled_positions() % 1.0, atol=1e-6
        )


def test_multiframe_extxyz_gives_one_entry_per_frame(tmp_path):
    frames = [bulk("Cu", a=3.6 + 0.05 * i) for i in range(3)]
    ase.io.write(tmp_path / "set.extxyz", frames)
    entries, errors = load_structures([tmp_path / "set.extxyz"])
    assert not errors
    assert [e.label for e in entries] == ["set_0", "set_1", "set_2"]
    assert [e.index for e in entries] == [0, 1, 2]
    np.testing.assert_allclose(entries[2].atoms.cell.volume, frames[2].cell.volume)


def test_traj_gives_last_frame_and_keeps_constraints(tmp_path):
    slab = _slab()
    with Trajectory(str(tmp_path / "run.traj"), "w") as traj:
        for dz in (0.0, 0.1, 0.2):
            moved = slab.copy()
            moved.positions[:, 2] += dz
            traj.write(moved)
    (atoms,) = read_structure_file(tmp_path / "run.traj")
    np.testing.assert_allclose(atoms.positions, slab.positions + [0, 0, 0.2])
    (constraint,) = atoms.constraints
    assert isinstance(constraint, FixAtoms)
    assert sorted(constraint.get_indices()) == [0, 1, 2, 3]


def test_extxyz_keeps_fixed_atoms(tmp_path):
    ase.io.write(tmp_path / "slab.extxyz", _slab())
    (atoms,) = read_structure_file(tmp_path / "slab.extxyz")
    fixed = set()
    for c in atoms.constraints:
        fixed |= set(int(i) for i in c.get_indices())
    assert fixed == {0, 1, 2, 3}


def test_pymatgen_fallback_reads_structure_json(tmp_path):
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    path = tmp_path / "cu.json"
    path.write_text(structure.to_json())
    (atoms,) = read_structure_file(path)
    assert atoms.get_chemical_formula() == "Cu2"
    np.testing.assert_allclose(atoms.cell.lengths(), [3.6, 3.6, 3.6])


def test_unreadable_and_missing_files_are_reported_by_name(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("this is not a CIF file\n")
    good = tmp_path / "good.xyz"
    ase.io.write(good, molecule("H2O"))
    entries, errors = load_structures([bad, tmp_path / "missing.cif", good])
    assert [e.label for e in entries] == ["good"]
    assert len(errors) == 2
    assert all(isinstance(e, StructureReadError) for e in errors)
    assert "broken.cif" in str(errors[0])
    assert "missing.cif" in str(errors[1])
    assert all("\n" not in str(e) for e in errors)


def test_directory_scan_skips_own_outputs(tmp_path):
    cu = bulk("Cu", cubic=True)
    ase.io.write(tmp_path / "a.cif", cu)
    ase.io.write(tmp_path / "POSCAR_b", cu, format="vasp")
    ase.io.write(tmp_path / "a_relaxed.extxyz", cu)  # our output
    ase.io.write(tmp_path / "a_relax.traj", cu)  # our trajectory
    (tmp_path / "POSCAR_b_relax.log").write_text("log\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    files = expand_inputs([tmp_path])
    assert sorted(f.name for f in files) == ["POSCAR_b", "a.cif"]


def test_glob_and_errors_for_patterns(tmp_path):
    for name in ("x1.xyz", "x2.xyz", "y.xyz"):
        ase.io.write(tmp_path / name, molecule("CO"))
    files = expand_inputs([str(tmp_path / "x*.xyz")])
    assert [f.name for f in files] == ["x1.xyz", "x2.xyz"]
    with pytest.raises(StructureReadError, match="no files match"):
        expand_inputs([str(tmp_path / "z*.xyz")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StructureReadError, match="no structure files"):
        expand_inputs([empty])


def test_labels_are_unique_across_folders(tmp_path):
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        ase.io.write(tmp_path / sub / "POSCAR", bulk("Cu"), format="vasp")
    entries, errors = load_structures([tmp_path / "one", tmp_path / "two"])
    assert not errors
    labels = [e.label for e in entries]
    assert len(set(labels)) == 2
    assert labels[0] == "poscar"  # lower case: ASE reads any *POSCAR* name as VASP
    assert "two" in labels[1]


def test_extension_wins_over_vasp_like_names(tmp_path):
    cu = bulk("Cu", cubic=True)
    write_structure(tmp_path / "POSCAR_relaxed.extxyz", cu)
    assert (tmp_path / "POSCAR_relaxed.extxyz").read_text().startswith("4\n")
    (atoms,) = read_structure_file(tmp_path / "POSCAR_relaxed.extxyz")
    assert atoms.get_chemical_formula() == "Cu4"


def test_write_structure_is_atomic_and_keeps_results(tmp_path):
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    out = write_structure(tmp_path / "sub" / "cu_relaxed.extxyz", atoms)
    back = ase.io.read(out)
    assert back.get_potential_energy() == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(back.get_forces(), forces, atol=1e-8)
    write_structure(tmp_path / "POSCAR", atoms)
    assert ase.io.read(tmp_path / "POSCAR", format="vasp").get_chemical_formula() == "Cu4"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_structure_failure_leaves_no_file(tmp_path):
    atoms = bulk("Cu")
    atoms.calc = SinglePointCalculator(atoms, energy=1.0)
    with pytest.raises(ValueError, match="output format"):
        write_structure(tmp_path / "result.unknownext", atoms)
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_handles_numpy(tmp_path):
    path = write_json_atomic(tmp_path / "s.json", {"a": np.float64(1.5), "b": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
