#!/usr/bin/env python
"""AdsorbML success rate against a dense reference, with ASE's EMT standing in for DFT.

For every system (slab + atomic adsorbate) this script

1. generates the AdsorbML placements (heuristic sites + random sites, fixed seed);
2. builds the *dense reference*: every placement relaxed with EMT ("DFT"), anomalies removed
   (relative to the EMT-relaxed clean slab); the dense minimum is the lowest valid energy;
3. runs the AdsorbML pipeline (:func:`eqv2calc.adsorbml.run_adsorbml`) with the candidate
   calculator as the ML model on the same placements and hands its top 5 to EMT, in single-point
   (SP) and relaxation (RX) mode;
4. scores success@k (k = 1..5): the best valid EMT energy among the candidate's top k is at most
   the dense minimum + 0.1 eV (and, stricter, + 0.02 eV) — one-sided, as in AdsorbML;
5. counts reference calls: SP = 1 per configuration, RX = ionic steps (optimizer steps + 1);
   dense = ionic steps of relaxing every placement; reduction = dense / AdsorbML.

The random-pick baseline is 1 - (1 - p)^k with p the fraction of placements whose dense
relaxation is valid and within the tolerance of the dense minimum (picking k placements at
random and relaxing them with the reference method).

With EMT itself as the candidate the ML relaxations are the dense relaxations, so success must be
~100 %: a correctness gate for placement, filtering, deduplication, ranking and hand-off.
``--candidate PATH_OR_NAME`` evaluates an EquiformerV2 checkpoint (or ``bundled``) instead.

Usage::

    python benchmarks/adsorbml_emt_dense.py --quick            # ~2 min on 2 cores
    python benchmarks/adsorbml_emt_dense.py --candidate eq2_small_oc20_classic.pt
    python benchmarks/adsorbml_emt_dense.py                    # full set (long)

Energies in eV, lengths in Å.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import fcc100, fcc110, fcc211
from ase.calculators.emt import EMT
from ase.data import atomic_numbers, reference_states

from eqv2calc.adsorbml import AdsorbMLConfig, get_adsorbate, run_adsorbml
from eqv2calc.adsorbml.anomalies import detect_anomalies
from eqv2calc.adsorbml.slabs import SlabSystem, prepare_slab
from eqv2calc.adsorbml.store import ResultStore
from eqv2calc.drivers import relax_batch

KS = (1, 2, 3, 4, 5)
TOLS = (0.1, 0.02)
FACETS = {"100": fcc100, "110": fcc110, "211": fcc211}


def lattice_constant(symbol: str) -> float:
    return float(reference_states[atomic_numbers[symbol]]["a"])


def build_slab(
    metals: str, facet: str, size: tuple[int, int, int], vacuum: float = 7.0
) -> SlabSystem:
    """fcc slab of one metal, or an ordered 50/50 binary (alternating atoms within each layer)
    with the mean lattice constant."""
    parts = [
        metals[i : i + 2] if metals[i + 1 : i + 2].islower() else metals[i]
        for i in range(len(metals))
        if metals[i].isupper()
    ]
    a = float(np.mean([lattice_constant(p) for p in parts]))
    slab = FACETS[facet](parts[0], size=size, a=a, vacuum=vacuum)
    if len(parts) == 2:
        # checkerboard within each layer: alternate by (row + column) parity of in-plane position
        frac = slab.get_scaled_positions()
        na, nb = size[0], size[1]
        ia = np.floor(frac[:, 0] * na + 1e-6).astype(int)
        ib = np.floor(frac[:, 1] * nb + 1e-6).astype(int)
        layer = slab.get_tags()
        symbols = np.array(slab.get_chemical_symbols(), dtype=object)
        symbols[(ia + ib + layer) % 2 == 1] = parts[1]
        slab.set_chemical_symbols(list(symbols))
    slab.set_tags(0)
    slab.info.pop("adsorbate_info", None)
    return prepare_slab(slab, f"{metals}{facet}")


@dataclass
class Case:
    metals: str
    facet: str
    adsorbate: str
    size: tuple[int, int, int]


def cases(quick: bool) -> list[Case]:
    if quick:
        return [
            Case("Cu", "100", "O", (2, 2, 3)),
            Case("Pt", "211", "O", (3, 2, 3)),
            Case("Cu", "211", "H", (3, 2, 3)),
            Case("Ni", "110", "N", (2, 2, 4)),
            Case("CuPd", "100", "C", (2, 2, 3)),
        ]
    out = []
    sizes = {"100": (3, 3, 4), "110": (3, 2, 4), "211": (3, 2, 4)}
    metals = ["Cu", "Pt", "Pd", "Ni", "Ag", "Au", "CuPt", "PdAg", "NiAu"]
    ads = ["O", "N", "C", "H"]
    i = 0
    for m in metals:
        for f in ("211", "100", "110"):
            out.append(Case(m, f, ads[i % 4], sizes[f]))
            i += 1
    return out


def make_candidate(name: str):
    if name.lower() == "emt":
        return EMT()
    from eqv2calc.calculator import EquiformerV2Calculator

    return EquiformerV2Calculator(model=None if name.lower() in ("bundled", "default") else name)


def dense_reference(system: SlabSystem, placements: dict[int, Atoms], cfg: AdsorbMLConfig) -> dict:
    """Relax every placement with EMT; return energies, validity and ionic steps."""
    emt = EMT()
    kw = {"optimizer": cfg.optimizer, "fmax": cfg.fmax, "steps": cfg.steps, "progress": False}
    slab_res = relax_batch([system.atoms], emt, **kw)[0]
    pids = sorted(placements)
    results = relax_batch([placements[p] for p in pids], emt, **kw)
    energies, valid, calls = {}, {}, {}
    for pid, res in zip(pids, results):
        calls[pid] = res.steps + 1
        if res.error:
            energies[pid], valid[pid] = math.nan, False
            continue
        rep = detect_anomalies(placements[pid], res.atoms, slab_res.atoms)
        energies[pid] = float(res.final_energy)
        valid[pid] = not rep.is_anomalous
    good = [energies[p] for p in pids if valid[p]]
    return {
        "energies": energies,
        "valid": valid,
        "calls": int(sum(calls.values())),
        "min": min(good) if good else math.nan,
        "n": len(pids),
    }


def score(outcome, dense: dict, tol: float) -> dict[int, bool]:
    """success@k for one pipeline outcome (one reference mode)."""
    out = {}
    for k in KS:
        es = [d.energy for d in outcome.dft if d.rank <= k and d.valid]
        out[k] = bool(es) and min(es) <= dense["min"] + tol + 1e-9
    return out


def run(args: argparse.Namespace) -> int:
    cand = make_candidate(args.candidate)
    cfg = AdsorbMLConfig(
        num_random=args.num_random,
        seed=args.seed,
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        top_k=max(KS),
        dft_fmax=args.fmax,
        dft_steps=args.steps,
        dft_optimizer=args.optimizer,
        progress=False,
    )
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="adsorbml_bench_"))
    rows = []
    t0 = time.perf_counter()
    for case in cases(args.quick):
        t_case = time.perf_counter()
        system = build_slab(case.metals, case.facet, case.size)
        ads = get_adsorbate(case.adsorbate)
        out = work / f"{system.name}_{case.adsorbate}"
        per_mode = {}
        for mode in ("sp", "rx"):
            cfg.dft_mode = mode
            (outcome,) = run_adsorbml(
                system,
                ads,
                cand,
                out,
                cfg,
                dft_calculator=EMT(),
                dft_label="emt",
                write_outputs=False,
            )
            per_mode[mode] = outcome
        store = ResultStore(out / "adsorbml.db")
        placements = {int(r.pid): r.toatoms() for r in store.all("placement", system.name)}
        dense = dense_reference(system, placements, cfg)
        if not math.isfinite(dense["min"]):
            print(
                f"{system.name}+{case.adsorbate}: no valid dense configuration; skipped",
                file=sys.stderr,
            )
            continue
        row = {
            "system": f"{system.name}+{case.adsorbate}",
            "n_placements": dense["n"],
            "dense_min_eV": dense["min"],
            "dense_calls": dense["calls"],
        }
        for tol in TOLS:
            within = sum(
                1
                for p in dense["energies"]
                if dense["valid"][p] and dense["energies"][p] <= dense["min"] + tol
            )
            p_hit = within / dense["n"]
            row[f"p_{tol}"] = p_hit
            row[f"random_{tol}"] = {k: 1.0 - (1.0 - p_hit) ** k for k in KS}
            for mode, outcome in per_mode.items():
                row[f"{mode}_{tol}"] = score(outcome, dense, tol)
        for mode, outcome in per_mode.items():
            row[f"{mode}_calls"] = {
                k: int(sum(d.calls for d in outcome.dft if d.rank <= k)) for k in KS
            }
            row[f"{mode}_best"] = min((d.energy for d in outcome.dft if d.valid), default=math.nan)
        row["ml_valid"] = sum(1 for r in per_mode["sp"].ml if r.valid)
        row["ml_unique"] = len(per_mode["sp"].ranked)
        row["seconds"] = time.perf_counter() - t_case
        rows.append(row)
        print(
            f"{row['system']:<16} placements {row['n_placements']:>3}  dense min {row['dense_min_eV']:9.4f} eV  "
            f"SP best {row['sp_best']:9.4f}  RX best {row['rx_best']:9.4f}  "
            f"unique {row['ml_unique']:>2}  ({row['seconds']:.1f} s)",
            flush=True,
        )
    if not rows:
        print("no system could be scored", file=sys.stderr)
        return 1
    table = format_table(rows, args.candidate, time.perf_counter() - t0, args)
    print()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    gate_ok = True
    if args.candidate.lower() == "emt":
        sp = np.mean([r["sp_0.1"][5] for r in rows])
        rx = np.mean([r["rx_0.1"][5] for r in rows])
        gate_ok = sp >= 0.99 and rx >= 0.99
        print(
            f"\ncorrectness gate (EMT candidate, success@5 within 0.1 eV ~ 100 %): "
            f"SP {sp:.0%}, RX {rx:.0%} -> {'PASS' if gate_ok else 'FAIL'}"
        )
    return 0 if gate_ok else 2


def format_table(rows: list[dict], candidate: str, seconds: float, args: argparse.Namespace) -> str:
    n = len(rows)
    lines = [
        f"AdsorbML vs dense EMT reference: candidate = {candidate}, {n} systems, "
        f"{'quick' if args.quick else 'full'} set, {args.num_random} random sites + heuristic, "
        f"{args.optimizer} fmax {args.fmax} eV/Å, {seconds:.0f} s",
        "",
    ]
    for tol in TOLS:
        lines.append(f"success@k (best of top k <= dense min + {tol} eV), mean over systems")
        lines.append(
            "| k | AdsorbML SP | AdsorbML RX | random pick 1-(1-p)^k | SP calls | RX calls | dense calls | reduction SP | reduction RX |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        dense_calls = np.mean([r["dense_calls"] for r in rows])
        for k in KS:
            sp = np.mean([r[f"sp_{tol}"][k] for r in rows])
            rx = np.mean([r[f"rx_{tol}"][k] for r in rows])
            rnd = np.mean([r[f"random_{tol}"][k] for r in rows])
            spc = np.mean([r["sp_calls"][k] for r in rows])
            rxc = np.mean([r["rx_calls"][k] for r in rows])
            lines.append(
                f"| {k} | {sp:.0%} | {rx:.0%} | {rnd:.0%} | {spc:.1f} | {rxc:.1f} | {dense_calls:.0f} | "
                f"{dense_calls / spc:.0f}x | {dense_calls / rxc:.1f}x |"
            )
        lines.append("")
    lines.append("per system")
    lines.append(
        "| system | placements | valid/unique (ML) | dense min (eV) | SP best (eV) | RX best (eV) | p(0.1) | dense calls | RX calls (k=5) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['n_placements']} | {r['ml_valid']}/{r['ml_unique']} | {r['dense_min_eV']:.4f} | "
            f"{r['sp_best']:.4f} | {r['rx_best']:.4f} | {r['p_0.1']:.2f} | {r['dense_calls']} | {r['rx_calls'][5]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="5 small systems, 12 random sites (a couple of minutes)",
    )
    p.add_argument(
        "--candidate",
        default="emt",
        help="emt (correctness gate), bundled, or a checkpoint path/registry name",
    )
    p.add_argument(
        "--num-random",
        type=int,
        default=None,
        help="random sites per system (default 12 quick, 40 full)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", default="LBFGS")
    p.add_argument("--fmax", type=float, default=None, help="eV/Å (default 0.05 quick, 0.02 full)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workdir", default=None, help="keep the AdsorbML databases here (resumable)")
    p.add_argument("--json", default=None, help="write per-system results as JSON")
    p.add_argument("--markdown", default=None, help="write the table to this file")
    args = p.parse_args(argv)
    if args.num_random is None:
        args.num_random = 12 if args.quick else 40
    if args.fmax is None:
        args.fmax = 0.05 if args.quick else 0.02
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
