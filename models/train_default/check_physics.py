"""Check a model against EMT where curvature matters: hops (NEB), vibrations, EOS, NVE drift.

What a new user computes first, measured the way an ASE user would, with the model and with
EMT (what the bundled model imitates) on the same structures:

* **NEB barriers** of adsorbate hops between neighbouring hollow sites (ASE's NEB, 3 images,
  FIRE, 2×2×3 slabs with the bottom layer fixed; end points relaxed with each calculator);
* **vibrational modes** of the adsorbate at its hollow site (ASE's Vibrations, adsorbate atoms
  only, δ = 0.01 Å), meV;
* **bulk moduli** from an equation-of-state fit (ASE's EquationOfState, ±6 % volume, 9 points)
  of each fcc metal, GPa;
* **NVE drift** of a 32-atom alloy cell at 600 K (meV/atom/ps);
* optionally energy and force **MAE** on a held-out extxyz (``--test``).

Bounds (issue 17): barriers within 0.03 eV or 20 %, modes within 15 %, bulk moduli within 10 %.
``--systems held-out`` measures the hops and modes of four adsorbate/surface pairs
(``physics_data.HELD_OUT``: O/Ag(100), H/Ni(111), N/Pd(100), O/Cu(100)); data generated with
``generate_data.py --hold-out`` contains no structure of these pairs, so the model has seen each
metal, facet and adsorbate but never that adsorbate on that surface. The equations of state are
of all seven EMT metals, which every model must be trained on (an element absent from training
has no learned embedding); the fitted cells (±6 % in volume, 9 points, unsheared,
unrattled) are not among the training cells, which all carry a random shear.
``--systems issue`` reproduces the issue's O/Cu(100) table. ``--systems seen-h111`` measures H at
the (111) hollows of the six other metals: pairs the model *is* trained on, so a fit diagnostic
(run 9 got their lateral modes 9–100 % off, which is why the tenth run adds lateral scans).

Usage (repository root)::

    python models/train_default/check_physics.py                      # the bundled model
    python models/train_default/check_physics.py --model runs/cons/best.pt --json report.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.eos import EquationOfState
from ase.mep import NEB
from ase.optimize import BFGS, FIRE
from ase.units import GPa
from ase.vibrations import Vibrations
from physics_data import HELD_OUT  # beside this script

METALS = ["Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"]
#: (metal, facet, adsorbate): hops between neighbouring hollow sites
HOPS = {
    "issue": [("Cu", "100", "O")],
    "held-out": HELD_OUT,  # generate_data.py --hold-out trains on no structure of these pairs
    "seen-h111": [(m, "111", "H") for m in METALS if m != "Ni"],  # trained pairs: fit, not a bound
}
BOUNDS = {"barrier_abs_eV": 0.03, "barrier_rel": 0.20, "mode_rel": 0.15, "bulk_modulus_rel": 0.10}


def _slab(metal: str, facet: str) -> Atoms:
    slab = (fcc100 if facet == "100" else fcc111)(metal, (2, 2, 3), vacuum=7.0)
    z = slab.positions[:, 2]
    slab.set_constraint(FixAtoms(mask=z < z.min() + 0.5))
    return slab


def hop_endpoints(metal: str, facet: str, adsorbate: str) -> tuple[Atoms, Atoms]:
    """Adsorbate at a hollow site and at the neighbouring hollow along x (unrelaxed)."""
    slab = _slab(metal, facet)
    a = slab.cell[0, 0] / 2  # surface lattice spacing along x
    site = "hollow" if facet == "100" else "fcc"
    initial = slab.copy()
    add_adsorbate(initial, adsorbate, 1.2, site)
    final = initial.copy()
    if facet == "100":
        final.positions[-1, 0] += a
    else:  # fcc → hcp hollow: a/2 along x and a/(2√3) along y
        final.positions[-1, :2] += [a / 2, a / (2 * np.sqrt(3))]
    return initial, final


def _relax(atoms: Atoms, calc, fmax: float = 0.01) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=300)
    return atoms


def neb_barrier(calc_factory, metal: str, facet: str, adsorbate: str, images: int = 3) -> float:
    """Forward barrier (eV) of the hop with ``images`` intermediate images."""
    initial, final = hop_endpoints(metal, facet, adsorbate)
    initial = _relax(initial, calc_factory())
    final = _relax(final, calc_factory())
    path = [initial] + [initial.copy() for _ in range(images)] + [final]
    for image in path[1:-1]:
        image.calc = calc_factory()
    neb = NEB(path, climb=True, allow_shared_calculator=False, method="improvedtangent")
    neb.interpolate(method="idpp")
    FIRE(neb, logfile=None).run(fmax=0.03, steps=400)
    energies = [image.get_potential_energy() for image in path]
    return float(max(energies) - energies[0])


def hollow_modes(calc, metal: str, facet: str, adsorbate: str) -> list[float]:
    """Vibrational energies (meV) of the adsorbate at the hollow site, lowest first."""
    initial, _ = hop_endpoints(metal, facet, adsorbate)
    atoms = _relax(initial, calc, fmax=0.005)
    metal_mask = np.array([s == metal for s in atoms.get_chemical_symbols()])
    with tempfile.TemporaryDirectory() as folder:  # its own cache: checks may run side by side
        vib = Vibrations(atoms, indices=np.flatnonzero(~metal_mask), delta=0.01, name=folder)
        vib.run()
        energies = np.real(vib.get_energies()) * 1000.0
    return sorted(float(e) for e in energies)


def bulk_modulus(calc, metal: str) -> float:
    """B (GPa) from a fit over ±6 % volume around EMT's lattice constant."""
    atoms = bulk(metal, "fcc", cubic=True)
    volumes, energies = [], []
    for s in np.linspace(0.98, 1.02, 9):  # linear scale ±2 % = volume ±6 %
        scaled = atoms.copy()
        scaled.set_cell(atoms.cell * s, scale_atoms=True)
        scaled.rattle(1e-4, seed=0)  # off the exactly symmetric point (see models/README.md)
        scaled.calc = calc
        volumes.append(scaled.get_volume())
        energies.append(scaled.get_potential_energy())
    _, _, b = EquationOfState(volumes, energies).fit()
    return float(b / GPa)


def nve_drift(calc, steps: int = 1000) -> float:
    """meV/atom/ps of a 32-atom Cu28Au4 cell at 600 K, 1 fs steps (eqv2calc's MD driver)."""
    from eqv2calc.drivers.md import run_md

    atoms = bulk("Cu", "fcc", a=3.65, cubic=True) * (2, 2, 2)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(atoms), size=4, replace=False):
        atoms[int(i)].symbol = "Au"
    atoms.rattle(0.05, seed=0)
    result = run_md(atoms, calc, ensemble="nve", temperature_K=600, steps=steps, seed=0)
    return float(result.drift_mev_per_atom_per_ps)


def _within(model: float, ref: float, rel: float, abs_tol: float = 0.0) -> bool:
    return abs(model - ref) <= max(abs_tol, rel * abs(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--systems", choices=sorted(HOPS), default="held-out")
    parser.add_argument("--test", default=None, help="held-out extxyz for energy/force MAE")
    parser.add_argument("--md-steps", type=int, default=1000)
    parser.add_argument("--skip", default="", help="comma-separated: neb,vib,eos,md")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from eqv2calc.calculator import EquiformerV2Calculator

    torch.set_num_threads(1)
    skip = set(args.skip.split(",")) - {""}

    def model_calc():
        return EquiformerV2Calculator(args.model, device="cpu", dtype="float64")

    shared = model_calc()
    report: dict = {"model": args.model or "bundled", "forces_kind": shared.forces_kind}
    checks: list[bool] = []
    t0 = time.time()
    for metal, facet, ads in HOPS[args.systems]:
        key = f"{ads}/{metal}({facet})"
        if "neb" not in skip:
            ours, ref = (
                neb_barrier(model_calc, metal, facet, ads),
                neb_barrier(EMT, metal, facet, ads),
            )
            ok = _within(ours, ref, BOUNDS["barrier_rel"], BOUNDS["barrier_abs_eV"])
            checks.append(ok)
            report.setdefault("barriers_eV", {})[key] = {"model": ours, "emt": ref, "ok": ok}
            print(
                f"barrier {key:12s} model {ours:.3f} eV  EMT {ref:.3f} eV  {'ok' if ok else 'FAIL'}"
            )
        if "vib" not in skip:
            ours, ref = (
                hollow_modes(shared, metal, facet, ads),
                hollow_modes(EMT(), metal, facet, ads),
            )
            ok = all(_within(o, r, BOUNDS["mode_rel"]) for o, r in zip(ours, ref))
            checks.append(ok)
            report.setdefault("modes_meV", {})[key] = {"model": ours, "emt": ref, "ok": ok}
            print(
                f"modes   {key:12s} model {', '.join(f'{e:.1f}' for e in ours)}  "
                f"EMT {', '.join(f'{e:.1f}' for e in ref)} meV  {'ok' if ok else 'FAIL'}"
            )
    if "eos" not in skip:
        for metal in METALS:
            ours, ref = bulk_modulus(shared, metal), bulk_modulus(EMT(), metal)
            ok = _within(ours, ref, BOUNDS["bulk_modulus_rel"])
            checks.append(ok)
            report.setdefault("bulk_moduli_GPa", {})[metal] = {"model": ours, "emt": ref, "ok": ok}
            print(
                f"B       {metal:12s} model {ours:6.1f} GPa  EMT {ref:6.1f} GPa  {'ok' if ok else 'FAIL'}"
            )
    if "md" not in skip:
        report["nve_drift_meV_per_atom_per_ps"] = drift = nve_drift(shared, args.md_steps)
        print(f"NVE drift (Cu28Au4, 600 K): {drift:+.4f} meV/atom/ps")
    if args.test:
        from ase.io import read

        frames = read(args.test, ":")
        preds = shared.predict_batch(frames)
        e_err = [
            abs(p["energy"] - a.get_potential_energy()) / len(a) for p, a in zip(preds, frames)
        ]
        f_err = np.concatenate(
            [np.abs(p["forces"] - a.get_forces()).ravel() for p, a in zip(preds, frames)]
        )
        report["test_mae"] = {
            "energy_eV_per_atom": float(np.mean(e_err)),
            "forces_eV_per_A": float(f_err.mean()),
        }
        print(f"test MAE: energy {np.mean(e_err):.4f} eV/atom, forces {f_err.mean():.4f} eV/Å")
    report["all_within_bounds"] = bool(all(checks))
    report["seconds"] = time.time() - t0
    print(f"{sum(checks)}/{len(checks)} checks within the bounds of issue 17")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
