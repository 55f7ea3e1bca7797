"""Mean absolute errors of a model against EMT labels, per structure category of the test set.

    python models/train_default/evaluate_categories.py \
        [--model eqv2calc/registry/models/eqv2calc-demo-emt.pt] [--data scratch/train_default/data/test.extxyz]

Prints energy MAE (meV/atom), force MAE (meV/Å, per component) and the mean |F| of the labels
for each ``category`` written by ``generate_data.py``, then the totals.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from ase.io import read

from eqv2calc.calculator import EquiformerV2Calculator

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "eqv2calc" / "registry" / "models" / "eqv2calc-demo-emt.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEMO))
    parser.add_argument(
        "--data",
        default=str(HERE.parent.parent / "scratch" / "train_default" / "data" / "test.extxyz"),
    )
    args = parser.parse_args()
    calc = EquiformerV2Calculator(model=args.model, device="cpu")
    frames = read(args.data, ":")
    errors: dict[str, dict[str, list]] = defaultdict(lambda: {"e": [], "f": [], "ref": []})
    for start in range(0, len(frames), 16):
        chunk = frames[start : start + 16]
        for atoms, pred in zip(chunk, calc.predict_batch(chunk)):
            group = errors[atoms.info.get("category", "all")]
            group["e"].append(abs(pred["energy"] - atoms.get_potential_energy()) / len(atoms))
            group["f"].extend(np.abs(pred["forces"] - atoms.get_forces()).ravel())
            group["ref"].extend(np.abs(atoms.get_forces()).ravel())
    print(f"{'category':10s} {'n':>5s} {'E meV/atom':>11s} {'F meV/Å':>9s} {'mean |F| eV/Å':>14s}")
    for name, g in [
        *sorted(errors.items()),
        ("total", {k: sum((v[k] for v in errors.values()), []) for k in ("e", "f", "ref")}),
    ]:
        print(
            f"{name:10s} {len(g['e']):5d} {np.mean(g['e']) * 1000:11.1f} {np.mean(g['f']) * 1000:9.1f} {np.mean(g['ref']):14.3f}"
        )


if __name__ == "__main__":
    main()
