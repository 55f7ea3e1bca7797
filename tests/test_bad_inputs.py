"""Bad inputs and faults, through the API and the command line (issue 12).

Each test is the regression test of one defect: a traceback, a silent wrong number or lost
data found by feeding eqv2calc what a hostile new user would. Structures are tiny; the
calculators are ASE's EMT and the bundled demonstration model.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import ase.io
import click
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.io.trajectory import Trajectory
from click.testing import CliRunner

from eqv2calc.checks import NonFiniteResultError, StructureError
from eqv2calc.cli import main
from eqv2calc.drivers.jobs import run_eval_job, run_relax_job
from eqv2calc.drivers.relax import RestartWarning, relax
from eqv2calc.graph import MAX_PERIODIC_IMAGES, build_graph
from eqv2calc.io import OutputDirLocked, StructureReadError, load_structures, read_structure_file


@pytest.fixture(scope="module")
def demo():
    from eqv2calc.calculator import EquiformerV2Calculator

    return EquiformerV2Calculator(device="cpu")


def _slab() -> Atoms:
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.pbc = True
    slab.rattle(0.05, seed=0)
    return slab


def _entries(tmp_path: Path, **structures: Atoms):
    for name, atoms in structures.items():
        ase.io.write(tmp_path / f"{name}.extxyz", atoms)
    entries, errors = load_structures([tmp_path / f"{n}.extxyz" for n in structures])
    assert not errors
    return entries


_HOLD_LOCK = """
import sys, time
from eqv2calc.io import lock_directory
with lock_directory(sys.argv[1], "relax"):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held_lock():
    """Start a process that holds the lock on a folder; yields (start(folder) -> pid)."""
    procs = []

    def start(folder: Path) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------------------------
# 1. restart from a damaged trajectory: keep the readable frames, never delete the file
# ----------------------------------------------------------------------------------------------


def test_restart_from_truncated_trajectory_keeps_good_frames(tmp_path):
    traj = tmp_path / "slab_relax.traj"
    first = relax(_slab(), EMT(), optimizer="BFGS", fmax=1e-4, steps=6, trajectory=traj)
    assert first.steps == 6
    data = traj.read_bytes()
    traj.write_bytes(data[:-40])  # the last frame cut short (disk full, power loss)
    with pytest.warns(RestartWarning, match=r"frame 6 of 7 is unreadable.*6 frames kept"):
        second = relax(
            _slab(), EMT(), optimizer="BFGS", fmax=1e-4, steps=8, trajectory=traj, restart=True
        )
    assert second.restarted_from == 5  # frames 0..5 read back; frame 5 is the restart point
    aside = sorted(tmp_path.glob("slab_relax.traj.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[:-40]  # moved, not deleted
    with Trajectory(str(traj)) as frames:
        assert len(frames) == second.steps + 1  # the repaired file was appended to


def test_restart_from_garbage_trajectory_moves_it_aside(tmp_path):
    traj = tmp_path / "x.traj"
    traj.write_bytes(b"this is not a trajectory" * 10)
    with pytest.warns(RestartWarning, match="not a readable trajectory.*from the input"):
        result = relax(_slab(), EMT(), steps=2, trajectory=traj, restart=True)
    assert result.restarted_from == 0
    (aside,) = tmp_path.glob("x.traj.corrupt-*")
    assert aside.read_bytes() == b"this is not a trajectory" * 10


def test_cli_restart_says_what_it_did(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("slab.extxyz", _slab())
    args = ["relax", "slab.extxyz", "--model", "emt", "--no-progress", "--optimizer", "BFGS"]
    first = runner.invoke(main, [*args, "--steps", "4", "--fmax", "1e-4"])
    assert first.exit_code == 3, first.stderr
    traj = tmp_path / "slab_relax.traj"
    traj.write_bytes(traj.read_bytes()[:-40])
    second = runner.invoke(main, [*args, "--steps", "6", "--fmax", "1e-4", "--restart"])
    assert second.exit_code == 3, second.stderr
    assert "warning:" in second.stderr and "last readable frame" in second.stderr
    assert "corrupt-" in second.stderr and "Traceback" not in second.stderr


# ----------------------------------------------------------------------------------------------
# 2. a second run into the same folder keeps the first run's records
# ----------------------------------------------------------------------------------------------


def test_second_relax_merges_summary_records(tmp_path):
    out = tmp_path / "out"
    summary = out / "relax_summary.json"
    a = _entries(tmp_path, cu=bulk("Cu", cubic=True))
    b = _entries(tmp_path, slab=_slab())
    kw = dict(output_dir=out, summary_path=summary, progress=False, steps=3)
    run_relax_job(a, EMT(), **kw)
    run_relax_job(b, EMT(), **kw)
    data = json.loads(summary.read_text())
    assert set(data["structures"]) == {"cu", "slab"}
    assert [r["status"] for r in data["runs"]] == ["finished", "finished"]
    run_relax_job(a, EMT(), **dict(kw, steps=5))  # the same structure again: its record updates
    data = json.loads(summary.read_text())
    assert set(data["structures"]) == {"cu", "slab"} and len(data["runs"]) == 3


def test_same_label_from_another_file_keeps_the_earlier_record(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _entries(tmp_path / "a", x=bulk("Cu", cubic=True))
    second = _entries(tmp_path / "b", x=bulk("Ni", cubic=True))
    summary = tmp_path / "s.json"
    for entries, out in ((first, "out_a"), (second, "out_b")):  # one summary, two folders
        run_relax_job(entries, EMT(), output_dir=tmp_path / out, summary_path=summary,
                      progress=False, steps=2)  # fmt: skip
    records = json.loads(summary.read_text())["structures"]
    assert sorted(records) == ["x", "x~2"]
    assert {Path(r["source"]).parent.name for r in records.values()} == {"a", "b"}
    assert Path(records["x~2"]["output"]).parent.name == "out_a"  # still names its own files
    # into the folder holding the other file's outputs: refused, nothing replaced
    # (tests/test_relax_md_refusals.py has the details)
    before = (tmp_path / "out_a" / "x_relaxed.extxyz").read_bytes()
    with pytest.raises(ValueError, match=r"out_a/x_relax.* holds the relaxation of .*a/x.extxyz"):
        run_relax_job(second, EMT(), output_dir=tmp_path / "out_a", summary_path=summary,
                      progress=False, steps=2)  # fmt: skip
    assert (tmp_path / "out_a" / "x_relaxed.extxyz").read_bytes() == before


def test_unreadable_summary_is_moved_aside_not_overwritten(tmp_path):
    summary = tmp_path / "relax_summary.json"
    summary.write_text("{ truncated")
    entries = _entries(tmp_path, cu=bulk("Cu", cubic=True))
    with pytest.warns(UserWarning, match=r"not readable JSON.*moved to relax_summary.json.corrupt"):
        run_relax_job(entries, EMT(), output_dir=tmp_path, summary_path=summary, progress=False)
    (aside,) = tmp_path.glob("relax_summary.json.corrupt-*")
    assert aside.read_text() == "{ truncated"


# ----------------------------------------------------------------------------------------------
# 3. one output folder, one run
# ----------------------------------------------------------------------------------------------


def test_relax_refuses_a_folder_in_use(tmp_path, held_lock):
    out = tmp_path / "out"
    out.mkdir()
    pid = held_lock(out)
    entries = _entries(tmp_path, cu=bulk("Cu", cubic=True))
    with pytest.raises(OutputDirLocked, match=rf"in use by pid {pid} on .*\(relax\) since"):
        run_relax_job(entries, EMT(), output_dir=out, summary_path=out / "s.json", progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".eqv2calc.lock"]  # nothing written


@pytest.mark.parametrize("command", ["relax", "eval", "md", "adsorbml"])
def test_cli_refuses_a_folder_in_use(runner, tmp_path, monkeypatch, held_lock, command):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    out = tmp_path / "out"
    out.mkdir()
    pid = held_lock(out)
    args = {
        "relax": ["relax", "cu.extxyz", "--output-dir", "out"],
        "eval": ["eval", "cu.extxyz", "-o", "out/r.extxyz"],
        "md": ["md", "cu.extxyz", "-o", "out/final.extxyz", "--steps", "2"],
        "adsorbml": ["adsorbml", "--slab", "slab.extxyz", "--adsorbate", "*O", "--out", "out"],
    }[command]
    if command == "adsorbml":
        ase.io.write("slab.extxyz", _slab())
    result = runner.invoke(main, [*args, "--model", "emt", "--no-progress"])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert f"in use by pid {pid}" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# 4. files are readable by the group (umask honoured)
# ----------------------------------------------------------------------------------------------


def test_relax_and_eval_outputs_honour_the_umask(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
        assert runner.invoke(main, ["relax", "cu.extxyz", "--model", "emt", "--no-progress",
                                    "--output-dir", "r"]).exit_code == 0  # fmt: skip
        assert runner.invoke(main, ["eval", "cu.extxyz", "--model", "emt", "--no-progress",
                                    "-o", "e/out.extxyz"]).exit_code == 0  # fmt: skip
    finally:
        os.umask(old)
    for path in ["r/cu_relaxed.extxyz", "r/relax_summary.json", "e/out.extxyz",
                 "e/eval_summary.json"]:  # fmt: skip
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o644, path


# ----------------------------------------------------------------------------------------------
# 5. / 8. one validation path: tiny cells, overlapping atoms, NaN outputs
# ----------------------------------------------------------------------------------------------


def test_one_atom_cell_far_below_the_cutoff_is_refused_at_once(demo):
    tiny = Atoms("H", cell=np.eye(3) * 0.05, pbc=True)
    with pytest.raises(StructureError, match=r"0\.050 Å from its own periodic image"):
        demo.predict_batch([tiny])
    tiny.calc = demo
    with pytest.raises(StructureError, match="too small"):
        tiny.get_potential_energy()


def test_graph_bounds_the_number_of_periodic_images():
    with pytest.raises(ValueError, match=r"periodic images per atom .* at most 100,000"):
        build_graph([[0, 0, 0]], np.eye(3) * 0.03, True, cutoff=6.0, max_neighbors=20,
                    strict=True)  # fmt: skip
    assert MAX_PERIODIC_IMAGES == 100_000
    # a small but sane cell is fine: 2.5 Å cube, 6 Å cutoff
    build_graph([[0, 0, 0]], np.eye(3) * 2.5, True, cutoff=6.0, max_neighbors=20, strict=True)


def test_api_and_cli_reject_the_same_overlap(demo, runner, tmp_path, monkeypatch):
    close = Atoms("Cu2", positions=[[0, 0, 0], [0.1, 0, 0]], cell=[8, 8, 8], pbc=True)
    with pytest.raises(StructureError) as api:
        demo.predict_batch([close])
    monkeypatch.chdir(tmp_path)
    ase.io.write("close.extxyz", close)
    cli = runner.invoke(main, ["eval", "close.extxyz", "--no-progress"])
    assert cli.exit_code == 1
    message = "atoms 0 (Cu) and 1 (Cu) overlap: 0.100 Å apart (minimum 0.5 Å)"
    assert message in str(api.value) and message in cli.stderr


def test_min_distance_can_be_lowered_in_the_api(demo):
    from eqv2calc.calculator import EquiformerV2Calculator

    close = Atoms("Cu2", positions=[[0, 0, 0], [0.4, 0, 0]], cell=[8, 8, 8], pbc=True)
    with pytest.raises(StructureError):
        demo.predict_batch([close])
    relaxed = EquiformerV2Calculator(device="cpu", min_distance=0.3)
    assert math.isfinite(relaxed.predict_batch([close])[0]["energy"])


def test_nan_outputs_raise_in_the_api():
    from eqv2calc.calculator import EquiformerV2Calculator

    calc = EquiformerV2Calculator(device="cpu")
    with torch.no_grad():
        next(calc.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteResultError, match="non-finite energy"):
        calc.predict_batch([bulk("Cu", cubic=True)])


# ----------------------------------------------------------------------------------------------
# 7. no NaN or infinity in numeric options
# ----------------------------------------------------------------------------------------------


def _all_commands():
    from eqv2calc.cli import _COMMANDS

    ctx = click.Context(main)
    for name in sorted(_COMMANDS):
        command = main.get_command(ctx, name)
        yield from _walk(name, command)


def _walk(name, command):
    yield name, command
    for sub_name, sub in getattr(command, "commands", {}).items():
        yield from _walk(f"{name} {sub_name}", sub)


def test_every_float_option_refuses_non_finite_values():
    from eqv2calc.cli._common import FiniteFloat

    seen = 0
    for name, command in _all_commands():
        for param in command.params:
            if isinstance(param.type, click.types.FloatParamType):
                seen += 1
                assert isinstance(param.type, FiniteFloat), f"{name} {param.opts}"
    assert seen >= 10


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_fmax_nan_and_inf_are_usage_errors(runner, tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    result = runner.invoke(main, ["relax", "cu.extxyz", "--model", "emt", "--fmax", value])
    assert result.exit_code == 2
    assert "--fmax" in result.stderr and ("finite" in result.stderr or "range" in result.stderr)
    assert not (tmp_path / "relax_summary.json").exists()


def test_md_temperature_nan_is_a_usage_error(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    result = runner.invoke(main, ["md", "cu.extxyz", "--model", "emt", "-T", "nan"])
    assert result.exit_code == 2 and "not a finite number" in result.stderr


# ----------------------------------------------------------------------------------------------
# 9. pymatgen objects; partial occupancy
# ----------------------------------------------------------------------------------------------


def test_pymatgen_structure_and_molecule_are_accepted(demo):
    from pymatgen.core import Molecule, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    cu = bulk("Cu", cubic=True)
    cu.rattle(0.02, seed=0)
    structure = AseAtomsAdaptor.get_structure(cu)
    water = molecule("H2O")
    mol = Molecule(water.get_chemical_symbols(), water.positions)
    assert isinstance(structure, Structure)
    ref = demo.predict_batch([cu, water])
    got = demo.predict_batch([structure, mol])
    for r, g in zip(ref, got):
        assert g["energy"] == pytest.approx(r["energy"], abs=1e-6)
        np.testing.assert_allclose(g["forces"], r["forces"], atol=1e-6)
    assert demo.get_potential_energy(structure) == pytest.approx(ref[0]["energy"], abs=1e-6)


def test_partially_occupied_pymatgen_site_is_refused(demo):
    from pymatgen.core import Lattice, Structure

    alloy = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}, "Cu"], [[0, 0, 0], [0.5] * 3])
    with pytest.raises(StructureError, match=r"site 0 is disordered or partially occupied"):
        demo.predict_batch([alloy])


_PARTIAL_CIF = """data_test
_cell_length_a 3.6
_cell_length_b 3.6
_cell_length_c 3.6
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cu1 Cu 0 0 0 1.0
Au1 Au 0.5 0.5 0 0.5
Cu2 Cu 0.5 0.5 0 0.5
Cu3 Cu 0.5 0 0.5 1.0
"""


def test_partial_occupancy_cif_is_refused_naming_the_site(runner, tmp_path, monkeypatch):
    path = tmp_path / "alloy.cif"
    path.write_text(_PARTIAL_CIF)
    with pytest.raises(StructureReadError, match=r"alloy.cif: site 1 at fractional \(0.5, 0.5, 0\)"
                       r" is partially occupied \(Au 0.5, Cu 0.5\)"):  # fmt: skip
        read_structure_file(path)
    ordered = tmp_path / "ordered.cif"
    ordered.write_text(
        _PARTIAL_CIF.replace(" 0.5\n", " 1.0\n").replace("Cu2 Cu 0.5 0.5 0 1.0\n", "")
    )
    assert len(read_structure_file(ordered)[0]) == 3
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["eval", "alloy.cif", "--model", "emt", "--no-progress"])
    assert result.exit_code == 1 and "partially occupied" in result.stderr


# ----------------------------------------------------------------------------------------------
# 11. every expected failure is one line and an exit code; the traceback only with --debug
# ----------------------------------------------------------------------------------------------


def test_unexpected_errors_are_one_line_unless_debug(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))

    def boom(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr("eqv2calc.drivers.jobs.run_eval_job", boom)
    result = runner.invoke(main, ["eval", "cu.extxyz", "--model", "emt"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: unexpected IndexError")
    assert "--debug" in result.stderr and "Traceback" not in result.stderr
    debug = runner.invoke(main, ["--debug", "eval", "cu.extxyz", "--model", "emt"])
    assert isinstance(debug.exception, IndexError)  # propagated: click shows the traceback


def test_missing_model_file_is_one_line(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    (tmp_path / "junk.pt").write_bytes(os.urandom(256))
    for model in ("absent.pt", "junk.pt"):
        result = runner.invoke(main, ["eval", "cu.extxyz", "--model", model, "--no-progress"])
        assert result.exit_code == 1, result.stderr
        assert model in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# 12. unwritable outputs are found before the work starts
# ----------------------------------------------------------------------------------------------


def test_unwritable_output_dir_is_reported_before_work(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    Path("afile").write_text("x")
    cases = {  # folder: (exit status, message); click itself refuses an existing file (usage)
        "afile": (2, "'afile' is a file"),
        "afile/sub": (1, "afile/sub: cannot be created, afile is a file, not a folder"),
    }
    if Path("/proc/self").is_dir():  # read-only even for root
        cases["/proc/self"] = (1, "/proc/self: cannot write files there")
    for folder, (code, message) in cases.items():
        result = runner.invoke(main, ["relax", "cu.extxyz", "--model", "emt", "--output-dir",
                                      folder, "--no-progress"])  # fmt: skip
        assert result.exit_code == code, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not Path("relax_summary.json").exists()


def test_md_output_is_checked_before_the_run(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    Path("afile").write_text("x")
    calls = []
    monkeypatch.setattr("eqv2calc.drivers.jobs.run_md", lambda *a, **k: calls.append(1))
    for output, message, code in [
        ("afile/final.extxyz", "cannot be written (folder afile: is a file, not a folder)", 1),
        ("final.unknownext", "cannot tell a writable output format", 2),
    ]:
        result = runner.invoke(main, ["md", "cu.extxyz", "--model", "emt", "-o", output])
        assert result.exit_code == code and message in result.stderr, result.stderr
    assert calls == []  # no MD was run


# ----------------------------------------------------------------------------------------------
# 13. Ctrl-C: exit status 130 everywhere, and the summary says "interrupted"
# ----------------------------------------------------------------------------------------------


def test_ctrl_c_in_relax_gives_130_and_an_interrupted_summary(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("eqv2calc.drivers.jobs.relax_batch", interrupted)
    result = runner.invoke(main, ["relax", "cu.extxyz", "--model", "emt", "--no-progress"])
    assert result.exit_code == 130 and "Aborted" not in result.stderr
    data = json.loads(Path("relax_summary.json").read_text())
    assert data["status"] == "interrupted" and data["runs"][-1]["status"] == "interrupted"


@pytest.mark.parametrize("command", ["eval", "md"])
def test_ctrl_c_in_eval_and_md_gives_130(runner, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    target = {"eval": "evaluate", "md": "run_md"}[command]
    monkeypatch.setattr(f"eqv2calc.drivers.jobs.{target}", interrupted)
    result = runner.invoke(main, [command, "cu.extxyz", "--model", "emt", "--no-progress"])
    assert result.exit_code == 130, result.stderr
    if command == "eval":
        assert json.loads(Path("eval_summary.json").read_text())["status"] == "interrupted"
        assert not Path("eval_results.extxyz").exists()


def test_ctrl_c_anywhere_else_gives_130(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("eqv2calc.cli._common.load_structures", interrupted, raising=False)
    monkeypatch.setattr("eqv2calc.io.load_structures", interrupted)
    result = runner.invoke(main, ["eval", "x.extxyz", "--model", "emt"])
    assert result.exit_code == 130 and "interrupted" in result.stderr


def test_md_interrupt_is_marked_in_the_log(tmp_path):
    from eqv2calc.drivers.md import run_md

    class Stop(EMT):
        calls = 0

        def calculate(self, *args, **kwargs):
            Stop.calls += 1
            if Stop.calls > 6:
                raise KeyboardInterrupt
            super().calculate(*args, **kwargs)

    log = tmp_path / "md.log"
    with pytest.raises(KeyboardInterrupt):
        run_md(bulk("Cu", cubic=True), Stop(), steps=50, log_interval=2, logfile=log, seed=0)
    assert "# interrupted at step" in log.read_text()


# ----------------------------------------------------------------------------------------------
# 14. no empty results file; NPT on a slab says what is wrong
# ----------------------------------------------------------------------------------------------


def test_eval_writes_no_empty_results_file_when_everything_fails(tmp_path):
    entries = _entries(tmp_path, og=Atoms("Og", cell=[5, 5, 5], pbc=True))
    out = tmp_path / "results.extxyz"
    report = run_eval_job(entries, EMT(), output=out, summary_path=tmp_path / "s.json",
                          progress=False)  # fmt: skip
    assert report.n_ok == 0 and report.exit_code == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_md_npt_on_a_slab_names_npt(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)  # pbc = (True, True, False)
    ase.io.write("slab.extxyz", slab)
    result = runner.invoke(main, ["md", "slab.extxyz", "--model", "emt", "--ensemble", "npt",
                                  "--steps", "1", "--no-progress"])  # fmt: skip
    assert result.exit_code == 1
    assert "NPT molecular dynamics (the cell varies) needs a structure periodic" in result.stderr
    assert "cell relaxation" not in result.stderr


# ----------------------------------------------------------------------------------------------
# 6. deterministic mode
# ----------------------------------------------------------------------------------------------

_DETERMINISTIC = """
import hashlib
import numpy as np
import torch
torch.set_num_threads(2)
from ase.build import add_adsorbate, fcc111
from eqv2calc.calculator import EquiformerV2Calculator
calc = EquiformerV2Calculator(device="cpu", deterministic=True)
assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
slab = fcc111("Cu", (3, 3, 3), vacuum=6.0)
add_adsorbate(slab, "O", 1.2, "fcc")
slab.rattle(0.1, seed=3)
r = calc.predict_batch([slab])[0]
print(hashlib.sha256(r["forces"].tobytes() + np.float64(r["energy"]).tobytes()).hexdigest())
"""


def test_deterministic_mode_is_bitwise_reproducible_across_processes():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    procs = [  # two fresh processes at the same time, as on a busy machine
        subprocess.Popen(
            [sys.executable, "-c", _DETERMINISTIC],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate() for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    assert outputs[0][0] == outputs[1][0] and len(outputs[0][0].strip()) == 64


def test_demo_stress_sensitivity_is_the_layer_norm_not_the_graph():
    """models/README.md: a 1e-6 Å rattle of cubic Cu changes the demo model's stress by
    ~0.02 eV/Å³; the graph does not change, and a larger layer-norm eps removes the jump."""
    from eqv2calc.calculator import EquiformerV2Calculator
    from eqv2calc.graph import graph_from_atoms

    calc = EquiformerV2Calculator("demo", device="cpu", dtype="float64")
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    moved = cu.copy()
    moved.rattle(1e-6, seed=0)
    s = calc.loaded.graph_settings
    graphs = [graph_from_atoms(a, cutoff=s.cutoff, max_neighbors=s.max_neighbors,
                               strict=s.strict) for a in (cu, moved)]  # fmt: skip
    np.testing.assert_array_equal(graphs[0].edge_index, graphs[1].edge_index)
    np.testing.assert_array_equal(graphs[0].cell_offsets, graphs[1].cell_offsets)

    def jump() -> float:
        ref, new = calc.predict_batch([cu, moved])
        return float(np.abs(new["stress"] - ref["stress"]).max())

    assert jump() > 1e-3
    norms = [m for m in calc.model.modules() if type(m).__name__ == "SeparableLayerNorm"]
    assert norms
    for m in norms:
        m.eps = 1e-3
    assert jump() < 1e-6


def test_cli_deterministic_flag_reaches_the_calculator(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    calls = []
    monkeypatch.setattr("eqv2calc.determinism.use_deterministic_mode", lambda: calls.append(1))
    result = runner.invoke(main, ["--deterministic", "eval", "cu.extxyz", "--no-progress"])
    assert result.exit_code == 0, result.stderr
    assert calls == [1]
    calls.clear()
    again = ["eval", "cu.extxyz", "--no-progress", "--overwrite"]
    assert runner.invoke(main, again).exit_code == 0
    assert calls == []


def test_help_shows_no_unbounded_range_and_phonon_temperatures_have_units():

    from eqv2calc.cli import main

    runner = CliRunner()
    for command in ("relax", "adsorbml", "md", "train", "phonons"):
        text = runner.invoke(main, [command, "--help"], terminal_width=200).output
        assert "None]" not in text and "x<=None" not in text, command
    phonons = runner.invoke(main, ["phonons", "--help"], terminal_width=200).output
    for option in ("--tmin", "--tmax", "--tstep"):
        line = next(x for x in phonons.splitlines() if x.strip().startswith(option + " "))
        assert ", K." in line and "temperature" in line.lower(), line


def test_potcar_readme_states_the_kpoint_rule_the_code_uses(tmp_path):
    from ase.build import fcc111

    from eqv2calc.adsorbml.vasp_inputs import oc20_kpoints, write_vasp_inputs

    slab = fcc111("Cu", (1, 3, 3), vacuum=6.0)  # b's length and largest component differ
    folder = write_vasp_inputs(slab, tmp_path / "vasp")
    note = " ".join((folder / "POTCAR.README").read_text().split())
    assert "|a|" not in note and "largest absolute Cartesian components" in note
    kpts = oc20_kpoints(slab)
    assert f"KPOINTS: {kpts[0]} x {kpts[1]} x 1 Monkhorst-Pack" in note
    largest = [max(1, round(40 / np.abs(v).max())) for v in slab.cell[:2]]
    assert list(kpts[:2]) == largest
    assert [max(1, round(40 / np.linalg.norm(v))) for v in slab.cell[:2]] != largest


# ----------------------------------------------------------------------------------------------
# 15. second hostile round: md with several inputs, output paths that clash
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ("nan", "bad: atom 0 (Cu) has a non-finite position"),
        ("overlap", "bad: atoms 0 (Cu) and 1 (Cu) overlap: 0.000 Å apart"),
        ("empty", "bad: structure is empty (no atoms)"),
        ("z0", "bad: atom 0 has atomic number 0 (X), but this model covers Z >= 1"),
    ],
)
def test_md_several_inputs_validate_every_structure_first(runner, tmp_path, monkeypatch, bad,
                                                          message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    ase.io.write("good.extxyz", bulk("Cu", cubic=True))
    atoms = bulk("Cu", cubic=True)
    if bad == "nan":
        atoms.positions[0, 0] = np.nan
    elif bad == "overlap":
        atoms.positions[1] = atoms.positions[0]
    elif bad == "empty":
        atoms = Atoms(cell=atoms.cell, pbc=True)
    else:
        atoms.numbers[0] = 0
    ase.io.write("bad.extxyz", atoms)
    result = runner.invoke(main, ["md", "good.extxyz", "bad.extxyz", "--model", "emt",
                                  "--ensemble", "nve", "--steps", "2", "--no-progress"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"error: {message}" in result.stderr
    assert "unexpected" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.extxyz", "good.extxyz"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["relax", "in.extxyz", "-o", "in.extxyz"], "--output in.extxyz is the input file"),
        (["relax", "in.extxyz", "--summary", "in.extxyz"], "--summary in.extxyz is the input"),
        (["relax", "in.extxyz", "-o", "r.extxyz", "--summary", "r.extxyz"],
         "--summary r.extxyz is the same file as --output r.extxyz"),
        (["eval", "in.extxyz", "-o", "./in.extxyz"], "--output ./in.extxyz is the input file"),
        (["eval", "in.extxyz", "-o", "e.extxyz", "--summary", "e.extxyz"],
         "--summary e.extxyz is the same file as --output e.extxyz"),
        (["md", "in.extxyz", "-o", "in.extxyz", "--overwrite"], "--output in.extxyz is the input"),
        (["md", "in.extxyz", "--traj", "in.extxyz", "--overwrite"], "--traj in.extxyz is the input"),
        (["md", "in.extxyz", "--traj", "x.traj", "--log", "x.traj"],
         "--log x.traj is the same file as --traj x.traj"),
    ],
)  # fmt: skip
def test_an_output_that_is_an_input_or_another_output_is_refused(runner, tmp_path, monkeypatch,
                                                                 args, message):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.info["energy_dft"] = -14.5  # e.g. a labelled data set: must survive untouched
    ase.io.write("in.extxyz", atoms)
    before = Path("in.extxyz").read_bytes()
    steps = [] if args[0] == "eval" else ["--steps", "2"]
    result = runner.invoke(main, [*args, *steps, "--model", "emt", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "choose another file name" in result.stderr
    assert Path("in.extxyz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["relax", "in.extxyz", "--format", "foo"], "--format foo: not a structure format"),
        (["relax", "in.extxyz", "-o", "x.foo"], "--output x.foo: cannot tell a writable"),
        (["eval", "in.extxyz", "-o", "results.cif"],
         "--output results.cif: the extension means cif, but this file is written as extxyz"),
        (["md", "in.extxyz", "--traj", "t.extxyz"],
         "--traj t.extxyz: the extension means extxyz, but this file is written as traj"),
        (["md", "in.extxyz", "-o", "final.foo"], "--output final.foo: cannot tell a writable"),
    ],
)  # fmt: skip
def test_an_output_name_with_a_format_that_is_not_written_is_refused_before_the_work(
    runner, tmp_path, monkeypatch, args, message
):
    monkeypatch.chdir(tmp_path)
    ase.io.write("in.extxyz", bulk("Cu", cubic=True))
    steps = [] if args[0] == "eval" else ["--steps", "2"]
    result = runner.invoke(main, [*args, *steps, "--model", "emt", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.extxyz"]  # nothing was run


def test_eval_says_a_trajectory_gives_its_last_frame_only(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frames = [bulk("Cu", cubic=True) for _ in range(3)]
    for i, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=i)
    ase.io.write("md.traj", frames)
    ase.io.write("one.traj", frames[0])
    result = runner.invoke(main, ["eval", "md.traj", "one.traj", "--model", "emt", "--no-progress"])
    assert result.exit_code == 0, result.output
    notes = [x for x in result.stderr.splitlines() if x.startswith("note:")]
    assert notes == [
        "note: md.traj holds 3 frames; eval reads a .traj as one structure's history and "
        "evaluates its last frame only (write it as extxyz to evaluate every frame)"
    ]
    assert len(ase.io.read("eval_results.extxyz", ":")) == 2


# ----------------------------------------------------------------------------------------------
# 16. third hostile round: summaries, model options in a training config, --precision/--dtype
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "emt", "--engine", "ase"],
        [],  # the bundled model: the torch engine
        ["--model", "emt", "--executor", "local", "--output-dir", "out"],  # a campaign
    ],
    ids=["ase", "torch", "campaign"],
)
def test_relax_summary_names_no_file_a_refused_structure_never_wrote(runner, tmp_path,
                                                                     monkeypatch, args):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    good = bulk("Cu", cubic=True)
    good.rattle(0.05, seed=1)
    ase.io.write("good.extxyz", good)
    bad = bulk("Cu", cubic=True)
    bad.positions[0, 0] = np.nan
    ase.io.write("bad.extxyz", bad)
    result = runner.invoke(main, ["relax", "good.extxyz", "bad.extxyz", "--summary", "s.json",
                                  "--steps", "2", "--no-progress", *args])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "non-finite position" in result.stderr
    records = json.loads(Path("s.json").read_text())["structures"]
    refused = records["bad"]
    assert refused["status"] == "error" and "non-finite position" in refused["error"]
    assert refused.get("trajectory") is None and refused.get("log") is None
    assert "output" not in refused
    assert not list(tmp_path.rglob("bad_relax*"))
    for key in ("trajectory", "log", "output"):  # the relaxed structure's files were written
        assert Path(records["good"][key]).is_file(), key
