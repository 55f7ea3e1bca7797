"""Phonons of metal bulks with eqv2calc models against phonopy driven by ASE's EMT.

For each cell (fcc Cu; L1₀ CuAu, both relaxed with EMT) and each model, ``run_phonons``
(``eqv2calc phonons``) gives the band structure along the standard path and the thermal
properties; the table compares them with EMT's: RMS and largest frequency deviation over all
band-path q-points (THz), the lowest frequency (negative = imaginary), and the vibrational free
energy at 300 K (kJ/mol). ``--model emt`` through the same driver must match exactly (gate).

Usage::

    python benchmarks/bench_phonons_emt.py --model runs/cons/best.pt [--model other.pt]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS


def relaxed(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = EMT()
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-5, steps=500)
    atoms.calc = None
    return atoms


def cells() -> dict[str, tuple[Atoms, tuple[int, int, int]]]:
    a0 = 3.75
    cuau = Atoms(
        "CuAu",
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]],
        cell=[a0 / np.sqrt(2), a0 / np.sqrt(2), a0],
        pbc=True,
    )
    return {
        "Cu fcc (3×3×3 primitive)": (relaxed(bulk("Cu", "fcc", a=3.6)), (3, 3, 3)),
        "CuAu L1₀ (3×3×2)": (relaxed(cuau), (3, 3, 2)),
    }


def compare(result, reference) -> dict:
    ours = np.concatenate(result.band_frequencies)
    ref = np.concatenate(reference.band_frequencies)
    i300 = int(np.argmin(abs(reference.thermal["temperatures"] - 300.0)))
    return {
        "rms_THz": float(np.sqrt(np.mean((ours - ref) ** 2))),
        "max_THz": float(np.abs(ours - ref).max()),
        "min_frequency_THz": result.min_frequency,
        "free_energy_300K_kJ_mol": float(result.thermal["free_energy"][i300]),
        "free_energy_300K_emt_kJ_mol": float(reference.thermal["free_energy"][i300]),
        "seconds_forces": result.seconds_forces,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="checkpoint (repeatable)")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from eqv2calc.calculator import EquiformerV2Calculator
    from eqv2calc.drivers.phonons import PhononSettings, run_phonons

    torch.set_num_threads(1)
    models = {
        "emt (gate)": EMT(),
        "first demo (direct)": "demo",
        "bundled default (conservative)": None,
        **{m: m for m in args.model},
    }
    rows = []
    for name, (atoms, supercell) in cells().items():
        settings = PhononSettings(supercell=supercell, mesh=(12, 12, 12))
        reference = run_phonons(atoms, EMT(), settings)
        for label, model in models.items():
            calc = (
                model
                if isinstance(model, EMT)
                else EquiformerV2Calculator(model, device="cpu", dtype=args.dtype)
            )
            t0 = time.perf_counter()
            row = {
                "cell": name,
                "model": label,
                **compare(run_phonons(atoms, calc, settings), reference),
            }
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(
                f"{name:26s} {label:34s} rms {row['rms_THz']:7.3f}  max {row['max_THz']:7.3f} THz"
                f"  min {row['min_frequency_THz']:8.3f} THz  F(300 K) "
                f"{row['free_energy_300K_kJ_mol']:8.3f} (EMT {row['free_energy_300K_emt_kJ_mol']:.3f})"
                f" kJ/mol",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
