"""NVE energy drift: direct-force model versus its conservative (gradient) fine-tune.

The same run (structure, seeded Maxwell-Boltzmann velocities, time step, steps) with each
model through :func:`eqv2calc.drivers.md.run_md` (what ``eqv2calc md --ensemble nve`` does);
the drift is the slope of a straight-line fit of the total energy against time, reported in
meV/atom/ps. EMT (exactly conservative) runs too, as the integrator's own baseline.

Usage (from the repository root)::

    python benchmarks/bench_nve_conservative.py --conservative runs/cons/best.pt
    python benchmarks/bench_nve_conservative.py --conservative best.pt --steps 4000 --json out.json

The structure: a 2×2×2 cubic fcc Cu cell with 4 random Au atoms (32 atoms), rattled by
0.05 Å (no model sees an exactly symmetric site), lattice constant 3.65 Å.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from ase.build import bulk


def structure(seed: int = 0):
    """32-atom Cu28Au4 fcc cell, rattled (Å)."""
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True) * (2, 2, 2)
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(atoms), size=4, replace=False):
        atoms[int(i)].symbol = "Au"
    atoms.rattle(0.05, seed=seed)
    return atoms


def run(label: str, calc, args) -> dict:
    from eqv2calc.drivers.md import run_md

    t0 = time.perf_counter()
    result = run_md(
        structure(args.seed),
        calc,
        ensemble="nve",
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        steps=args.steps,
        seed=args.seed,
        log_interval=args.log_interval,
    )
    seconds = time.perf_counter() - t0
    total = np.array(result.total_energies)
    n = len(result.atoms)
    row = {
        "model": label,
        "drift_meV_per_atom_per_ps": result.drift_mev_per_atom_per_ps,
        "total_energy_std_meV_per_atom": 1000.0 * float(total.std()) / n,
        "total_energy_change_meV_per_atom": 1000.0 * float(total[-1] - total[0]) / n,
        "mean_temperature_K": float(np.mean(result.temperatures)),
        "seconds": seconds,
    }
    print(
        f"{label:28s} drift {row['drift_meV_per_atom_per_ps']:+10.4f} meV/atom/ps   "
        f"E_tot std {row['total_energy_std_meV_per_atom']:.4f} meV/atom   "
        f"<T> {row['mean_temperature_K']:.0f} K   {seconds:.0f} s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--direct", default="demo", help="direct model (default: the first demo)")
    parser.add_argument("--conservative", help="gradient-forces checkpoint")
    parser.add_argument(
        "--runs",
        default="emt,direct,conservative",
        help="which runs, comma-separated (to split a long benchmark into several calls)",
    )
    parser.add_argument("--temperature", type=float, default=600.0, help="K")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--log-interval", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()

    import torch
    from ase.calculators.emt import EMT

    from eqv2calc.calculator import EquiformerV2Calculator

    torch.set_num_threads(args.threads)
    runs = args.runs.split(",")
    rows = {}
    if "emt" in runs:
        rows["emt"] = run("EMT (reference)", EMT(), args)
    if "direct" in runs:
        direct = EquiformerV2Calculator(args.direct, device="cpu", dtype=args.dtype)
        rows["direct"] = run(f"direct ({direct.forces_kind})", direct, args)
    if "conservative" in runs:
        if not args.conservative:
            parser.error("--conservative CHECKPOINT is needed for the conservative run")
        conservative = EquiformerV2Calculator(args.conservative, device="cpu", dtype=args.dtype)
        rows["conservative"] = run(f"fine-tune ({conservative.forces_kind})", conservative, args)
    ratio = None
    if "direct" in rows and "conservative" in rows:
        ratio = abs(rows["direct"]["drift_meV_per_atom_per_ps"]) / max(
            abs(rows["conservative"]["drift_meV_per_atom_per_ps"]), 1e-12
        )
        print(f"|drift direct| / |drift conservative| = {ratio:.0f}")
    if args.json:
        meta = {
            "settings": vars(args),
            "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
            "ratio": ratio,
        }
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": list(rows.values())}, handle, indent=2)


if __name__ == "__main__":
    main()
