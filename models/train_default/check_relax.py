"""Relax O on Cu and Pt slabs with the demo model and with EMT itself, and compare geometries.

For each case the same starting structure (O 2 Å above a hollow/top site, bottom layer fixed)
is relaxed with FIRE (fmax 0.05 eV/Å) by EMT and by the model; printed: O height above the
top layer (Å), shortest O–metal distance (Å), the largest atom displacement between the two
relaxed structures (Å), and the model's energy/force error at the EMT minimum.

    python models/train_default/check_relax.py [--model eqv2calc/registry/models/eqv2calc-demo-emt.pt]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase.build import add_adsorbate, fcc100, fcc111, fcc211
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import FIRE

from eqv2calc.calculator import EquiformerV2Calculator

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "eqv2calc" / "registry" / "models" / "eqv2calc-demo-emt.pt"


def _case(metal: str, facet: str, site: str):
    if facet == "111":
        slab = fcc111(metal, (3, 3, 4), vacuum=8.0)
        add_adsorbate(slab, "O", 2.0, site)
    elif facet == "100":
        slab = fcc100(metal, (3, 3, 4), vacuum=8.0)
        add_adsorbate(slab, "O", 2.0, site)
    else:
        slab = fcc211(metal, (3, 3, 3), vacuum=8.0)
        top = slab.positions[np.argmax(slab.positions[:, 2])]
        add_adsorbate(slab, "O", 2.0, position=(top[0] + 0.8, top[1]))
    z = slab.positions[:, 2]
    slab.set_constraint(FixAtoms(mask=(z < z[:-1].min() + 0.5)))
    return slab


def _relax(atoms, calc, fmax: float = 0.05, steps: int = 400):
    atoms = atoms.copy()
    atoms.calc = calc
    opt = FIRE(atoms, logfile=None)
    converged = opt.run(fmax=fmax, steps=steps)
    return atoms, bool(converged), opt.nsteps


def _geometry(atoms) -> dict:
    o = len(atoms) - 1
    metal = np.arange(o)
    top = atoms.positions[metal, 2].max()
    d = atoms.get_distances(o, metal, mic=True)
    return {"o_height": float(atoms.positions[o, 2] - top), "o_metal_min": float(d.min())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEMO))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    model = EquiformerV2Calculator(model=args.model, device="cpu")
    rows = []
    for metal, facet, site in (
        ("Cu", "111", "fcc"),
        ("Pt", "111", "fcc"),
        ("Cu", "100", "hollow"),
        ("Pt", "100", "hollow"),
        ("Pt", "111", "ontop"),
        ("Cu", "211", "step"),
    ):
        start = _case(metal, facet, site)
        ref, ref_ok, ref_steps = _relax(start, EMT())
        ml, ml_ok, ml_steps = _relax(start, model)
        at_ref = ref.copy()
        at_ref.calc = model
        emt_f = ref.get_forces()
        row = {
            "case": f"O/{metal}({facet}) {site}",
            "emt": {**_geometry(ref), "converged": ref_ok, "steps": ref_steps},
            "model": {**_geometry(ml), "converged": ml_ok, "steps": ml_steps},
            "max_displacement_between_minima": float(
                np.linalg.norm(ml.positions - ref.positions, axis=1).max()
            ),
            "model_force_error_at_emt_minimum": float(np.abs(at_ref.get_forces() - emt_f).max()),
        }
        rows.append(row)
        print(
            f"{row['case']:24s} O height EMT {row['emt']['o_height']:.3f} model {row['model']['o_height']:.3f} Å | "
            f"O–M EMT {row['emt']['o_metal_min']:.3f} model {row['model']['o_metal_min']:.3f} Å | "
            f"max Δpos {row['max_displacement_between_minima']:.3f} Å | "
            f"converged {row['model']['converged']} ({row['model']['steps']} steps)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
