"""Campaign throughput: items/s of a relax campaign, local executor vs Ray with 1 and 2 workers.

The same inputs (rattled fcc Cu cells) are relaxed by :func:`eqv2calc.campaigns.run_campaign`
in fresh output folders with

* ``local-1thr`` / ``local-2thr``: the in-process executor (one batched relaxation) with 1 or 2
  torch threads (the first local row is the baseline of the speed-ups);
* ``ray-1`` / ``ray-2``: the Ray executor with 1 or 2 actors (1 CPU and 1 torch thread each)
  on one local Ray instance started once by this script (its start-up time is reported apart).

Wall time covers the whole ``run_campaign`` call: ledger, worker start-up (model loading in
each actor), the relaxations and writing the results; ``first result`` is the time until the
first item was recorded. Speed-ups are against the first local row of the same run.

    python benchmarks/bench_campaign.py                      # bundled demo model, 16 x 16 atoms
    python benchmarks/bench_campaign.py --model emt --structures 32 --repeat 3 3 1
    python benchmarks/bench_campaign.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _inputs(folder: Path, n: int, repeat: tuple[int, int, int], amplitude: float) -> None:
    from ase.build import bulk
    from ase.io import write

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * repeat
        atoms.rattle(amplitude, seed=i)
        write(folder / f"cu_{i:04d}.extxyz", atoms)


def _one(name: str, executor, inputs: Path, work: Path, args) -> dict:
    from eqv2calc.campaigns import RelaxTask, run_campaign
    from eqv2calc.campaigns.hashing import settings_fingerprint
    from eqv2calc.io import load_structures

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    entries, _ = load_structures([str(inputs)])
    task = RelaxTask(
        out_dir=str(out),
        model=executor.spec.label,
        optimizer="FIRE",
        fmax=args.fmax,
        steps=args.steps,
        max_atoms_per_batch=args.max_atoms,
    )
    specs, payloads, _ = task.items(entries, settings_fingerprint(task.settings()))
    t0 = time.perf_counter()
    first: list[float] = []
    energies: dict[str, float] = {}

    def seen(payload, outcome, record) -> None:
        if not first:
            first.append(time.perf_counter() - t0)
        energies[payload["label"]] = record.get("final_energy_eV")

    rep = run_campaign(task, specs, payloads, out, executor, on_outcome=seen)
    wall = time.perf_counter() - t0
    return {
        "executor": name,
        "items": rep.done + rep.failed,
        "failed": rep.failed,
        "wall_s": round(wall, 2),
        "first_result_s": round(first[0], 2) if first else None,
        "items_per_s": round((rep.done + rep.failed) / wall, 3),
        "energies": energies,
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="demo", help="checkpoint/registry name/emt (default: demo)"
    )
    parser.add_argument("--structures", type=int, default=16)
    parser.add_argument("--repeat", type=int, nargs=3, default=(2, 2, 1), metavar=("A", "B", "C"))
    parser.add_argument("--rattle", type=float, default=0.08, help="Å")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-atoms", type=int, default=256, help="atoms per batched call")
    parser.add_argument(
        "--local-threads", type=int, nargs="+", default=[1, 2], help="torch threads, local runs"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import ray
    import torch

    from eqv2calc.campaigns import CalculatorSpec, LocalExecutor, RayExecutor

    spec = CalculatorSpec(model=args.model, device="cpu")
    work = Path(tempfile.mkdtemp(prefix="bench_campaign_"))
    inputs = work / "inputs"
    _inputs(inputs, args.structures, tuple(args.repeat), args.rattle)

    rows = []
    for threads in args.local_threads:
        torch.set_num_threads(threads)
        executor = LocalExecutor(spec, threads=threads)
        rows.append(_one(f"local-{threads}thr", executor, inputs, work, args))
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    for n in (1, 2):
        rows.append(_one(f"ray-{n}", RayExecutor(spec, workers=n), inputs, work, args))
    ray.shutdown()

    base = rows[0]
    worst = 0.0
    for r in rows:
        r["speedup_vs_local"] = round(r["items_per_s"] / base["items_per_s"], 2)
        diffs = [abs(r["energies"][k] - base["energies"][k]) for k in base["energies"]]
        r["max_energy_diff_vs_local_eV"] = max(diffs) if diffs else None
        worst = max(worst, r["max_energy_diff_vs_local_eV"] or 0.0)
    n_atoms = args.repeat[0] * args.repeat[1] * args.repeat[2] * 4
    print(
        f"# {args.structures} relaxations of {n_atoms}-atom Cu, model {spec.label}, FIRE "
        f"fmax {args.fmax} eV/Å; CPU: {_cpu_model()}, {os.cpu_count()} cores; "
        f"ray {ray.__version__}, torch {torch.__version__}; Ray start-up {ray_start:.1f} s"
    )
    print("| executor | items | wall (s) | first result (s) | items/s | vs local | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['executor']} | {r['items']} | {r['wall_s']:.1f} | {r['first_result_s']} | "
            f"{r['items_per_s']:.3f} | {r['speedup_vs_local']:.2f}x | {r['load_1min']} |"
        )
    print(f"# largest final-energy difference against local: {worst:.2e} eV")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"args": vars(args), "ray_start_s": ray_start, "cpu": _cpu_model(), "rows": rows},
                indent=2,
            )
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
