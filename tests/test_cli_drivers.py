"""Tests for the relax, md and eval commands (click CliRunner, ASE's EMT via --model emt)."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.calculators.emt import EMT

from eqv2calc.cli import main


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.pbc = True
    slab.rattle(0.03, seed=0)
    ase.io.write(tmp_path / "slab.cif", slab)
    cu = bulk("Cu", "fcc", a=3.62, cubic=True)
    cu.rattle(0.03, seed=1)
    ase.io.write(tmp_path / "POSCAR", cu, format="vasp")
    water = molecule("H2O")
    water.center(vacuum=4.0)
    ase.io.write(tmp_path / "water.xyz", water)
    ase.io.write(tmp_path / "si.cif", bulk("Si", "diamond", a=5.43))
    (tmp_path / "broken.cif").write_text("not a cif\n")
    return tmp_path


def _emt_energy(atoms):
    work = atoms.copy()
    work.calc = EMT()
    return work.get_potential_energy()


def test_help_explains_options(runner):
    result = runner.invoke(main, ["relax", "--help"])
    assert result.exit_code == 0
    for option in (
        "--model",
        "--device",
        "--dtype",
        "--optimizer",
        "--fmax",
        "--steps",
        "--relax-cell",
        "--fix-below",
        "--output",
        "--restart",
        "--max-atoms",
    ):
        assert option in result.output
    assert "eV/Å" in result.output
    md_help = runner.invoke(main, ["md", "--help"]).output
    assert "not gradients" in md_help
    for option in (
        "--ensemble",
        "--temperature",
        "--timestep",
        "--friction",
        "--seed",
        "--log-interval",
        "--traj",
    ):
        assert option in md_help
    assert "--max-atoms" in runner.invoke(main, ["eval", "--help"]).output


def test_relax_writes_structures_and_summary(runner, inputs):
    result = runner.invoke(
        main, ["relax", "slab.cif", "POSCAR", "--model", "emt", "--fmax", "0.03", "--no-progress"]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("converged after") == 2
    summary = json.loads((inputs / "relax_summary.json").read_text())
    assert set(summary["structures"]) == {"slab", "poscar"}
    assert summary["counts"] == {"ok": 2, "failed": 0, "not_converged": 0}
    for label in ("slab", "poscar"):
        record = summary["structures"][label]
        assert record["converged"] and record["max_force_eV_per_A"] < 0.03
        relaxed = ase.io.read(inputs / f"{label}_relaxed.extxyz")
        assert relaxed.get_potential_energy() == pytest.approx(record["final_energy_eV"])
        assert _emt_energy(relaxed) == pytest.approx(record["final_energy_eV"], abs=1e-6)
        assert (inputs / f"{label}_relax.traj").is_file()
        assert (inputs / f"{label}_relax.log").is_file()
        assert record["initial_energy_eV"] > record["final_energy_eV"]


def test_relax_reports_bad_inputs_and_continues(runner, inputs):
    result = runner.invoke(
        main,
        [
            "relax",
            "broken.cif",
            "si.cif",
            "POSCAR",
            "missing.cif",
            "--model",
            "emt",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert any("broken.cif" in e for e in errors)
    assert any("missing.cif" in e for e in errors)
    assert any("si.cif" in e and "Si" in e for e in errors)
    assert (inputs / "poscar_relaxed.extxyz").is_file()
    summary = json.loads((inputs / "relax_summary.json").read_text())
    assert summary["structures"]["si"]["status"] == "error"
    assert summary["structures"]["poscar"]["status"] == "converged"
    assert len(summary["read_errors"]) == 2


def test_relax_cell_on_molecule_is_an_error(runner, inputs):
    result = runner.invoke(
        main,
        [
            "relax",
            "water.xyz",
            "POSCAR",
            "--model",
            "emt",
            "--relax-cell",
            "--optimizer",
            "LBFGS",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1
    assert "water.xyz" in result.stderr and "periodic in all three" in result.stderr
    assert (inputs / "poscar_relaxed.extxyz").is_file()


def test_relax_cell_without_stress_head(runner, inputs, monkeypatch):
    class NoStress(EMT):
        implemented_properties = ["energy", "free_energy", "forces"]

    import eqv2calc.cli.relax as relax_cli

    monkeypatch.setattr(relax_cli, "make_calculator", lambda *args: NoStress())
    result = runner.invoke(main, ["relax", "POSCAR", "--relax-cell", "--no-progress"])
    assert result.exit_code == 1
    assert "no stress head" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_not_converged_exit_status_and_restart(runner, inputs):
    args = [
        "relax",
        "slab.cif",
        "--model",
        "emt",
        "--optimizer",
        "LBFGS",
        "--fmax",
        "0.01",
        "--no-progress",
        "--output-dir",
        "out",
    ]
    first = runner.invoke(main, [*args, "--steps", "3"])
    assert first.exit_code == 3
    assert "NOT CONVERGED" in first.stdout
    assert len(ase.io.read(inputs / "out" / "slab_relax.traj", ":")) == 4
    second = runner.invoke(main, [*args, "--steps", "300", "--restart"])
    assert second.exit_code == 0, second.stderr
    record = json.loads((inputs / "out" / "relax_summary.json").read_text())["structures"]["slab"]
    assert record["restarted_from_step"] == 3 and record["converged"]
    frames = ase.io.read(inputs / "out" / "slab_relax.traj", ":")
    assert len(frames) == record["steps"] + 1


def test_fix_below_and_single_output(runner, inputs):
    slab = ase.io.read(inputs / "slab.cif")
    z_cut = float(np.sort(slab.positions[:, 2])[4]) - 0.1  # the lowest layer (4 atoms)
    result = runner.invoke(
        main,
        [
            "relax",
            "slab.cif",
            "--model",
            "emt",
            "--fix-below",
            str(z_cut),
            "-o",
            "final.cif",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.stderr
    relaxed = ase.io.read(inputs / "final.cif")
    low = slab.positions[:, 2] < z_cut
    assert low.sum() == 4
    np.testing.assert_allclose(relaxed.positions[low], slab.positions[low], atol=1e-5)
    assert np.abs(relaxed.positions[~low] - slab.positions[~low]).max() > 1e-3
    two = runner.invoke(main, ["relax", "slab.cif", "POSCAR", "--model", "emt", "-o", "x.cif"])
    assert two.exit_code != 0 and "--output" in two.stderr


def test_eval_writes_extxyz_and_summary(runner, inputs):
    result = runner.invoke(
        main,
        [
            "eval",
            "POSCAR",
            "water.xyz",
            "si.cif",
            "--model",
            "emt",
            "-o",
            "res.extxyz",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1  # si.cif cannot be evaluated with EMT
    assert "si.cif" in result.stderr
    frames = ase.io.read(inputs / "res.extxyz", ":")
    assert [f.info["label"] for f in frames] == ["poscar", "water"]
    for frame, source in zip(frames, ["POSCAR", "water.xyz"]):
        original = ase.io.read(inputs / source)
        assert frame.get_potential_energy() == pytest.approx(_emt_energy(original), abs=1e-6)
        assert frame.get_forces().shape == (len(original), 3)
    assert frames[0].get_stress().shape == (6,)
    summary = json.loads((inputs / "eval_summary.json").read_text())
    assert summary["counts"]["ok"] == 2 and summary["counts"]["failed"] == 1


def test_md_runs_and_reports_drift(runner, inputs):
    result = runner.invoke(
        main,
        [
            "md",
            "POSCAR",
            "--model",
            "emt",
            "--ensemble",
            "nve",
            "--temperature",
            "300",
            "--timestep",
            "2",
            "--steps",
            "30",
            "--seed",
            "1",
            "--log-interval",
            "5",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "drift" in result.stdout
    log = (inputs / "poscar_md.log").read_text()
    assert "not gradients" in log
    assert len(ase.io.read(inputs / "poscar_md.traj", ":")) == 7
    final = ase.io.read(inputs / "poscar_md_final.extxyz")
    assert final.get_potential_energy() == pytest.approx(_emt_energy(final), abs=1e-6)


def test_md_errors(runner, inputs):
    ase.io.write(inputs / "two.extxyz", [bulk("Cu"), bulk("Cu", a=3.7)])
    many = runner.invoke(main, ["md", "two.extxyz", "--model", "emt", "--steps", "1"])
    assert many.exit_code == 1 and "holds 2 structures" in many.stderr
    npt = runner.invoke(
        main,
        ["md", "water.xyz", "--model", "emt", "--ensemble", "npt", "--steps", "1", "--no-progress"],
    )
    assert npt.exit_code == 1 and "water.xyz" in npt.stderr and "periodic" in npt.stderr


def _md_many_args(*extra):
    return ["md", "a.extxyz", "b.extxyz", "--model", "emt", "--steps", "4", "--no-progress"] + [
        *extra
    ]


@pytest.fixture
def two_systems(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write(tmp_path / "a.extxyz", bulk("Cu", "fcc", a=3.6, cubic=True))
    ase.io.write(tmp_path / "b.extxyz", bulk("Au", "fcc", a=4.08, cubic=True))
    return tmp_path


def test_md_several_inputs_refuse_single_file_options(runner, two_systems):
    for option in (["-o", "same.extxyz"], ["--traj", "same.traj"], ["--log", "same.log"]):
        result = runner.invoke(main, _md_many_args(*option))
        assert result.exit_code == 2, result.stderr
        assert option[0] in result.stderr and "2 inputs" in result.stderr
    assert sorted(p.name for p in two_systems.iterdir()) == ["a.extxyz", "b.extxyz"]


def test_md_never_overwrites_an_earlier_run_silently(runner, two_systems):
    first = runner.invoke(main, _md_many_args("--seed", "1"))
    assert first.exit_code == 0, first.stderr
    log_before = (two_systems / "a_md.log").read_text()
    again = runner.invoke(main, _md_many_args("--seed", "2"))
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert (two_systems / "a_md.log").read_text() == log_before
    single = runner.invoke(main, ["md", "a.extxyz", "--model", "emt", "--steps", "2"])
    assert single.exit_code == 2 and "a_md" in single.stderr and "--overwrite" in single.stderr
    assert (two_systems / "a_md.log").read_text() == log_before
    forced = runner.invoke(main, _md_many_args("--seed", "2", "--overwrite"))
    assert forced.exit_code == 0, forced.stderr
    assert "# seed 2" in (two_systems / "a_md.log").read_text()


def test_md_several_inputs_log_columns_drift_and_fresh_seed(runner, two_systems):
    seeds = []
    for _ in range(2):
        result = runner.invoke(main, _md_many_args("--ensemble", "nvt", "--overwrite"))
        assert result.exit_code == 0, result.stderr
        lines = (two_systems / "a_md.log").read_text().splitlines()
        seeds.append([x for x in lines if x.startswith("# seed ")][0])
    assert seeds[0] != seeds[1]  # no --seed: fresh randomness, recorded in the log
    nve = runner.invoke(main, _md_many_args("--ensemble", "nve", "--overwrite", "--seed", "5"))
    assert nve.exit_code == 0, nve.stderr
    for name in ("a_md.log", "b_md.log"):
        lines = (two_systems / name).read_text().splitlines()
        assert any(x.split()[:2] == ["#", "step"] for x in lines)
        assert [x for x in lines if not x.startswith("#")][0].split()[0] == "0"
        assert "drift" in [x for x in lines if x.startswith("# summary:")][0]


def test_relax_explicit_torch_engine_that_cannot_apply_exits_2(runner, inputs):
    torch_emt = runner.invoke(
        main, ["relax", "POSCAR", "--model", "emt", "--engine", "torch", "--no-progress"]
    )
    assert torch_emt.exit_code == 2 and "EMT" in torch_emt.stderr
    assert "--engine ase" in torch_emt.stderr and not (inputs / "poscar_relaxed.extxyz").exists()
    bfgs = runner.invoke(
        main,
        ["relax", "POSCAR", "--model", "emt", "--engine", "torch", "--optimizer", "bfgs"],
    )
    assert bfgs.exit_code == 2 and "BFGS" in bfgs.stderr
    auto = runner.invoke(main, ["relax", "POSCAR", "--model", "emt", "--no-progress"])
    assert auto.exit_code == 0, auto.stderr
    notes = [x for x in auto.stderr.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and "ASE optimizers" in notes[0]
    assert json.loads((inputs / "relax_summary.json").read_text())["settings"]["engine"] == "ase"
    assert (inputs / "poscar_relaxed.extxyz").exists()


@pytest.mark.parametrize("command", ["relax", "eval", "md"])
@pytest.mark.parametrize(
    "given, accepted",
    [
        (["--precision", "float64", "--dtype", "float32"], False),  # was accepted silently
        (["--precision", "float32", "--dtype", "float64"], False),
        (["--precision", "tf32", "--dtype", "float64"], False),
        (["--precision", "float64", "--dtype", "float64"], True),
        (["--precision", "tf32", "--dtype", "float32"], True),
    ],
)
def test_an_explicit_dtype_that_conflicts_with_precision_is_refused(runner, inputs, command,
                                                                    given, accepted):  # fmt: skip
    steps = [] if command == "eval" else ["--steps", "1"]
    if command == "md":
        steps += ["--overwrite"]
    result = runner.invoke(main, [command, "POSCAR", *given, *steps, "--no-progress"])
    if accepted:
        assert result.exit_code in (0, 3), result.stderr  # 3: relax not converged in a step
        return
    precision, dtype = given[1], given[3]
    assert result.exit_code == 1, result.output
    assert f"error: --precision {precision} conflicts with --dtype {dtype}" in result.stderr
    assert not [p.name for p in inputs.iterdir() if p.name.endswith((".json", ".extxyz", "traj"))]
