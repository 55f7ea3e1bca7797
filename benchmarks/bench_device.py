"""Device benchmark: latency, batched throughput, batched relaxation, precision modes.

One run measures, on the chosen device (CUDA when present, else CPU):

1. ``latency``: single-point latency (device graph + forward) of the full-size 31M and 153M
   configurations (random weights, released OC20 hyper-parameters) at 38, 100, 1,000 and
   5,000 atoms, with peak device memory (CUDA: ``max_memory_allocated``; CPU: peak RSS);
2. ``throughput``: batched inference, atoms/s, for 64 structures of ~50 atoms (31M);
3. ``relax``: batched relaxation of slab+adsorbate placements with the torch engine against
   the ASE loop (one ``ase.optimize`` run per structure) and against today's ASE-lockstep
   batching (``relax_batch``); throughput = structures relaxed per second;
4. ``precision``: error of each precision mode against float64 on every parity fixture case
   (``tests/data/eqv2``: 4 checkpoints x 6 structures; energy, forces, stress) and the
   forward time of the 31M model at 38 atoms in that mode.

``--quick`` (for CPU): 31M at 38 and 100 atoms, 153M at 38; 16 x ~50 atoms; the relaxation
of 32 small slabs (Cu(111) 2x2x3 + adsorbate, 13 atoms) with the bundled demo model, FIRE,
fmax 0.05; precision on the fixtures. Without ``--quick``: the full sizes and 100 placements
with the 31M configuration (a GPU job).

Usage::

    python benchmarks/bench_device.py --quick --json out.json        # CPU, minutes
    python benchmarks/bench_device.py --device cuda --json out.json  # the full run on a GPU
    python benchmarks/bench_device.py --only relax precision --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO / "tests" / "data" / "eqv2"
DEMO = REPO / "eqv2calc" / "registry" / "models" / "eqv2calc-demo-emt.pt"

from bench_model import FULL_CONFIG, build_structure  # noqa: E402

#: the released 153M OC20 model (eq2_153M_ec4_allmd): 20 layers, lmax 6 / mmax 3
CONFIG_153M = dict(FULL_CONFIG, num_layers=20, lmax=6, mmax=3)
CONFIGS = {"31M": FULL_CONFIG, "153M": CONFIG_153M}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _model(name: str, device: torch.device, dtype=torch.float32):
    from eqv2calc.model.config import EquiformerV2Config
    from eqv2calc.model.potential import EquiformerV2Potential

    torch.manual_seed(0)
    cfg = EquiformerV2Config(**CONFIGS[name])
    return EquiformerV2Potential(cfg).to(device=device, dtype=dtype).eval(), cfg


def _forward(model, cfg, positions, cells, numbers, batch, pbc, nb):
    from eqv2calc.model.backbone import GraphInput
    from eqv2calc.neighbors import neighbor_graph

    dg = neighbor_graph(
        positions,
        cells,
        pbc,
        batch,
        nb,
        cutoff=cfg.cutoff,
        max_neighbors=cfg.max_neighbors,
        strict=cfg.strict_neighbor_cap,
    )
    vec = dg.edge_vectors(positions.double(), cells.double()).to(next(model.parameters()).dtype)
    graph = GraphInput(numbers, dg.edge_index, vec, batch, nb)
    with torch.inference_mode():
        return model(graph), int(dg.edge_index.shape[1])


def _tensors(atoms_list, device):
    from eqv2calc.engine.state import BatchedStructures

    st = BatchedStructures.from_atoms(atoms_list, device=device)
    return st.positions, st.cells, st.numbers, st.batch, st.pbc, st.num_graphs


def bench_latency(device, models, sizes, repeats) -> list[dict]:
    rows = []
    for name in models:
        model, cfg = _model(name, device)
        for n in sizes.get(name, []):
            atoms = build_structure(n)
            args = _tensors([atoms], device)
            _reset_peak(device)
            try:
                _forward(model, cfg, *args)  # warm-up
                _sync(device)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    _, edges = _forward(model, cfg, *args)
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                row = {"model": name, "atoms": len(atoms), "edges": edges, "best_s": min(times)}
                row["atoms_per_s"] = len(atoms) / min(times)
            except torch.OutOfMemoryError:
                row = {"model": name, "atoms": len(atoms), "error": "out of memory"}
            row["peak_mb"] = _peak_mb(device)
            rows.append(row)
            print("latency", json.dumps(row), flush=True)
        del model
    return rows


def _small_structures(count: int, target: int = 50, seed: int = 0):
    from ase.build import add_adsorbate, bulk, fcc111

    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        if k % 2:
            a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 3))[:target]
            a.rattle(0.05, seed=k)
        else:
            a = fcc111("Cu", size=(3, 4, 4), vacuum=8.0)
            add_adsorbate(a, "O", 1.9, "fcc")
            a.rattle(0.03, seed=k)
        a.positions += rng.normal(0, 0.01, a.positions.shape)
        out.append(a)
    return out


def bench_throughput(device, count, repeats) -> dict:
    model, cfg = _model("31M", device)
    structs = _small_structures(count)
    args = _tensors(structs, device)
    n_atoms = sum(len(a) for a in structs)
    _reset_peak(device)
    _forward(model, cfg, *args)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _forward(model, cfg, *args)
        _sync(device)
        times.append(time.perf_counter() - t0)
    row = {
        "model": "31M",
        "structures": count,
        "atoms": n_atoms,
        "best_s": min(times),
        "atoms_per_s": n_atoms / min(times),
        "peak_mb": _peak_mb(device),
    }
    print("throughput", json.dumps(row), flush=True)
    return row


def _placements(count: int, size=(2, 2, 3)):
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    out = []
    sites = ("fcc", "hcp", "ontop", "bridge")
    for k in range(count):
        s = fcc111("Cu", size=size, vacuum=7.0)
        add_adsorbate(s, ("O", "C", "N")[k % 3], 1.9, sites[k % 4])
        s.set_constraint(FixAtoms(indices=list(range(size[0] * size[1]))))
        s.rattle(0.05, seed=k)
        out.append(s)
    return out


def bench_relax(
    device,
    quick: bool,
    count: int,
    fmax: float,
    steps: int,
    rounds: int = 2,
    loop_count: int | None = None,
) -> dict:
    from ase.optimize import FIRE

    from eqv2calc import EquiformerV2Calculator
    from eqv2calc.drivers import relax_batch
    from eqv2calc.engine import EngineSettings, relax_engine

    if quick:
        calc = EquiformerV2Calculator(str(DEMO), device=device)
        structs = _placements(count)
        model_name = "demo (bundled)"
    else:
        import dataclasses

        calc = EquiformerV2Calculator(str(DEMO), device=device)
        model, cfg = _model("31M", device)
        gs = dataclasses.replace(calc.loaded.graph_settings, cutoff=12.0, max_neighbors=20)
        calc.loaded = dataclasses.replace(calc.loaded, model=model, graph_settings=gs)
        calc.model = model  # the 31M configuration, random weights
        structs = _placements(count, size=(4, 4, 4))
        model_name = "31M (random weights)"
    out = {"model": model_name, "structures": count, "atoms_each": len(structs[0]), "fmax": fmax}

    # the ASE loop is timed on the first loop_count structures and scaled to count (it is one
    # structure at a time, so its time is additive); the batched methods run all of them
    n_loop = min(count, loop_count if loop_count else (32 if quick else count))
    out["ase_loop_structures_timed"] = n_loop

    def run_torch():
        res = relax_engine(structs, calc, EngineSettings(optimizer="FIRE", fmax=fmax, steps=steps))
        _sync(device)
        out["torch_steps"] = sum(r.steps for r in res)
        out["torch_converged"] = sum(r.converged for r in res)
        out["_e_torch"] = [r.final_energy for r in res]

    def run_lockstep():
        res = relax_batch(structs, calc, optimizer="FIRE", fmax=fmax, steps=steps, progress=False)
        out["lockstep_steps"] = sum(r.steps for r in res)

    def run_loop():
        e_loop, steps_loop = [], 0
        for a in structs[:n_loop]:
            a = a.copy()
            a.calc = calc
            opt = FIRE(a, logfile=None)
            opt.run(fmax=fmax, steps=steps)
            e_loop.append(a.get_potential_energy())
            steps_loop += opt.nsteps
        out["ase_loop_steps"] = steps_loop
        out["_e_loop"] = e_loop

    methods = {"torch": run_torch, "lockstep": run_lockstep, "ase_loop": run_loop}
    scale = {"torch": 1.0, "lockstep": 1.0, "ase_loop": count / n_loop}
    times: dict[str, list[float]] = {k: [] for k in methods}
    _reset_peak(device)
    # rounds in rotated order, so that a changing machine load does not favour one method
    orders = [["ase_loop", "lockstep", "torch"], ["torch", "lockstep", "ase_loop"]]
    for order in orders[:rounds]:
        for name in order:
            t0 = time.perf_counter()
            methods[name]()
            times[name].append((time.perf_counter() - t0) * scale[name])
    out["peak_mb"] = _peak_mb(device)
    for name, ts in times.items():
        out[f"{name}_s"] = min(ts)
        out[f"{name}_s_rounds"] = ts
    e_t, e_l = np.array(out.pop("_e_torch")), np.array(out.pop("_e_loop"))
    out["max_dE_torch_vs_loop_eV"] = float(np.abs(e_t[:n_loop] - e_l).max())
    out["speedup_vs_loop"] = out["ase_loop_s"] / out["torch_s"]
    out["speedup_vs_lockstep"] = out["lockstep_s"] / out["torch_s"]
    print("relax", json.dumps(out), flush=True)
    return out


def bench_precision(device, modes: list[str], repeats: int) -> list[dict]:
    """Errors of each mode against float64 on every fixture case, and 31M forward speed."""

    cases = []  # both fixture folders: tests/data/eqv2 and tests/data/eqv2_options
    for folder in (DATA, DATA.parent / "eqv2_options"):
        ref = json.loads((folder / "reference.json").read_text())
        cases += [{**c, "_folder": folder} for c in ref["cases"]]
    rows = []
    calcs64 = {}
    for mode in modes:
        try:
            rows.append(_precision_mode(device, mode, cases, calcs64, repeats))
        except Exception as err:  # a mode the model cannot run in
            rows.append({"mode": mode, "error": f"{type(err).__name__}: {err}"[:300]})
        print("precision", json.dumps(rows[-1]), flush=True)
    return rows


def _precision_mode(device, mode, cases, calcs64, repeats) -> dict:
    from ase.io import read

    from eqv2calc import EquiformerV2Calculator
    from eqv2calc.engine.precision import PRECISIONS

    if True:
        prec = PRECISIONS[mode]
        err = {"energy_eV": 0.0, "forces_eV_A": 0.0, "stress_eV_A3": 0.0}
        for case in cases:
            ck = case["_folder"] / "checkpoints" / f"{case['checkpoint']}.pt"
            atoms = read(case["_folder"] / "structures" / f"{case['structure']}.extxyz")
            if ck not in calcs64:
                calcs64[ck] = EquiformerV2Calculator(str(ck), device=device, dtype="float64")
            c64 = calcs64[ck]
            c = EquiformerV2Calculator(str(ck), device=device, dtype=prec.dtype)
            args = _tensors([atoms], device)
            o64 = c64.predict_state(*args[:5], args[5])
            with prec.context(device):
                o = c.predict_state(*args[:5], args[5])
            err["energy_eV"] = max(
                err["energy_eV"], float((o["energy"].double() - o64["energy"]).abs().max())
            )
            err["forces_eV_A"] = max(
                err["forces_eV_A"], float((o["forces"].double() - o64["forces"]).abs().max())
            )
            if "stress" in o64 and bool(atoms.pbc.all()):
                d = (o["stress"].double() - o64["stress"]).abs().max()
                err["stress_eV_A3"] = max(err["stress_eV_A3"], float(d))
        # speed: the 31M configuration at 38 atoms in this mode
        dtype = torch.float64 if prec.dtype == "float64" else torch.float32
        model, cfg = _model("31M", device, dtype)
        args = _tensors([build_structure(38)], device)
        with prec.context(device):
            _forward(model, cfg, *args)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _forward(model, cfg, *args)
                _sync(device)
                times.append(time.perf_counter() - t0)
        return {"mode": mode, "cases": len(cases), **err, "forward_38_s": min(times)}


def machine(device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["threads"] = torch.get_num_threads()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="CPU-sized cases (see module doc)")
    p.add_argument("--only", nargs="*", default=["latency", "throughput", "relax", "precision"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="written after every section")
    p.add_argument("--relax-count", type=int, default=None, help="placements (32 quick, 100)")
    p.add_argument(
        "--loop-count",
        type=int,
        default=None,
        help="time the ASE loop on this many placements and scale (default: all; 32 quick)",
    )
    p.add_argument("--rounds", type=int, default=2, choices=(1, 2), help="relaxation rounds")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"machine": machine(device), "quick": args.quick}
    print(json.dumps(result["machine"]), flush=True)
    if args.quick:
        sizes, count, n_relax, rep = {"31M": [38, 100], "153M": [38]}, 16, 32, 2
    else:
        sizes = {"31M": [38, 100, 1000, 5000], "153M": [38, 100, 1000, 5000]}
        count, n_relax, rep = 64, 100, 3
    sections = {
        "latency": lambda: bench_latency(device, ["31M", "153M"], sizes, rep),
        "throughput": lambda: bench_throughput(device, count, rep),
        "relax": lambda: bench_relax(
            device,
            args.quick,
            args.relax_count or n_relax,
            0.05,
            300,
            rounds=args.rounds,
            loop_count=args.loop_count,
        ),
        "precision": lambda: bench_precision(
            device,
            ["float32", "float64", "bf16"] + (["tf32"] if device.type == "cuda" else []),
            rep,
        ),
    }
    unknown = [name for name in args.only if name not in sections]
    if unknown:
        p.error(f"--only: unknown section(s) {unknown}; choose from {sorted(sections)}")
    for name in args.only:  # in the order given; the JSON is rewritten after each section
        result[name] = sections[name]()
        if args.json:
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
