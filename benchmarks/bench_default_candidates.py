"""Energy-and-forces call time of the bundled demo against the conservative default candidates.

Issue 17: a default must be fast on CPU. Times ``atoms.get_forces()`` (a fresh position each
call, so nothing is cached) on O at the hollow of a 2×2×3 Cu(100) slab (13 atoms, the check's
own system) and on a 3×3×3 Cu supercell (108 atoms), float32, one thread, the models
interleaved in rounds so that a slower moment of the machine hits them alike; reports medians
and the ratio to the demo measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_default_candidates.py \
        --model models/train_default/candidates/conservative-run6.pt --model default
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from ase.build import add_adsorbate, bulk, fcc100

from eqv2calc import EquiformerV2Calculator


def systems() -> dict:
    slab = fcc100("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.2, "hollow")
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    return {"O/Cu(100) 13 atoms": slab, "Cu 108 atoms": cell}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="candidate checkpoint(s)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="calls per model per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"demo": "demo", **{m: m for m in args.model}}
    calcs = {k: EquiformerV2Calculator(v, device="cpu", dtype="float32") for k, v in models.items()}
    rng = np.random.default_rng(0)
    for label, atoms in systems().items():
        times: dict[str, list[float]] = {k: [] for k in calcs}
        for calc in calcs.values():  # warm-up
            a = atoms.copy()
            a.calc = calc
            a.get_forces()
        for _ in range(args.rounds):
            for name, calc in calcs.items():
                a = atoms.copy()
                a.calc = calc
                for _ in range(args.calls):
                    a.positions += rng.normal(0, 1e-4, a.positions.shape)
                    t0 = time.perf_counter()
                    a.get_forces()
                    times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["demo"])
        print(f"\n{label}: median ms per energy+forces call (ratio to demo)")
        for name, t in times.items():
            med = statistics.median(t)
            print(f"  {name:60s} {1000 * med:8.1f} ms  {med / base:5.2f}x")


if __name__ == "__main__":
    main()
