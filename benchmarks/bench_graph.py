"""Benchmark eqv2calc.graph.build_graph on periodic Cu fcc supercells.

Times build_graph (cutoff 12 Å, max_neighbors 20, strict and non-strict) on rattled
supercells of about 100, 1,000 and 3,000 atoms, plus the strict cap on the perfect
(unrattled) crystal, where every atom's 20-neighbour cut falls inside a tied shell.
As a baseline measured in the same run, the table gives the bare candidate search
(pymatgen's ``find_points_in_spheres`` on the same cell and radius, no cap, no
distance recomputation, no sorting) and our time relative to it, i.e. what the cap,
the checks and the ordering cost on top of the search.

Usage::

    python benchmarks/bench_graph.py [--repeats 3] [--sizes 3 6 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from pymatgen.optimization.neighbors import find_points_in_spheres

from eqv2calc.graph import build_graph

CUTOFF_A = 12.0
MAX_NEIGHBORS = 20


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time (ms) over `repeats` calls after one warm-up call."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def run(sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for rep in sizes:
        base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
        rattled = base.copy()
        rattled.rattle(0.05, seed=0)
        pos0 = np.ascontiguousarray(rattled.positions)
        lattice = np.ascontiguousarray(rattled.cell.array)
        search_ms, search = _timed(
            lambda p=pos0, lat=lattice: find_points_in_spheres(
                p, p, r=CUTOFF_A, pbc=np.ones(3, dtype=np.int64), lattice=lat
            ),
            repeats,
        )
        cases = [
            ("rattled", "strict", rattled, True),
            ("rattled", "non-strict", rattled, False),
            ("perfect", "strict", base, True),
        ]
        for label, mode, atoms, strict in cases:
            pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
            ms, g = _timed(
                lambda p=pos, c=cell, b=pbc, s=strict: build_graph(
                    p, c, b, cutoff=CUTOFF_A, max_neighbors=MAX_NEIGHBORS, strict=s
                ),
                repeats,
            )
            rows.append(
                {
                    "atoms": len(atoms),
                    "structure": label,
                    "mode": mode,
                    "edges": g.num_edges,
                    "ms": round(ms, 2),
                    "candidate_pairs": int(len(search[0])),
                    "search_only_ms": round(search_ms, 2),
                    "ratio_vs_search": round(ms / search_ms, 2),
                }
            )
            r = rows[-1]
            print(
                f"{r['atoms']:>6} {label:>8} {mode:>10} {r['edges']:>8} {r['ms']:>9.1f}"
                f" {r['candidate_pairs']:>10} {r['search_only_ms']:>9.1f}"
                f" {r['ratio_vs_search']:>7.2f}",
                flush=True,
            )
    return rows


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[3, 6, 9],
        help="supercell repeats of the 4-atom cubic cell (3, 6, 9 give 108, 864, 2916 atoms)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()

    print(f"cutoff {CUTOFF_A} Å, max_neighbors {MAX_NEIGHBORS}; times are medians in ms")
    print(
        f"{'atoms':>6} {'cell':>8} {'mode':>10} {'edges':>8} {'ms':>9}"
        f" {'cand.':>10} {'search_ms':>9} {'ratio':>7}"
    )
    rows = run(args.sizes, args.repeats)
    if args.json is not None:
        _write_json_atomic(
            args.json,
            {
                "benchmark": "build_graph",
                "cutoff_A": CUTOFF_A,
                "max_neighbors": MAX_NEIGHBORS,
                "machine": platform.platform(),
                "numpy": np.__version__,
                "rows": rows,
            },
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
