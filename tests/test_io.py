"""Tests for eqv2calc.io: reading structure files, directories and globs; atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

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


# ----------------------------------------------------------------------------------------------
# one atomic writer family, output-folder lock, writability check, names
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writers_honour_umask(tmp_path, umask_022):
    import stat

    from eqv2calc.io import atomic_path, atomic_write_bytes, atomic_write_text

    written = [
        atomic_write_bytes(tmp_path / "a.bin", b"x"),
        atomic_write_text(tmp_path / "b.txt", "x"),
        write_json_atomic(tmp_path / "c.json", {"a": 1}),
        write_structure(tmp_path / "d.extxyz", molecule("H2O")),
    ]
    with atomic_path(tmp_path / "e.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".png"
        tmp.write_bytes(b"png")
    written.append(tmp_path / "e.png")
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_atomic_path_failure_keeps_old_file_and_removes_temp(tmp_path):
    from eqv2calc.io import atomic_path

    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


_HOLD_LOCK = """
import sys, time
from eqv2calc.io import lock_directory
with lock_directory(sys.argv[1], "relax"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_directory_names_the_other_process(tmp_path):
    import os
    import subprocess
    import sys

    from eqv2calc.io import LOCK_FILE_NAME, OutputDirLocked, lock_directory

    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirLocked) as info:
            with lock_directory(tmp_path, "md"):
                pass
        message = str(info.value)
        assert f"pid {proc.pid}" in message and os.uname().nodename in message
        assert "relax" in message and "since" in message and str(tmp_path) in message
        assert isinstance(info.value, RuntimeError)
    finally:
        proc.kill()
        proc.wait()
    # the kernel released the lock with the process: the folder is free again
    with lock_directory(tmp_path, "md"):
        with lock_directory(tmp_path, "nested"):  # the same process may lock again
            assert (tmp_path / LOCK_FILE_NAME).exists()
    assert not (tmp_path / LOCK_FILE_NAME).exists()


def test_check_writable_dir_reports_the_path_and_reason(tmp_path):
    from eqv2calc.io import OutputNotWritableError, check_writable_dir, check_writable_file

    assert check_writable_dir(tmp_path / "new" / "deep").is_dir()
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(OutputNotWritableError, match=r"file.txt: is a file, not a folder"):
        check_writable_dir(afile)
    with pytest.raises(OutputNotWritableError, match=r"file.txt is a file, not a folder"):
        check_writable_dir(afile / "sub" / "deeper")
    with pytest.raises(OutputNotWritableError, match=r"is a folder, not a file"):
        check_writable_file(tmp_path)
    if Path("/proc/self").is_dir():  # read-only even for root
        with pytest.raises(OutputNotWritableError, match=r"/proc/self: cannot write files there"):
            check_writable_dir("/proc/self")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_error_names_the_frame(tmp_path):
    path = tmp_path / "three.extxyz"
    ase.io.write(path, [molecule("H2O"), molecule("NH3"), molecule("CH4")])
    lines = path.read_text().splitlines()
    # corrupt frame 2: a position that is not a number
    n_first = 2 + 3
    n_second = 2 + 4
    i = n_first + n_second + 2
    lines[i] = lines[i].replace(lines[i].split()[1], "garbage", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StructureReadError, match=r"three.extxyz, frame 2: cannot read"):
        read_structure_file(path)


def test_unknown_element_is_named(tmp_path):
    path = tmp_path / "xx.xyz"
    path.write_text("2\n\nCu 0 0 0\nXx 0 0 2\n")
    with pytest.raises(
        StructureReadError, match=r"xx.xyz: cannot read .*unknown element symbol 'Xx'"
    ):
        read_structure_file(path)


def test_clean_label_and_calculator_label():
    from eqv2calc.io import calculator_label, clean_label

    assert clean_label("Cu (111)/a b") == "Cu__111__a_b"
    assert clean_label("Cu (111)/a b", "_.-", collapse=True, strip="") == "Cu_111_a_b"
    assert clean_label("*OH", "", collapse=True, strip="_", fallback="ads") == "OH"
    assert clean_label("***", "", strip="_", fallback="ads") == "ads"
    assert calculator_label(EMT()) == "EMT"

    class Named(EMT):
        model_label = "my-model"

    assert calculator_label(Named()) == "my-model"
