"""Campaigns through the command line with the local executor (EMT): resume, refusals,
shards and merge, eval and AdsorbML campaigns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase.build import bulk, fcc100
from ase.io import read, write
from click.testing import CliRunner

from eqv2calc.campaigns import Ledger
from eqv2calc.cli import main

RELAX = ["--model", "emt", "--fmax", "0.05", "--no-progress"]


def _inputs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        atoms.rattle(0.08, seed=i)
        write(folder / f"s{i}.extxyz", atoms)
    return folder


def _ledger_rows(path: Path) -> dict[str, dict]:
    with Ledger(path) as led:
        return {r["label"]: r for r in led.rows()}


def test_relax_campaign_matches_plain_relax_resumes_and_refuses(tmp_path):
    inputs = _inputs(tmp_path / "in", 4)
    runner = CliRunner()
    out = tmp_path / "camp"
    args = ["relax", str(inputs), *RELAX, "--executor", "local", "--output-dir", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "4 done and 0 failed in this run" in res.output
    plain = runner.invoke(main, ["relax", str(inputs), *RELAX, "--output-dir", str(tmp_path / "p")])
    assert plain.exit_code == 0, plain.output
    rows = _ledger_rows(out / "campaign.sqlite")
    for label, row in rows.items():
        ref = read(tmp_path / "p" / f"{label}_relaxed.extxyz")
        ours = read(out / f"{label}_relaxed.extxyz")
        assert row["state"] == "done"
        assert abs(row["result"]["final_energy_eV"] - ref.get_potential_energy()) < 1e-9
        assert abs(ours.get_potential_energy() - ref.get_potential_energy()) < 1e-9
        assert row["provenance"]["versions"]["eqv2calc"]
    summary = json.loads((out / "relax_summary.json").read_text())
    assert set(summary["structures"]) == set(rows)

    # same command again: nothing is redone
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*_relaxed.extxyz")}
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "0 done and 0 failed in this run" in res.output and "4 already finished" in res.output
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.glob("*_relaxed.extxyz")}

    # another campaign (other fmax) on the same folder is refused, one line, no traceback
    res = runner.invoke(main, [*args[:-2], "--fmax", "0.02", "--output-dir", str(out)])
    assert res.exit_code == 1
    assert "other settings" in res.output and "fmax" in res.output
    assert "Traceback" not in res.output

    # a campaign without an output folder is a usage error
    res = runner.invoke(main, ["relax", str(inputs), *RELAX, "--executor", "local"])
    assert res.exit_code == 1 and "needs --output-dir" in res.output


def test_shards_split_then_merge(tmp_path):
    inputs = _inputs(tmp_path / "in", 6)
    runner = CliRunner()
    out = tmp_path / "out"
    labels = []
    for i in range(2):
        res = runner.invoke(
            main, ["relax", str(inputs), *RELAX, "--shard", f"{i}/2", "--output-dir", str(out)]
        )
        assert res.exit_code == 0, res.output
        rows = _ledger_rows(out / f"campaign.shard-{i}-of-2.sqlite")
        assert all(r["state"] == "done" for r in rows.values())
        labels.append(set(rows))
    assert not labels[0] & labels[1]
    assert labels[0] | labels[1] == {f"s{i}" for i in range(6)}
    res = runner.invoke(main, ["campaign", "merge", str(out)])
    assert res.exit_code == 0, res.output
    merged = _ledger_rows(out / "campaign.sqlite")
    assert set(merged) == labels[0] | labels[1]
    assert all(r["state"] == "done" for r in merged.values())
    res = runner.invoke(main, ["campaign", "status", str(out)])  # merged + shards: once each
    assert res.exit_code == 0, res.output
    assert "6 items in 3 ledger(s)" in res.output and "6 done" in res.output
    assert "items/s" in res.output
    res = runner.invoke(main, ["campaign", "status", str(tmp_path / "in")])
    assert res.exit_code == 1 and "no campaign ledger" in res.output
    res = runner.invoke(
        main, ["relax", str(inputs), *RELAX, "--shard", "2/2", "--output-dir", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "0 <= I < N" in res.output
    assert not (tmp_path / "x").exists()  # refused while parsing: no folder created


def test_second_driver_is_refused(tmp_path):
    from eqv2calc.campaigns.lock import LedgerLock
    from eqv2calc.io import lock_directory

    inputs = _inputs(tmp_path / "in", 1)
    out = tmp_path / "out"
    cli = "from eqv2calc.cli import main; main()"
    cmd = [sys.executable, "-c", cli, "relax", str(inputs), *RELAX]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with lock_directory(out, "relax campaign"):  # a driver running on the folder
        proc = subprocess.run(
            [*cmd, "--executor", "local", "--output-dir", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert proc.returncode == 1
    assert "in use by" in proc.stderr and str(os.getpid()) in proc.stderr
    assert "Traceback" not in proc.stderr
    with LedgerLock(out / "campaign.shard-0-of-1.sqlite"):  # a shard driver
        proc = subprocess.run(
            [*cmd, "--shard", "0/1", "--output-dir", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert proc.returncode == 1 and "another eqv2calc campaign driver" in proc.stderr


def test_eval_campaign_matches_plain_eval(tmp_path):
    inputs = _inputs(tmp_path / "in", 3)
    runner = CliRunner()
    plain = tmp_path / "plain.extxyz"
    res = runner.invoke(main, ["eval", str(inputs), "--model", "emt", "-o", str(plain)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main, ["eval", str(inputs), "--model", "emt", "--output-dir", str(tmp_path)]
    )
    assert res.exit_code == 0 and (tmp_path / "eval_results.extxyz").is_file()
    out = tmp_path / "camp"
    res = runner.invoke(
        main,
        ["eval", str(inputs), "--model", "emt", "--executor", "local", "--output-dir", str(out)],
    )
    assert res.exit_code == 0, res.output
    ref = {a.info["label"]: a for a in read(plain, ":")}
    ours = {a.info["label"]: a for a in read(out / "eval_results.extxyz", ":")}
    assert set(ours) == set(ref)
    for label, atoms in ours.items():
        assert abs(atoms.get_potential_energy() - ref[label].get_potential_energy()) < 1e-9
        assert abs(atoms.get_forces() - ref[label].get_forces()).max() < 1e-9


def test_adsorbml_campaign_two_slabs(tmp_path):
    slabs = tmp_path / "slabs"
    slabs.mkdir()
    for name, size in (("a", (2, 2, 3)), ("b", (2, 2, 4))):
        slab = fcc100("Cu", size=size, vacuum=7.0)
        slab.info.pop("adsorbate_info", None)
        write(slabs / f"{name}.vasp", slab, format="vasp")
    out = tmp_path / "ads"
    args = [
        "adsorbml",
        "--slab",
        str(slabs),
        "--adsorbate",
        "O",
        "--model",
        "emt",
        "--dft",
        "emt",
        "--num-random",
        "0",
        "--top-k",
        "1",
        "--fmax",
        "0.05",
        "--out",
        str(out),
        "--no-progress",
    ]
    runner = CliRunner()
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    for system in ("a__O", "b__O"):  # per-system outputs as a single run writes them
        for name in ("adsorbml.db", "summary.json", "energies.png"):
            assert (out / system / name).is_file()
    summary = json.loads((out / "campaign_summary.json").read_text())
    assert [s["state"] for s in summary["systems"]] == ["done", "done"]
    for s in summary["systems"]:
        per_system = json.loads((out / s["system"] / "summary.json").read_text())["systems"][0]
        assert s["best_e_ads_ref_eV"] == per_system["reference"]["best"]["e_ads_eV"]
        assert s["reference_calls"] == 1 and s["reference_calls_saved"] > 0
    assert (out / "campaign_summary.png").is_file()
    assert "a__O" in res.output and "E_ads ref" in res.output
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and "2 already finished" in res.output


def test_ray_executor_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    inputs = _inputs(tmp_path / "in", 1)
    res = CliRunner().invoke(
        main, ["relax", str(inputs), *RELAX, "--executor", "ray", "--output-dir", str(tmp_path)]
    )
    assert res.exit_code == 1
    assert "pip install 'eqv2calc[ray]'" in res.output


@pytest.mark.parametrize("bad", ["1", "a/b", "-1/2", "2/2", "0/0"])
def test_bad_shard_spec(tmp_path, bad):
    inputs = _inputs(tmp_path / "in", 1)
    res = CliRunner().invoke(
        main, ["relax", str(inputs), *RELAX, "--shard", bad, "--output-dir", str(tmp_path)]
    )
    # a bad option value is a usage error (exit 2, as the README says), and nothing is run
    assert res.exit_code == 2 and "--shard" in res.output
    assert "Traceback" not in res.output
    assert not list(tmp_path.glob("campaign*.sqlite"))


def test_shards_with_other_settings_on_one_folder_are_refused(tmp_path):
    inputs = _inputs(tmp_path / "in", 6)
    runner = CliRunner()

    def shard(i: int, steps: int, out: Path):
        return runner.invoke(
            main,
            ["relax", str(inputs), *RELAX, "--shard", f"{i}/2", "--steps", str(steps)]
            + ["--output-dir", str(out)],
        )

    mix = tmp_path / "cmix"
    res = shard(0, 200, mix)
    assert res.exit_code == 0, res.output
    res = shard(1, 300, mix)  # other settings, same folder: refused, nothing recorded
    assert res.exit_code == 1
    assert "campaign.shard-0-of-2.sqlite" in res.output and "steps: was 200, now 300" in res.output
    assert "Traceback" not in res.output
    assert not (mix / "campaign.shard-1-of-2.sqlite").exists()

    # the split depends on the inputs only: the same shard under other settings (in its own
    # folder) holds the same structures, so the two shards together cover every input
    res = shard(0, 300, tmp_path / "other")
    assert res.exit_code == 0, res.output
    first = set(_ledger_rows(mix / "campaign.shard-0-of-2.sqlite"))
    assert set(_ledger_rows(tmp_path / "other" / "campaign.shard-0-of-2.sqlite")) == first
    res = shard(1, 200, mix)
    assert res.exit_code == 0, res.output
    second = set(_ledger_rows(mix / "campaign.shard-1-of-2.sqlite"))
    assert not first & second and first | second == {f"s{i}" for i in range(6)}

    # a merged ledger is compared too (here the only ledger left in the folder)
    res = runner.invoke(main, ["campaign", "merge", str(mix)])
    assert res.exit_code == 0, res.output
    for f in mix.glob("campaign.shard-*.sqlite"):
        f.unlink()
    res = shard(1, 300, mix)
    assert res.exit_code == 1 and "campaign.sqlite holds" in res.output


def test_adsorbml_campaign_passes_every_per_system_option(tmp_path):
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=7.0)
    slab.info.pop("adsorbate_info", None)
    slabs = tmp_path / "slabs"
    slabs.mkdir()
    write(slabs / "cu.vasp", slab, format="vasp")
    out = tmp_path / "ads"
    args = ["adsorbml", "--slab", str(slabs), "--adsorbate", "O", "--adsorbate", "CO"]
    args += ["--model", "emt", "--dft", "emt", "--num-random", "0", "--top-k", "1"]
    args += ["--fmax", "0.05", "--steps", "50", "--out", str(out), "--no-progress"]
    args += ["--write-vasp", "--discard-migrated", "--dedup-tol", "0.3"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    with Ledger(out / "campaign.sqlite") as led:
        config = led.settings["config"]
    assert config["write_vasp"] is True and config["discard_migrated"] is True
    assert config["dedup_position_tol"] == 0.3 and config["steps"] == 50
    for system in ("cu__O", "cu__CO"):  # VASP inputs per system, as a single run writes them
        assert list((out / system / "vasp").rglob("INCAR")), system


def test_relax_campaign_with_the_device_engine(tmp_path):
    inputs = _inputs(tmp_path / "in", 2)
    runner = CliRunner()
    energies = {}
    for engine in ("ase", "torch"):
        out = tmp_path / engine
        res = runner.invoke(
            main,
            ["relax", str(inputs), *RELAX, "--engine", engine, "--executor", "local"]
            + ["--output-dir", str(out)],
        )
        assert res.exit_code == 0, res.output
        rows = _ledger_rows(out / "campaign.sqlite")
        assert all(r["state"] == "done" and r["result"]["converged"] for r in rows.values())
        energies[engine] = {k: r["result"]["final_energy_eV"] for k, r in rows.items()}
    for label, e in energies["ase"].items():  # same EMT minimum, to well within fmax
        assert abs(energies["torch"][label] - e) < 1e-3


def test_failed_item_is_recorded_with_its_reason(tmp_path):
    inputs = _inputs(tmp_path / "in", 1)
    write(inputs / "bad.extxyz", bulk("Fe", "bcc", a=2.87))  # EMT has no parameters for Fe
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["relax", str(inputs), *RELAX, "--executor", "local", "--output-dir", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 1, res.output
    rows = _ledger_rows(out / "campaign.sqlite")
    assert rows["s0"]["state"] == "done"
    assert rows["bad"]["state"] == "failed" and "Fe" in rows["bad"]["error"]
    status = runner.invoke(main, ["campaign", "status", str(out)])
    assert "1 done" in status.output and "1 failed" in status.output
    assert "failed: bad" in status.output
    res = runner.invoke(main, args)  # a failed item is not retried unless asked
    assert res.exit_code == 1 and "0 done and 0 failed in this run" in res.output
    res = runner.invoke(main, [*args, "--retry-failed"])
    assert res.exit_code == 1 and "0 done and 1 failed in this run" in res.output
