"""How much a model's energy and forces change when the structure is rotated.

EquiformerV2's S2 activations apply a point-wise non-linearity on a grid over the sphere; on a
coarse grid that is only approximately rotation-equivariant. This rotates a rattled Cu32 cell
and O on a Cu(100) slab by random rotations and reports the largest energy change (meV) and the
rms change of the rotated forces (meV/Å), float64. ``--grid N`` also evaluates the same weights
on an N × N grid (an edited copy of the checkpoint in a temporary folder).

    python models/train_default/check_rotations.py --model default --grid 14 --grid 18
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from ase.build import add_adsorbate, bulk, fcc100
from scipy.spatial.transform import Rotation

from eqv2calc import EquiformerV2Calculator
from eqv2calc.registry import resolve_model


def structures() -> dict:
    cell = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    cell.rattle(0.1, seed=1)
    slab = fcc100("Cu", (2, 2, 3), vacuum=8.0)
    add_adsorbate(slab, "O", 1.2, "hollow")
    slab.rattle(0.05, seed=2)
    return {"rattled Cu32": cell, "O/Cu(100) 13 atoms": slab}


def rotation_changes(calc, atoms, rotations: int = 5) -> tuple[float, float]:
    """(max |ΔE| in meV, rms |ΔF| in meV/Å) over ``rotations`` random rotations."""
    matrices = [Rotation.random(random_state=10 + k).as_matrix() for k in range(rotations)]
    frames = [atoms]
    for r in matrices:
        turned = atoms.copy()
        turned.set_cell(atoms.cell.array @ r.T, scale_atoms=True)
        frames.append(turned)
    ref, *rest = calc.predict_batch(frames)
    de = max(abs(res["energy"] - ref["energy"]) for res in rest)
    df = [np.mean((ref["forces"] @ r.T - res["forces"]) ** 2) for r, res in zip(matrices, rest)]
    return 1000 * de, 1000 * float(np.sqrt(np.mean(df)))


def on_grid(path: Path, resolution: int, folder: Path) -> Path:
    """A copy of the checkpoint at ``path`` whose S² grids are ``resolution`` × ``resolution``."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    model = data["config"]["model"]
    (model.get("backbone") or model)["grid_resolution"] = resolution
    out = folder / f"{path.stem}_grid{resolution}.pt"
    torch.save(data, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="checkpoint or name")
    parser.add_argument("--grid", action="append", type=int, default=[], help="also on N × N")
    parser.add_argument("--rotations", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name in args.model or ["default"]:
            path = resolve_model(name)
            models[name] = path
            for res in args.grid:
                models[f"{name} on {res}x{res}"] = on_grid(path, res, Path(tmp))
        for label, path in models.items():
            calc = EquiformerV2Calculator(str(path), device="cpu", dtype="float64")
            for system, atoms in structures().items():
                de, df = rotation_changes(calc, atoms, args.rotations)
                print(f"{label:30s} {system:20s} max|dE| {de:7.3f} meV  rms|dF| {df:6.2f} meV/Å")


if __name__ == "__main__":
    main()
