"""Generate the EMT-labelled training data of the bundled demonstration model (seeded).

EMT (``ase.calculators.emt.EMT``) covers Al, Cu, Ag, Au, Ni, Pd, Pt and H, C, N, O. The
structures mimic what the demo model is used for (surface chemistry, relaxations, MD):

* ``bulk``: fcc cells of each metal, strained (±~4 %) and rattled;
* ``alloy``: random substitutional fcc alloys (Vegard lattice constant), strained, rattled;
* ``defect``: bulk cells with a vacancy and/or an interstitial H, C, N or O;
* ``slab``: clean (111), (100), (110) and (211) slabs, rattled;
* ``adsorbate``: atoms and small molecules (O, H, C, N, CO, OH, NO, NH, CH, H2O) at random
  positions on those slabs, rattled;
* ``relax``: frames of FIRE relaxations of adsorbates on slabs (bottom layer fixed);
* ``md``: Langevin MD snapshots (300–1200 K) of bulk cells and adsorbate-covered slabs;
* ``cluster``: rattled 13-atom metal clusters, some with an adsorbate.

Labels: energy (eV), forces (eV/Å, constraints NOT applied) and, for cells periodic along
all three axes, stress (eV/Å³, ASE sign convention). Structures whose largest force exceeds
``--max-force`` (close contacts) are dropped. Output: ``train.extxyz`` and an independent
``test.extxyz`` (another seed) in ``--out``, plus ``summary.json`` with counts.

Slabs carry ``surface`` (e.g. ``"Cu(100)"``) and ``adsorbate`` (e.g. ``"O"``) tags.
``--hold-out`` drops every structure (any category, any site, train and test) of the
adsorbate/surface pairs that ``check_physics.py`` measures (``physics_data.HELD_OUT``), so that
its barriers and modes are of systems the model was not trained on. ``--adsorbate-force-weight W``
writes per-atom ``force_weights`` (W on the H, C, N, O atoms of slabs with an adsorbate),
which ``eqv2calc train`` reads.

Usage::

    python models/train_default/generate_data.py --out scratch/train_default/data --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc110, fcc111, fcc211, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from ase.constraints import FixAtoms
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import FIRE
from ase.units import fs
from physics_data import HELD_OUT, physics_frames, surface_tag  # beside this script

METALS = ["Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"]
LIGHT = ["H", "C", "N", "O"]
ADSORBATES = ["O", "H", "C", "N", "CO", "OH", "NO", "NH", "CH", "H2O"]
FACETS = ["111", "100", "110", "211"]


def _label(atoms: Atoms, category: str) -> Atoms | None:
    """A copy of ``atoms`` with EMT energy/forces(/stress) attached, or None for outliers."""
    atoms = atoms.copy()
    atoms.set_constraint()
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces(apply_constraint=False)
    results = {"energy": energy, "forces": forces}
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress(voigt=True)
    out = atoms.copy()
    out.info.pop("adsorbate_info", None)
    out.calc = SinglePointCalculator(out, **results)
    out.info["category"] = category
    return out


def _strain(atoms: Atoms, rng: np.random.Generator, scale: float) -> None:
    eps = rng.normal(0.0, scale, (3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)


def _bulk_cell(metal: str, rng: np.random.Generator) -> Atoms:
    kind = rng.integers(3)
    if kind == 0:
        return bulk(metal, "fcc", cubic=True)  # 4 atoms
    if kind == 1:
        return bulk(metal, "fcc", cubic=True).repeat((2, 1, 1))  # 8 atoms
    return bulk(metal, "fcc").repeat((2, 2, 2))  # 8 atoms, primitive


def _slab(metal: str, facet: str, rng: np.random.Generator, layers: int | None = None) -> Atoms:
    layers = layers or int(rng.integers(3, 5))
    vacuum = 7.0
    if facet == "111":
        slab = fcc111(metal, (2, 2, layers), vacuum=vacuum)
    elif facet == "100":
        slab = fcc100(metal, (2, 2, layers), vacuum=vacuum)
    elif facet == "110":
        slab = fcc110(metal, (2, 2, layers), vacuum=vacuum)
    else:
        slab = fcc211(metal, (3, 2, 3), vacuum=vacuum)
    slab.info["surface"] = surface_tag(metal, facet)  # read by --hold-out
    return slab


def _adsorbate(name: str) -> Atoms:
    return Atoms(name) if name in LIGHT else molecule(name)


def _place(slab: Atoms, name: str, rng: np.random.Generator, height: tuple[float, float]) -> Atoms:
    slab = slab.copy()
    ads = _adsorbate(name)
    if len(ads) > 1:
        # mostly upright (binding atom first, pointing down), sometimes tilted
        ads.rotate(180 if name != "H2O" else 0, "x", center=ads[0].position)
        ads.rotate(float(rng.normal(0, 25)), "x", center=ads[0].position)
        ads.rotate(float(rng.uniform(0, 360)), "z", center=ads[0].position)
    frac = rng.uniform(0, 1, 2)
    xy = frac @ slab.cell.array[:2, :2]
    add_adsorbate(slab, ads, float(rng.uniform(*height)), position=tuple(xy), mol_index=0)
    slab.info["adsorbate"] = name
    return slab


def _fix_bottom(slab: Atoms) -> None:
    z = slab.positions[:, 2]
    metal = np.array([s in METALS for s in slab.get_chemical_symbols()])
    zmin = z[metal].min()
    slab.set_constraint(FixAtoms(mask=metal & (z < zmin + 0.5)))


def generate(
    seed: int,
    scale: float,
    physics: bool = False,
    eos_scale: int = 1,
    vib_scale: int = 1,
    alloy_hollows: int = 0,
    open_facets: int = 0,
    lateral_scans: int = 0,
) -> list[Atoms]:
    """All categories for one seed; ``scale`` multiplies every count.

    ``physics`` adds hops, vibrations and equations of state (``physics_data.py``, issue 17).
    """
    rng = np.random.default_rng(seed)
    out: list[Atoms] = []

    def n(count: int) -> int:
        return max(1, int(round(count * scale)))

    for metal in METALS:  # bulk
        for _ in range(n(14)):
            atoms = _bulk_cell(metal, rng)
            _strain(atoms, rng, 0.03)
            atoms.rattle(float(rng.uniform(0.0, 0.12)), seed=int(rng.integers(2**31)))
            out.append(_label(atoms, "bulk"))
    for _ in range(n(140)):  # alloys
        picks = rng.choice(METALS, size=int(rng.integers(2, 4)), replace=False)
        atoms = bulk("Cu", "fcc", cubic=True).repeat((2, 1, 1))
        symbols = rng.choice(picks, size=len(atoms))
        a = np.mean([bulk(s, "fcc").cell.cellpar()[0] * np.sqrt(2) for s in symbols])
        atoms.set_cell(np.eye(3) * [2 * a, a, a], scale_atoms=True)
        atoms.set_chemical_symbols(symbols)
        _strain(atoms, rng, 0.025)
        atoms.rattle(float(rng.uniform(0.02, 0.12)), seed=int(rng.integers(2**31)))
        out.append(_label(atoms, "alloy"))
    for _ in range(n(100)):  # defects
        metal = str(rng.choice(METALS))
        atoms = bulk(metal, "fcc", cubic=True).repeat((2, 1, 1))
        if rng.uniform() < 0.5:
            del atoms[int(rng.integers(len(atoms)))]
        if rng.uniform() < 0.7:
            a = atoms.cell.array[1, 1]
            site = (
                np.array([0.5 * a, 0.0, 0.0])
                if rng.uniform() < 0.5
                else np.array([0.25, 0.25, 0.25]) * a
            )
            atoms += Atoms(str(rng.choice(LIGHT)), positions=[site + rng.normal(0, 0.1, 3)])
        atoms.rattle(float(rng.uniform(0.02, 0.1)), seed=int(rng.integers(2**31)))
        out.append(_label(atoms, "defect"))
    for metal in METALS:  # clean slabs
        for facet in FACETS:
            for _ in range(n(4)):
                slab = _slab(metal, facet, rng)
                slab.rattle(float(rng.uniform(0.0, 0.12)), seed=int(rng.integers(2**31)))
                out.append(_label(slab, "slab"))
    for _ in range(n(600)):  # adsorbates at random places
        slab = _slab(str(rng.choice(METALS)), str(rng.choice(FACETS)), rng)
        slab = _place(slab, str(rng.choice(ADSORBATES)), rng, (0.9, 2.4))
        slab.rattle(float(rng.uniform(0.0, 0.1)), seed=int(rng.integers(2**31)))
        out.append(_label(slab, "adsorbate"))
    for i in range(n(45)):  # relaxation trajectories (Cu and Pt with O favoured)
        if i % 3 == 0:
            metal, name = str(rng.choice(["Cu", "Pt"])), "O"
        else:
            metal, name = str(rng.choice(METALS)), str(rng.choice(ADSORBATES))
        slab = _place(_slab(metal, str(rng.choice(FACETS)), rng, layers=3), name, rng, (1.2, 2.2))
        _fix_bottom(slab)
        slab.calc = EMT()
        frames: list[Atoms] = []
        opt = FIRE(slab, logfile=None)
        opt.attach(lambda slab=slab, frames=frames: frames.append(slab.copy()), interval=6)
        opt.run(fmax=0.03, steps=120)
        frames.append(slab.copy())
        for frame in frames:
            out.append(_label(frame, "relax"))
    for i in range(n(60)):  # MD snapshots
        if i % 2 == 0:
            atoms = _bulk_cell(str(rng.choice(METALS)), rng)
        else:
            atoms = _place(
                _slab(str(rng.choice(METALS)), str(rng.choice(FACETS[:3])), rng, layers=3),
                str(rng.choice(ADSORBATES)),
                rng,
                (1.3, 2.0),
            )
            _fix_bottom(atoms)
        temperature = float(rng.uniform(300, 1200))
        atoms.calc = EMT()
        thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
        dyn = Langevin(
            atoms, 2 * fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng
        )
        for _ in range(8):
            dyn.run(15)
            out.append(_label(atoms, "md"))
    for _ in range(n(60)):  # clusters
        metal = str(rng.choice(METALS))
        atoms = Icosahedron(metal, 2)
        atoms.center(vacuum=5.0)
        atoms.pbc = False
        if rng.uniform() < 0.5:
            top = atoms.positions[np.argmax(atoms.positions[:, 2])]
            atoms += Atoms(
                str(rng.choice(LIGHT)), positions=[top + [0, 0, float(rng.uniform(1.2, 2.0))]]
            )
        atoms.rattle(float(rng.uniform(0.02, 0.12)), seed=int(rng.integers(2**31)))
        out.append(_label(atoms, "cluster"))
    if physics:
        out += physics_frames(
            rng,
            n,
            _label,
            eos_scale=eos_scale,
            vib_scale=vib_scale,
            alloy_hollows=alloy_hollows,
            open_facets=open_facets,
            lateral_scans=lateral_scans,
        )
    return [a for a in out if a is not None]


def _held_out(atoms: Atoms, systems: list[tuple[str, str, str]]) -> bool:
    """Whether ``atoms`` is one of ``systems`` ((metal, facet, adsorbate)): that adsorbate on
    that surface anywhere (any site, any category), from the ``surface``/``adsorbate`` tags."""
    key = (atoms.info.get("surface"), atoms.info.get("adsorbate"))
    return any(key == (surface_tag(m, f), a) for m, f, a in systems)


def _set_adsorbate_weights(frames: list[Atoms], weight: float) -> None:
    """Per-atom ``force_weights`` (read by eqv2calc train): ``weight`` on H, C, N, O atoms of
    slabs with an adsorbate, 1 elsewhere."""
    for atoms in frames:
        w = np.ones(len(atoms))
        if "adsorbate" in atoms.info:
            w[[s in LIGHT for s in atoms.get_chemical_symbols()]] = weight
        atoms.arrays["force_weights"] = w


def _drop_outliers(frames: list[Atoms], max_force: float) -> list[Atoms]:
    return [a for a in frames if np.abs(a.get_forces()).max() <= max_force]


def _write(frames: list[Atoms], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="scratch/train_default/data", help="output folder")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the training set (test: seed + 1000)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every structure count")
    parser.add_argument(
        "--test-scale", type=float, default=0.25, help="size of the test set relative to scale 1"
    )
    parser.add_argument(
        "--max-force",
        type=float,
        default=20.0,
        help="drop structures with any |F_i,a| above this (eV/Å)",
    )
    parser.add_argument(
        "--physics",
        action="store_true",
        help="add hops (NEB images), vibrations and equations of state (physics_data.py)",
    )
    parser.add_argument(
        "--eos-scale",
        type=int,
        default=1,
        help="with --physics: multiplies the equation-of-state cells and, above 1, adds strained "
        "ordered alloys (physics_data.strain_frames)",
    )
    parser.add_argument(
        "--vib-scale",
        type=int,
        default=1,
        help="with --physics: above 1, adds (N-1)×40 adsorbate minima with 0.03–0.15 Å "
        "displacements (physics_data.wide_vibration_frames)",
    )
    parser.add_argument(
        "--alloy-hollows",
        type=int,
        default=0,
        help="with --physics: adds this many adsorbate minima at mixed hollows (top layer partly "
        "of a second metal) with 0.03–0.2 Å mostly lateral displacements "
        "(physics_data.alloy_hollow_frames)",
    )
    parser.add_argument(
        "--open-facets",
        type=int,
        default=0,
        help="with --physics: adds this many adsorbate minima on (110) and stepped (211) slabs "
        "with 0.03–0.2 Å mostly lateral displacements (physics_data.open_facet_frames)",
    )
    parser.add_argument(
        "--lateral-scans",
        type=int,
        default=0,
        help="with --physics: adds this many adsorbates held at random lateral points of "
        "(100)/(111) slabs (height relaxed), each with one 0.03–0.15 Å displacement; half of "
        "them H (physics_data.lateral_scan_frames)",
    )
    parser.add_argument(
        "--hold-out",
        action="store_true",
        help="leave out every structure with an adsorbate/surface pair of check_physics.py's "
        "held-out hops ("
        + ", ".join(f"{a}/{surface_tag(m, f)}" for m, f, a in HELD_OUT)
        + "), from train and test",
    )
    parser.add_argument(
        "--adsorbate-force-weight",
        type=float,
        default=None,
        help="write per-atom force_weights: this weight on the adsorbate atoms (H, C, N, O) of "
        "slabs, 1 on the others (default: no weights written)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "seed": args.seed,
        "scale": args.scale,
        "test_scale": args.test_scale,
        "max_force": args.max_force,
        "physics": args.physics,
        "eos_scale": args.eos_scale,
        "vib_scale": args.vib_scale,
        "alloy_hollows": args.alloy_hollows,
        "open_facets": args.open_facets,
        "lateral_scans": args.lateral_scans,
        "hold_out": args.hold_out,
        "adsorbate_force_weight": args.adsorbate_force_weight,
    }
    for name, seed, scale in (
        ("train", args.seed, args.scale),
        ("test", args.seed + 1000, args.test_scale),
    ):
        t0 = time.time()
        frames = _drop_outliers(
            generate(
                seed,
                scale,
                physics=args.physics,
                eos_scale=args.eos_scale,
                vib_scale=args.vib_scale,
                alloy_hollows=args.alloy_hollows,
                open_facets=args.open_facets,
                lateral_scans=args.lateral_scans,
            ),
            args.max_force,
        )
        if args.hold_out:
            frames = [a for a in frames if not _held_out(a, HELD_OUT)]
        if args.adsorbate_force_weight is not None:
            _set_adsorbate_weights(frames, args.adsorbate_force_weight)
        _write(frames, out / f"{name}.extxyz")
        summary[name] = {
            "structures": len(frames),
            "atoms": int(sum(len(a) for a in frames)),
            "categories": dict(Counter(a.info["category"] for a in frames)),
            "seconds": round(time.time() - t0, 1),
        }
        print(name, json.dumps(summary[name]), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
