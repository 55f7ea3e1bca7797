"""``eqv2calc adsorbml`` end to end with EMT (click's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

from ase.build import fcc100
from ase.io import read, write
from click.testing import CliRunner

from eqv2calc.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cu100_slab.extxyz"


def _small_slab(tmp_path: Path) -> Path:
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=7.0)
    slab.info.pop("adsorbate_info", None)
    path = tmp_path / "cu100_small.vasp"
    write(path, slab, format="vasp")  # POSCAR: surface atoms are detected, bottom fixed
    return path


def test_example_slab_is_a_tagged_slab():
    atoms = read(EXAMPLE)
    assert set(atoms.get_tags()) == {0, 1}
    assert atoms.constraints


def test_end_to_end_and_resume(tmp_path):
    slab = _small_slab(tmp_path)
    out = tmp_path / "run"
    args = [
        "adsorbml",
        "--slab",
        str(slab),
        "--adsorbate",
        "O",
        "--model",
        "emt",
        "--dft",
        "emt",
        "--num-random",
        "2",
        "--fmax",
        "0.05",
        "--top-k",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    runner = CliRunner()
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "rank" in res.output and "E_ads(emt)" in res.output
    assert "reference calls (emt, sp): 2 for adslabs" in res.output
    assert "this run: 5 new" in res.output
    for name in ("adsorbml.db", "summary.json", "energies.png"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    top = summary["systems"][0]["top_k"]
    assert len(top) == 2
    for item in top:
        assert Path(item["files"]["extxyz"]).is_file() and Path(item["files"]["poscar"]).is_file()
        assert item["dft"]["calls"] == 1
    ref = summary["systems"][0]["reference"]
    assert ref["adslab_calls"] == 2 and 0 < ref["saving_fraction"] < 1
    # second run: everything comes from the database
    res2 = runner.invoke(main, args)
    assert res2.exit_code == 0, res2.output
    assert "this run: 0 new" in res2.output
    assert (
        json.loads((out / "summary.json").read_text())["systems"][0]["reference"][
            "new_calls_this_run"
        ]
        == 0
    )


def test_default_output_folder(tmp_path, monkeypatch):
    slab = _small_slab(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        main,
        [
            "adsorbml",
            "--slab",
            str(slab),
            "--adsorbate",
            "*OH",
            "--model",
            "emt",
            "--num-random",
            "0",
            "--steps",
            "20",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "adsorbml_cu100_small_OH" / "summary.json").is_file()


def test_unknown_adsorbate_and_bad_inputs(tmp_path):
    slab = _small_slab(tmp_path)
    runner = CliRunner()
    res = runner.invoke(
        main, ["adsorbml", "--slab", str(slab), "--adsorbate", "COHH", "--model", "emt"]
    )
    assert res.exit_code == 1
    assert "unknown adsorbate 'COHH'" in res.output and "close matches" in res.output
    res = runner.invoke(main, ["adsorbml", "--adsorbate", "O", "--model", "emt"])
    assert res.exit_code == 2 and "--slab" in res.output
    res = runner.invoke(
        main, ["adsorbml", "--slab", str(slab), "--adsorbate", "O", "--binding-atoms", "0"]
    )
    assert res.exit_code != 0 and "adsorbate structure file" in res.output
    res = runner.invoke(
        main,
        ["adsorbml", "--slab", str(tmp_path / "none.cif"), "--adsorbate", "O", "--model", "emt"],
    )
    assert res.exit_code == 1 and "does not exist" in res.output


def test_list_adsorbates():
    res = CliRunner().invoke(main, ["adsorbml", "--list-adsorbates"])
    assert res.exit_code == 0
    assert "*COOH" in res.output and "*NH2N(CH3)2" in res.output


def test_write_vasp_cost_and_anomaly_counts(tmp_path):
    from ase.calculators.vasp import Vasp

    slab = _small_slab(tmp_path)
    out = tmp_path / "vasp_run"
    args = [
        "adsorbml",
        "--slab",
        str(slab),
        "--adsorbate",
        "CO",
        "--model",
        "emt",
        "--dft",
        "emt",
        "--dft-mode",
        "rx",
        "--num-random",
        "2",
        "--fmax",
        "0.1",
        "--dft-fmax",
        "0.1",
        "--top-k",
        "2",
        "--write-vasp",
        "--out",
        str(out),
        "--no-progress",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "migrated" in res.output and "speed-up ionic" in res.output
    summary = json.loads((out / "summary.json").read_text())
    system = summary["systems"][0]
    counts = system["anomaly_counts"]
    assert set(counts) >= {"desorbed", "dissociated", "surface_changed", "intercalated", "migrated"}
    n_migrated = sum("migrated" in c["anomalies"] for c in system["all_configurations"])
    assert counts["migrated"] == n_migrated
    cost = system["reference"]["cost"]
    assert [row["k"] for row in cost["by_k"]] == [1, 2]
    calls = [item["dft"]["calls"] for item in system["top_k"]]
    assert cost["by_k"][-1]["ionic_steps"] == sum(calls)
    scf = cost["scf_model"]
    assert cost["by_k"][0]["scf_steps_estimate"] == scf["first"] + (calls[0] - 1) * scf["later"]
    assert cost["dense_estimate"]["calculations"] == system["placements"]["total"]
    for item in system["top_k"]:
        folder = Path(item["files"]["vasp"])
        atoms = read(folder / "POSCAR", format="vasp")
        assert len(atoms) == system["n_slab_atoms"] + 2
        calc = Vasp(directory=str(folder))
        calc.read_incar(str(folder / "INCAR"))
        assert calc.int_params["nsw"] == 2000 and calc.int_params["nelm"] == 60  # rx mode
        assert calc.string_params["gga"] == "RP" and calc.float_params["encut"] == 350
        assert (folder / "KPOINTS").is_file() and (folder / "POTCAR.README").is_file()
    assert (out / "vasp" / system["system"] / "slab" / "POSCAR").is_file()
