"""Benchmark the EquiformerV2 forward pass (energy + direct forces) of the full-size 31M model.

Every case runs in a fresh subprocess so that peak memory (``ru_maxrss``; on CUDA also
``torch.cuda.max_memory_allocated``) belongs to that case alone. The model is the 31M
configuration of the released OC20 checkpoints (8 layers, lmax 4 / mmax 2, 128 sphere
channels, 12 Å cutoff, 20 neighbours strict) with random weights; the structures are
Cu(111) slabs with an adsorbed CO (the 38-atom parity fixture, then larger slabs built with
``ase.build.fcc111``).

Per case the table gives: edges, graph-build time (``graph_from_atoms`` + tensors, ms),
best and median forward time over the repeats (ms/call, after one warm-up call), atoms/s from
the best time, peak RSS of the process (MB; includes Python + torch, about 0.35 GB, shown
separately as ``base``), and the CUDA peak allocated memory (MB) on GPU.

``--mode inference`` (default) runs under ``torch.inference_mode`` like the calculator;
``--mode grad`` runs with autograd recording, which is how the reference numbers below with
the larger peak were taken.

Usage::

    python benchmarks/bench_model.py                      # 38, 100, 300, 1000 atoms, CPU (+CUDA)
    python benchmarks/bench_model.py --sizes 38 100 --repeats 5 --json out.json
    python benchmarks/bench_model.py --quick              # small model, tiny structures, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLAB_FIXTURE = REPO / "tests" / "data" / "eqv2" / "structures" / "slab_cu111_co.extxyz"

#: the released 31M OC20 model (eq2_31M_ec4_allmd) hyper-parameters
FULL_CONFIG = dict(
    num_layers=8,
    lmax=4,
    mmax=2,
    sphere_channels=128,
    attn_hidden_channels=64,
    num_heads=8,
    attn_alpha_channels=64,
    attn_value_channels=16,
    ffn_hidden_channels=128,
    edge_channels=128,
    grid_resolution=18,
    max_neighbors=20,
    cutoff=12.0,
    strict_neighbor_cap=True,
    norm_type="layer_norm_sh",
    use_grid_mlp=True,
    use_sep_s2_act=True,
    num_elements=90,
)
#: a small model for --quick
QUICK_CONFIG = dict(
    FULL_CONFIG,
    num_layers=2,
    sphere_channels=32,
    attn_hidden_channels=32,
    num_heads=4,
    attn_alpha_channels=16,
    attn_value_channels=8,
    ffn_hidden_channels=64,
    edge_channels=64,
)

#: fcc111 sizes (a, b, layers) for the larger slabs; + CO gives the atom counts in the name
SLAB_SIZES = {100: (7, 7, 2), 300: (7, 7, 6), 1000: (10, 10, 10), 3000: (15, 20, 10)}

#: fairchem-core 1.10 (OCPCalculator, same machine kind, 2 threads, float32), for comparison
REFERENCE = {
    38: {"ms": 1000.0, "peak_mb_grad": 2800.0, "peak_mb_nograd": 1200.0},
    100: {"ms": 3800.0, "peak_mb_grad": 5900.0, "peak_mb_nograd": 1600.0},
}


def build_structure(target: int):
    """A Cu(111) + CO slab with about ``target`` atoms (exactly 38 = the parity fixture)."""
    from ase import Atoms
    from ase.build import add_adsorbate, fcc111
    from ase.io import read

    if target == 38:
        return read(SLAB_FIXTURE)
    if target in SLAB_SIZES:
        size = SLAB_SIZES[target]
    else:  # any other size: 4-layer slab, square-ish
        side = max(1, round(((target - 2) / 4) ** 0.5))
        size = (side, max(1, round((target - 2) / (4 * side))), 4)
    slab = fcc111("Cu", size=size, vacuum=10.0, a=3.61)
    add_adsorbate(slab, Atoms("CO", positions=[(0, 0, 0), (0, 0, 1.15)]), 1.9, "ontop")
    slab.center(vacuum=10.0, axis=2)
    slab.rattle(0.02, seed=1)
    return slab


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_case(case: dict) -> dict:
    """Run one case in this process (called in a fresh subprocess by :func:`main`)."""
    import numpy as np
    import torch

    import eqv2calc
    from eqv2calc.graph import batch_graphs, graph_from_atoms
    from eqv2calc.model.backbone import GraphInput
    from eqv2calc.model.config import EquiformerV2Config
    from eqv2calc.model.potential import EquiformerV2Potential

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    dtype = {"float32": torch.float32, "float64": torch.float64}[case["dtype"]]
    device = torch.device(case["device"])
    config = EquiformerV2Config(**(QUICK_CONFIG if case["quick"] else FULL_CONFIG))
    model = EquiformerV2Potential(config).to(device=device, dtype=dtype).eval()
    num_params = sum(p.numel() for p in model.parameters())
    atoms = build_structure(case["atoms"])

    def make_graph() -> GraphInput:
        g = batch_graphs(
            [
                graph_from_atoms(
                    atoms,
                    cutoff=config.cutoff,
                    max_neighbors=config.max_neighbors,
                    strict=config.strict_neighbor_cap,
                )
            ]
        )
        return GraphInput(
            atomic_numbers=torch.as_tensor(atoms.numbers, dtype=torch.long, device=device),
            edge_index=torch.as_tensor(g.edge_index, device=device),
            edge_vec=torch.as_tensor(g.edge_vec, device=device).to(dtype),
            batch=torch.as_tensor(g.batch, device=device),
            num_graphs=1,
        )

    graph_times = []
    for _ in range(max(1, min(3, case["repeats"]))):
        t0 = time.perf_counter()
        graph = make_graph()
        graph_times.append((time.perf_counter() - t0) * 1e3)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> dict:
        if case["mode"] == "grad":
            return model(graph)
        with torch.inference_mode():
            return model(graph)

    base_rss = _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = forward()  # warm-up
    sync()
    energy = float(out["energy"].detach().sum())
    force_norm = float(out["forces"].detach().norm())
    del out
    times, cpu_times = [], []
    for _ in range(case["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        out = forward()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
        del out
    best = min(times)
    return {
        **case,
        "num_atoms": len(atoms),
        "num_edges": int(graph.edge_index.shape[1]),
        "num_params": num_params,
        "graph_ms": min(graph_times),
        "best_ms": best,
        "median_ms": statistics.median(times),
        "times_ms": times,
        "cpu_ms": min(cpu_times),
        "atoms_per_s": len(atoms) / (best / 1e3),
        "base_rss_mb": base_rss,
        "peak_rss_mb": _peak_rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
        "energy": energy,
        "force_norm": force_norm,
        "finite": bool(np.isfinite(energy) and np.isfinite(force_norm)),
        "torch": torch.__version__,
        "eqv2calc": str(Path(eqv2calc.__file__).parent),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }


def _spawn(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        why = "killed (out of memory?)" if proc.returncode < 0 else tail
        return {**case, "error": f"exit {proc.returncode}: {why}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'config':7s} {'atoms':>6s} {'edges':>7s} {'device':6s} {'dtype':8s} {'mode':9s} {'graph ms':>9s} "
        f"{'best ms':>9s} {'median ms':>9s} {'cpu ms':>9s} {'atoms/s':>8s} {'base MB':>8s} {'peak MB':>8s} {'cuda MB':>8s} "
        f"{'load':>5s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        label = "quick" if r["quick"] else "31M"
        if "error" in r:
            print(
                f"{label:7s} {r['atoms']:>6d} {'':>7s} {r['device']:6s} {r['dtype']:8s} {r['mode']:9s} {r['error']}"
            )
            continue
        print(
            f"{label:7s} {r['num_atoms']:>6d} {r['num_edges']:>7d} {r['device']:6s} {r['dtype']:8s} {r['mode']:9s} "
            f"{r['graph_ms']:>9.1f} {r['best_ms']:>9.1f} {r['median_ms']:>9.1f} {r['cpu_ms']:>9.1f} {r['atoms_per_s']:>8.1f} "
            f"{r['base_rss_mb']:>8.0f} {r['peak_rss_mb']:>8.0f} {_fmt(r['cuda_peak_mb'], '8.0f'):>8s} "
            f"{r['load_avg_1min'][0]:>5.1f}"
        )


def scaling_exponent(rows: list[dict], lo: int = 100) -> float | None:
    """Least-squares slope of log(time) against log(atoms) for the cases with >= ``lo`` atoms."""
    import math

    pts = [
        (math.log(r["num_atoms"]), math.log(r["best_ms"]))
        for r in rows
        if "error" not in r and r["num_atoms"] >= lo
    ]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def machine() -> dict:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _write_json(path: Path, rows: list[dict], threads: int) -> None:
    """Write all rows so far (atomically: temp file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(
            {
                "machine": machine(),
                "threads": threads,
                "reference_fairchem_1_10": REFERENCE,
                "rows": rows,
            },
            indent=1,
        )
    )
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[38, 100, 300, 1000],
        help="target atom counts (38 = the parity slab; default: 38 100 300 1000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per case after one warm-up (default: 5, fewer above 300 atoms)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="cpu, cuda, or all available (default)",
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], nargs="+", default=["float32"])
    parser.add_argument(
        "--mode",
        choices=["inference", "grad"],
        nargs="+",
        default=["inference"],
        help="inference: torch.inference_mode (as the calculator); grad: autograd on",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per case before giving up"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small 2-layer model on 38 and 100 atoms, 2 repeats"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write all rows + machine info to this file"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return 0

    import torch

    devices = (
        ["cpu"]
        if args.device == "cpu"
        else ["cuda"]
        if args.device == "cuda"
        else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    )
    sizes = [38, 100] if args.quick and args.sizes == parser.get_default("sizes") else args.sizes
    rows = []
    for device in devices:
        for dtype in args.dtype:
            for mode in args.mode:
                for n in sizes:
                    repeats = args.repeats or (2 if args.quick else 5 if n <= 300 else 2)
                    case = {
                        "atoms": n,
                        "device": device,
                        "dtype": dtype,
                        "mode": mode,
                        "repeats": repeats,
                        "threads": args.threads,
                        "quick": args.quick,
                    }
                    row = _spawn(case, args.timeout)
                    rows.append(row)
                    done = (
                        row.get("error")
                        or f"{row['best_ms']:.1f} ms, peak {row['peak_rss_mb']:.0f} MB"
                    )
                    print(f"  {device} {dtype} {mode} {n} atoms: {done}", flush=True)
                    if args.json:
                        _write_json(args.json, rows, args.threads)
    print()
    print_table(rows)
    for device in devices:
        exp = scaling_exponent(
            [r for r in rows if r["device"] == device and r.get("mode") == args.mode[0]]
        )
        if exp is not None:
            print(f"scaling exponent ({device}, >= 100 atoms): time ~ N^{exp:.2f}")
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}"
        + (f", {info['cuda']}" if info["cuda"] else "")
    )
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
