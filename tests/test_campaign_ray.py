"""Campaigns on a real local Ray instance (2 CPUs, shared by every test of this module).

Same results as the local executor, a worker killed mid-run, a driver SIGKILLed mid-run and
run again, and the ``--executor ray`` command line. EMT (plain, or slowed down per batched
call by :mod:`eqv2calc.campaigns.testing` so that there is a "mid-run" to kill in).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from click.testing import CliRunner

from eqv2calc.campaigns import (
    CalculatorSpec,
    Ledger,
    LocalExecutor,
    RayExecutor,
    RelaxTask,
    run_campaign,
)
from eqv2calc.campaigns.hashing import settings_fingerprint
from eqv2calc.cli import main
from eqv2calc.io import load_structures

ray = pytest.importorskip("ray")

SLOW = "eqv2calc.campaigns.testing:slow_emt"


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance (2 CPUs) for the module; workers single-threaded, passive."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"env_vars": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env=env)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _inputs(folder: Path, n: int, size=(2, 1, 1), amplitude: float = 0.08) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * size
        atoms.rattle(amplitude, seed=i)
        write(folder / f"s{i}.extxyz", atoms)
    return folder


def _campaign(inputs: Path, out: Path, spec: CalculatorSpec, fmax: float = 0.01):
    entries, errors = load_structures([str(inputs)])
    assert not errors
    task = RelaxTask(out_dir=str(out), model=spec.label, fmax=fmax, steps=300)
    specs, payloads, _ = task.items(entries, settings_fingerprint(task.settings()))
    return task, specs, payloads


def _rows(path: Path) -> dict[str, dict]:
    with Ledger(path) as led:
        return {r["label"]: r for r in led.rows()}


def _peek(path: Path) -> list[tuple[str, str]]:
    """(state, worker) of every item, read without taking the driver's locks."""
    if not path.is_file():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT state, COALESCE(worker, '') FROM items").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_ray_results_equal_local_and_cli(cluster, tmp_path):
    inputs = _inputs(tmp_path / "in", 6)
    spec = CalculatorSpec(model="emt")
    task, specs, payloads = _campaign(inputs, tmp_path / "local", spec)
    local = run_campaign(task, specs, payloads, tmp_path / "local", LocalExecutor(spec))
    assert local.done == 6
    res = CliRunner().invoke(
        main,
        [
            "relax",
            str(inputs),
            "--model",
            "emt",
            "--fmax",
            "0.01",
            "--steps",
            "300",
            "--executor",
            "ray",
            "--ray-address",
            cluster,
            "--workers",
            "2",
            "--output-dir",
            str(tmp_path / "ray"),
        ],
    )
    assert res.exit_code == 0, res.output
    a = _rows(tmp_path / "local" / "campaign.sqlite")
    b = _rows(tmp_path / "ray" / "campaign.sqlite")
    assert set(a) == set(b) and len(a) == 6
    for label in a:
        assert b[label]["state"] == "done"
        ea, eb = a[label]["result"]["final_energy_eV"], b[label]["result"]["final_energy_eV"]
        assert abs(ea - eb) < 1e-6
        assert a[label]["key"] == b[label]["key"]  # same content hash, same settings
    workers = {r["provenance"]["worker"] for r in b.values()}
    assert len(workers) == 2  # both actors got work
    assert all(r["provenance"]["versions"]["ase"] for r in b.values())


def test_worker_killed_mid_run_items_rerun_elsewhere(cluster, tmp_path):
    inputs = _inputs(tmp_path / "in", 6)
    spec = CalculatorSpec(factory=SLOW, factory_kwargs=(("delay_s", 0.03),))
    out = tmp_path / "out"
    task, specs, payloads = _campaign(inputs, out, spec)
    seen: list[str] = []
    box: dict = {}

    def drive():
        try:
            box["report"] = run_campaign(
                task,
                specs,
                payloads,
                out,
                RayExecutor(spec, workers=2),
                on_outcome=lambda p, o, r: seen.append(p["key"]),
            )
        except BaseException as err:  # reported by the assertion below
            box["error"] = err

    thread = threading.Thread(target=drive)
    thread.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        running = [w for s, w in _peek(out / "campaign.sqlite") if s == "running" and w]
        if running:
            victim = running[0]
        else:
            time.sleep(0.05)
    assert victim is not None, "no item was ever running"
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    rows = _rows(out / "campaign.sqlite")
    assert all(r["state"] == "done" for r in rows.values())
    assert sorted(seen) == sorted(s.key for s in specs)  # every item recorded exactly once
    assert box["report"].lost_leases == 0
    retried = [r for r in rows.values() if r["attempts"] > 0]
    assert retried, "the killed worker's items should have been released and rerun"
    assert all(r["provenance"]["worker"] != victim for r in retried)
    # The rerun items are EMT relaxations like the others: converged to the same fmax.
    assert all(r["result"]["converged"] for r in rows.values())


DRIVER = textwrap.dedent(
    """
    import json, sys
    from eqv2calc.campaigns import CalculatorSpec, RayExecutor, RelaxTask, run_campaign
    from eqv2calc.campaigns.hashing import settings_fingerprint
    from eqv2calc.io import load_structures

    inputs, out, address = sys.argv[1:4]
    spec = CalculatorSpec(factory="SLOW", factory_kwargs=(("delay_s", 0.03),))
    entries, _ = load_structures([inputs])
    task = RelaxTask(out_dir=out, model=spec.label, fmax=0.01, steps=300)
    specs, payloads, _ = task.items(entries, settings_fingerprint(task.settings()))
    rep = run_campaign(task, specs, payloads, out, RayExecutor(spec, workers=2, address=address))
    print(json.dumps({"done": rep.done, "skipped": rep.skipped, "recovered": rep.recovered}))
    """
).replace("SLOW", SLOW)


def test_driver_sigkilled_then_rerun_loses_nothing(cluster, tmp_path):
    inputs = _inputs(tmp_path / "in", 8)
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, str(script), str(inputs), str(out), cluster]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    states: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        states = [s for s, _ in _peek(out / "campaign.sqlite")]
        if states.count("done") >= 2 and "running" in states:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(out / "campaign.sqlite")
    done_before = {
        k: r["result"]["final_energy_eV"] for k, r in before.items() if r["state"] == "done"
    }
    running_before = [k for k, r in before.items() if r["state"] == "running"]
    assert done_before and running_before

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert report["skipped"] == len(done_before)  # nothing finished is redone
    assert report["recovered"] == len(running_before)
    assert report["done"] == 8 - len(done_before)
    after = _rows(out / "campaign.sqlite")
    assert all(r["state"] == "done" for r in after.values()) and len(after) == 8
    for label, energy in done_before.items():  # finished results untouched
        assert after[label]["result"]["final_energy_eV"] == energy
    # relaxations in flight when the driver died continued from their trajectories
    restarted = [after[k]["result"]["restarted_from_step"] for k in running_before]
    assert max(restarted) > 0
    assert np.all([after[k]["result"]["converged"] for k in after])
