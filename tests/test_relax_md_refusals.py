"""relax and md refuse what would lose data or mix two runs (hostile-tester defects).

* relax into a folder that holds another input's results under the same name refuses
  (exit 2) and leaves those results alone; a re-run of the same input goes on as before.
* md --restart refuses other integrator settings than the trajectory records, continues the
  time axis, always writes the last step (also off the log interval and with --steps 0), and
  several FILEs with --restart are refused as the help says.

Tiny structures and ASE's EMT (``--model emt``) keep these fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io.trajectory import Trajectory

from eqv2calc.cli import main
from eqv2calc.drivers.jobs import OutputsOfAnotherInput, run_relax_job
from eqv2calc.drivers.md import RestartMismatch, run_md
from eqv2calc.io import load_structures


def _cu(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _ch4():
    atoms = molecule("CH4")
    atoms.center(vacuum=3.0)
    return atoms


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _relax(runner, *args):
    return runner.invoke(main, ["relax", *args, "--model", "emt", "--no-progress"])


def _md(runner, *args):
    return runner.invoke(main, ["md", *args, "--model", "emt", "--no-progress"])


def _frames(path) -> list:
    with Trajectory(str(path)) as traj:
        return [traj[i] for i in range(len(traj))]


# ----------------------------------------------------------------------------------------------
# relax: one name, two inputs
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def two_x(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    ase.io.write(tmp_path / "d1" / "x.extxyz", _cu())
    ase.io.write(tmp_path / "d2" / "x.xyz", _ch4())
    return tmp_path


def test_relax_refuses_outputs_of_another_input_in_the_same_folder(runner, two_x):
    first = _relax(runner, "d1/x.extxyz", "--steps", "3", "--output-dir", "r6")
    assert first.exit_code in (0, 3), first.stderr
    before = _snapshot(two_x / "r6")
    assert {"x_relaxed.extxyz", "x_relax.traj", "x_relax.log", "relax_summary.json"} <= set(before)
    second = _relax(runner, "d2/x.xyz", "--steps", "3", "--output-dir", "r6")
    assert second.exit_code == 2, (second.stdout, second.stderr)
    assert "Traceback" not in second.stderr
    error = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "r6/x_rela" in error[0] and "d1/x.extxyz" in error[0] and "d2/x.xyz" in error[0]
    assert "--output-dir" in error[0]
    assert _snapshot(two_x / "r6") == before  # nothing replaced, not even the summary
    assert ase.io.read(two_x / "r6" / "x_relaxed.extxyz").get_chemical_formula() == "Cu4"
    # --restart would continue the other input's trajectory: refused as well
    again = _relax(runner, "d2/x.xyz", "--steps", "3", "--output-dir", "r6", "--restart")
    assert again.exit_code == 2 and _snapshot(two_x / "r6") == before
    # another folder keeps both
    other = _relax(runner, "d2/x.xyz", "--steps", "3", "--output-dir", "r7")
    assert other.exit_code in (0, 3), other.stderr


def test_relax_same_input_again_rewrites_and_restarts_as_before(runner, two_x):
    args = ["d1/x.extxyz", "--output-dir", "r6", "--optimizer", "BFGS", "--fmax", "1e-4"]
    assert _relax(runner, *args, "--steps", "2").exit_code == 3
    again = _relax(runner, *args, "--steps", "3")
    assert again.exit_code == 3, again.stderr
    assert len(_frames(two_x / "r6" / "x_relax.traj")) == 4  # a fresh run of the same input
    more = _relax(runner, *args, "--steps", "5", "--restart")
    assert more.exit_code == 3, more.stderr
    record = json.loads((two_x / "r6" / "relax_summary.json").read_text())["structures"]["x"]
    assert record["restarted_from_step"] == 3 and record["source"] == "d1/x.extxyz"


def test_relax_same_name_other_format_next_to_the_inputs(runner, tmp_path, monkeypatch):
    """cu.extxyz and cu.cif (same atoms, so only the summary can tell them apart)."""
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", _cu())
    ase.io.write("cu.cif", _cu())
    assert _relax(runner, "cu.extxyz", "--steps", "2").exit_code in (0, 3)
    before = _snapshot(tmp_path)
    second = _relax(runner, "cu.cif", "--steps", "2")
    assert second.exit_code == 2 and "cu.extxyz" in second.stderr and "cu.cif" in second.stderr
    assert _snapshot(tmp_path) == before


def test_relax_without_a_record_compares_the_atoms(runner, two_x):
    """A summary kept elsewhere says nothing about the files: other atoms are refused."""
    assert _relax(runner, "d1/x.extxyz", "--steps", "2", "--output-dir", "r6").exit_code in (0, 3)
    before = _snapshot(two_x / "r6")
    second = _relax(
        runner, "d2/x.xyz", "--steps", "2", "--output-dir", "r6", "--summary", "elsewhere.json"
    )
    assert second.exit_code == 2, second.stderr
    assert "Cu4" in second.stderr and "CH4" in second.stderr
    assert _snapshot(two_x / "r6") == before
    assert not (two_x / "elsewhere.json").exists()


def test_relax_api_refuses_and_kept_record_stops_naming_reused_files(two_x):
    out, summary = two_x / "out", two_x / "out" / "relax_summary.json"
    (a,), _ = load_structures([two_x / "d1" / "x.extxyz"])
    (b,), _ = load_structures([two_x / "d2" / "x.xyz"])
    kw = dict(output_dir=out, summary_path=summary, progress=False, steps=2)
    run_relax_job([a], EMT(), **kw)
    with pytest.raises(OutputsOfAnotherInput, match="holds the relaxation of"):
        run_relax_job([b], EMT(), **kw)
    for name in ("x_relaxed.extxyz", "x_relax.traj", "x_relax.log"):
        (out / name).unlink()  # the user moved the first results away
    run_relax_job([b], EMT(), **kw)
    records = json.loads(summary.read_text())["structures"]
    assert records["x"]["source"].endswith("x.xyz")
    kept = records["x~2"]
    assert kept["source"].endswith("x.extxyz")
    assert kept["output"] is None and kept["log"] is None and kept["trajectory"] is None
    assert len(json.loads(summary.read_text())["runs"]) == 2  # the refused run left no trace


@pytest.fixture
def two_cu(tmp_path, monkeypatch):
    """d1/x.extxyz and d2/x.xyz: the same composition (Cu4), other positions."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    ase.io.write(tmp_path / "d1" / "x.extxyz", _cu(seed=0))
    ase.io.write(tmp_path / "d2" / "x.xyz", _cu(seed=1))
    return tmp_path


def test_relax_refusal_does_not_depend_on_the_current_directory(runner, two_cu, monkeypatch):
    """The summary's relative paths were written from another directory: still refused."""
    assert _relax(runner, "d1/x.extxyz", "--steps", "2", "--output-dir", "out").exit_code in (0, 3)
    before = _snapshot(two_cu / "out")
    monkeypatch.chdir(two_cu / "d2")
    second = _relax(runner, "x.xyz", "--steps", "2", "--output-dir", "../out")
    assert second.exit_code == 2, (second.stdout, second.stderr)
    assert "d1/x.extxyz" in second.stderr and "x.xyz" in second.stderr
    assert _snapshot(two_cu / "out") == before
    restart = _relax(runner, "x.xyz", "--steps", "2", "--output-dir", "../out", "--restart")
    assert restart.exit_code == 2 and _snapshot(two_cu / "out") == before


def test_relax_same_input_from_another_directory_is_a_rerun(runner, two_cu, monkeypatch):
    args = ["--optimizer", "BFGS", "--fmax", "1e-4"]
    assert (
        _relax(runner, "d1/x.extxyz", *args, "--steps", "2", "--output-dir", "out").exit_code == 3
    )
    monkeypatch.chdir(two_cu / "d1")
    again = _relax(runner, "x.extxyz", *args, "--steps", "3", "--output-dir", "../out")
    assert again.exit_code == 3, again.stderr
    assert len(_frames(two_cu / "out" / "x_relax.traj")) == 4
    more = _relax(runner, "x.extxyz", *args, "--steps", "5", "--output-dir", "../out", "--restart")
    assert more.exit_code == 3, more.stderr
    records = json.loads((two_cu / "out" / "relax_summary.json").read_text())["structures"]
    assert set(records) == {"x"}  # replaced, not kept as another file's record
    assert records["x"]["restarted_from_step"] == 3
    assert records["x"]["source_abspath"] == str((two_cu / "d1" / "x.extxyz").resolve())


def _drop_abspaths(summary: Path) -> None:
    """Make the summary look like one written before records held ``source_abspath``."""
    data = json.loads(summary.read_text())
    for record in data["structures"].values():
        record.pop("source_abspath", None)
    summary.write_text(json.dumps(data))


def test_relax_old_record_same_composition_other_positions_refused(runner, two_cu, monkeypatch):
    assert _relax(runner, "d1/x.extxyz", "--steps", "2", "--output-dir", "out").exit_code in (0, 3)
    _drop_abspaths(two_cu / "out" / "relax_summary.json")
    before = _snapshot(two_cu / "out")
    monkeypatch.chdir(two_cu / "d2")
    second = _relax(runner, "x.xyz", "--steps", "2", "--output-dir", "../out")
    assert second.exit_code == 2, (second.stdout, second.stderr)
    assert "d1/x.extxyz" in second.stderr
    assert _snapshot(two_cu / "out") == before
    # the input of that old record, from yet another directory: a re-run
    monkeypatch.chdir(two_cu / "d1")
    again = _relax(runner, "x.extxyz", "--steps", "2", "--output-dir", "../out")
    assert again.exit_code in (0, 3), again.stderr
    records = json.loads((two_cu / "out" / "relax_summary.json").read_text())["structures"]
    assert set(records) == {"x"}


def test_relax_without_a_record_compares_the_positions(runner, two_cu):
    assert _relax(runner, "d1/x.extxyz", "--steps", "2", "--output-dir", "out").exit_code in (0, 3)
    before = _snapshot(two_cu / "out")
    args = ["--steps", "2", "--output-dir", "out", "--summary", "elsewhere.json"]
    second = _relax(runner, "d2/x.xyz", *args)
    assert second.exit_code == 2, second.stderr
    assert "d2/x.xyz" in second.stderr and _snapshot(two_cu / "out") == before
    assert _relax(runner, "d1/x.extxyz", *args).exit_code in (0, 3)  # same structure: goes on


def test_relax_kept_record_from_another_directory_stops_naming_reused_files(two_cu, monkeypatch):
    out, summary = two_cu / "out", two_cu / "out" / "relax_summary.json"
    kw = dict(output_dir="out", summary_path="out/relax_summary.json", progress=False, steps=2)
    (a,), _ = load_structures(["d1/x.extxyz"])
    run_relax_job([a], EMT(), **kw)
    monkeypatch.chdir(two_cu / "d2")
    (b,), _ = load_structures(["x.xyz"])
    kw.update(output_dir="../out", summary_path="../out/relax_summary.json")
    with pytest.raises(OutputsOfAnotherInput, match="holds the relaxation of"):
        run_relax_job([b], EMT(), **kw)
    for name in ("x_relaxed.extxyz", "x_relax.traj", "x_relax.log"):
        (out / name).unlink()  # the user moved the first results away
    run_relax_job([b], EMT(), **kw)
    records = json.loads(summary.read_text())["structures"]
    assert records["x"]["source"] == "x.xyz"
    kept = records["x~2"]
    assert kept["source"] == "d1/x.extxyz"
    assert kept["output"] is None and kept["log"] is None and kept["trajectory"] is None
    assert kept["files_reused_by"] == "x.xyz"


# ----------------------------------------------------------------------------------------------
# md --restart: same settings, a continuous time axis, the last step always written
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def cu_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", _cu())
    return tmp_path


def test_md_restart_refuses_another_timestep_or_ensemble(runner, cu_file):
    base = ["cu.extxyz", "--seed", "1", "--log-interval", "5"]
    first = _md(runner, *base, "--steps", "10", "--ensemble", "nve")
    assert first.exit_code == 0, first.stderr
    before = _snapshot(cu_file)
    changed = _md(
        runner, *base, "--steps", "20", "--ensemble", "nvt", "--timestep", "3", "--restart"
    )
    assert changed.exit_code == 2, changed.stderr
    assert "Traceback" not in changed.stderr
    assert "ensemble: was nve, now nvt" in changed.stderr
    assert "timestep_fs: was 1.0, now 3.0" in changed.stderr and "cu_md.traj" in changed.stderr
    assert _snapshot(cu_file) == before
    dt = _md(runner, *base, "--steps", "20", "--ensemble", "nve", "--timestep", "2", "--restart")
    assert dt.exit_code == 2 and "timestep_fs: was 1.0, now 2.0" in dt.stderr
    assert _snapshot(cu_file) == before
    same = _md(runner, *base, "--steps", "20", "--ensemble", "nve", "--restart", "--seed", "7")
    assert same.exit_code == 0, same.stderr  # the seed may change
    frames = _frames(cu_file / "cu_md.traj")
    assert [f.info["md_step"] for f in frames] == [0, 5, 10, 15, 20]
    assert [f.info["time_fs"] for f in frames] == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert frames[-1].info["md_ensemble"] == "nve" and frames[-1].info["md_timestep_fs"] == 1.0


def test_md_restart_refuses_other_thermostat_settings(tmp_path):
    traj = tmp_path / "t.traj"
    kw = dict(ensemble="nvt", steps=4, log_interval=2, seed=0, trajectory=traj)
    run_md(_cu(), EMT(), temperature_K=300, friction_per_fs=0.01, **kw)
    with pytest.raises(RestartMismatch, match=r"temperature_K: was 300.0, now 600.0"):
        run_md(_cu(), EMT(), temperature_K=600, friction_per_fs=0.01, restart=True,
               **dict(kw, steps=8))  # fmt: skip
    with pytest.raises(RestartMismatch, match=r"friction_per_fs: was 0.01, now 0.02"):
        run_md(_cu(), EMT(), temperature_K=300, friction_per_fs=0.02, restart=True,
               **dict(kw, steps=8))  # fmt: skip
    assert [f.info["md_step"] for f in _frames(traj)] == [0, 2, 4]  # untouched
    ok = run_md(_cu(), EMT(), temperature_K=300, friction_per_fs=0.01, restart=True,
                **dict(kw, steps=8, log_interval=4))  # fmt: skip
    assert ok.restarted_from == 4 and ok.steps == 8
    assert [f.info["md_step"] for f in _frames(traj)] == [0, 2, 4, 8]


def test_md_restart_of_an_old_trajectory_without_settings_keeps_time_going(tmp_path):
    """Frames written before the settings were recorded are accepted; time accumulates."""
    traj = tmp_path / "old.traj"
    run_md(_cu(), EMT(), ensemble="nve", steps=4, log_interval=2, seed=0, trajectory=traj)
    frames = _frames(traj)
    with Trajectory(str(traj), "w") as out:
        for frame in frames:
            for key in [k for k in frame.info if k.startswith("md_") and k != "md_step"]:
                del frame.info[key]
            out.write(frame)
    result = run_md(
        _cu(), EMT(), ensemble="nve", timestep_fs=2.0, steps=6, log_interval=1, seed=0,
        trajectory=traj, restart=True,
    )  # fmt: skip
    times = [f.info["time_fs"] for f in _frames(traj)]
    assert times == [0.0, 2.0, 4.0, 6.0, 8.0]  # 4 fs at 1 fs, then 2 steps of 2 fs
    assert result.times_ps[-1] == pytest.approx(0.008)
    assert result.to_dict()["simulated_time_ps"] == pytest.approx(0.008)


def test_md_always_writes_the_last_step(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("a.extxyz", _cu())
    first = _md(runner, "a.extxyz", "--steps", "3", "--log-interval", "50", "--seed", "1")
    assert first.exit_code == 0, first.stderr
    assert [f.info["md_step"] for f in _frames("a_md.traj")] == [0, 3]
    second = _md(
        runner, "a.extxyz", "--steps", "6", "--log-interval", "50", "--seed", "1", "--restart"
    )
    assert second.exit_code == 0, second.stderr
    assert [f.info["md_step"] for f in _frames("a_md.traj")] == [0, 3, 6]  # no duplicates
    rows = [x.split()[0] for x in Path("a_md.log").read_text().splitlines() if x[:1] != "#"]
    assert rows == ["0", "3", "6"]
    # the target already reached: nothing more is written
    third = _md(runner, "a.extxyz", "--steps", "6", "--log-interval", "50", "--restart")
    assert third.exit_code == 0, third.stderr
    assert [f.info["md_step"] for f in _frames("a_md.traj")] == [0, 3, 6]


def test_md_zero_steps_writes_step_zero(runner, cu_file):
    result = _md(runner, "cu.extxyz", "--steps", "0", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert [f.info["md_step"] for f in _frames("cu_md.traj")] == [0]
    rows = [x.split()[0] for x in Path("cu_md.log").read_text().splitlines() if x[:1] != "#"]
    assert rows == ["0"]
    assert Path("cu_md_final.extxyz").exists()


def test_md_restart_without_a_trajectory_keeps_earlier_outputs(runner, cu_file):
    assert _md(runner, "cu.extxyz", "--steps", "2", "--seed", "1").exit_code == 0
    Path("cu_md.traj").unlink()
    log = Path("cu_md.log").read_text()
    again = _md(runner, "cu.extxyz", "--steps", "4", "--restart")
    assert (
        again.exit_code == 2 and "no trajectory" in again.stderr and "--overwrite" in again.stderr
    )
    assert Path("cu_md.log").read_text() == log


# ----------------------------------------------------------------------------------------------
# md with several FILEs
# ----------------------------------------------------------------------------------------------


def test_md_several_files_restart_refused_as_the_help_says(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("a.extxyz", _cu())
    ase.io.write("b.extxyz", bulk("Au", "fcc", a=4.08, cubic=True))
    help_text = " ".join(runner.invoke(main, ["md", "--help"]).output.split())
    assert "unless --overwrite (or --restart, which continues them)" not in help_text
    assert "several FILEs cannot be restarted" in help_text
    run = _md(runner, "a.extxyz", "b.extxyz", "--steps", "5", "--log-interval", "2",
              "--ensemble", "nve", "--seed", "1")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    for name in ("a_md.traj", "b_md.traj"):
        frames = _frames(name)
        assert [f.info["md_step"] for f in frames] == [0, 2, 4, 5]
        assert [f.info["time_fs"] for f in frames] == [0.0, 2.0, 4.0, 5.0]
        assert frames[0].info["md_ensemble"] == "nve"
    before = _snapshot(tmp_path)
    restart = _md(runner, "a.extxyz", "b.extxyz", "--steps", "8", "--restart")
    assert restart.exit_code == 2 and "one at a time" not in restart.stderr
    assert "alone with --restart" in restart.stderr
    assert _snapshot(tmp_path) == before
    # each one alone continues its own trajectory
    alone = _md(runner, "a.extxyz", "--steps", "8", "--log-interval", "2", "--ensemble", "nve",
                "--restart")  # fmt: skip
    assert alone.exit_code == 0, alone.stderr
    assert [f.info["md_step"] for f in _frames("a_md.traj")] == [0, 2, 4, 5, 6, 8]
