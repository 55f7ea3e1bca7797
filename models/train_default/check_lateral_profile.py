"""The lateral energy profile of an adsorbate between two hollows: a model against EMT.

A diagnostic beside ``check_physics.py``: the adsorbate is held at points along the hop of
``check_physics.hop_endpoints`` (the (100) hollow to the next hollow along x; on (111) the fcc
hollow to the neighbouring hcp hollow), with its x, y fixed and its height and the slab relaxed
(BFGS, fmax 0.005 eV/Å), by EMT and by the model separately. The energies relative to the start
(meV) show what the modes and barrier of ``check_physics.py`` sample: the lateral mode is the
curvature of the first points, the barrier the highest. H's profile is the flattest (EMT's
fcc → hcp barrier on Ni(111) is 11 meV), so meV-scale bumps in a model decide its lateral
modes.

Usage (repository root)::

    python models/train_default/check_lateral_profile.py --model default "H/Ni(111)" "H/Au(111)"
"""

from __future__ import annotations

import argparse

import numpy as np
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.constraints import FixCartesian
from ase.optimize import BFGS
from check_physics import hop_endpoints  # beside this script


def lateral_profile(calc: Calculator, metal: str, facet: str, adsorbate: str, points: int = 11):
    """Energies (eV) relative to the first point, along the hop with the height relaxed."""
    start, end = hop_endpoints(metal, facet, adsorbate)
    hop = end.positions[-1, :2] - start.positions[-1, :2]
    energies = []
    for t in np.linspace(0.0, 1.0, points):
        atoms = start.copy()
        atoms.positions[-1, :2] += t * hop
        held = FixCartesian(len(atoms) - 1, mask=(True, True, False))
        atoms.set_constraint([*atoms.constraints, held])
        atoms.calc = calc
        BFGS(atoms, logfile=None).run(fmax=0.005, steps=300)
        energies.append(atoms.get_potential_energy())
    return np.array(energies) - energies[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help='adsorbate/surface, e.g. "H/Ni(111)"')
    parser.add_argument("--model", default="default", help="model name or .pt (default: bundled)")
    parser.add_argument("--points", type=int, default=11)
    args = parser.parse_args()

    from eqv2calc import EquiformerV2Calculator

    model = EquiformerV2Calculator(args.model, dtype="float64")
    for pair in args.pairs:
        adsorbate, surface = pair.split("/")
        metal, facet = surface[:-5], surface[-4:-1]
        fractions = np.linspace(0.0, 1.0, args.points)
        print(f"{pair}  fraction of the hop: " + " ".join(f"{t:6.2f}" for t in fractions))
        for name, calc in (("EMT", EMT()), ("model", model)):
            energies = lateral_profile(calc, metal, facet, adsorbate, args.points) * 1000.0
            print(f"  {name:5s} meV " + " ".join(f"{e:6.1f}" for e in energies), flush=True)


if __name__ == "__main__":
    main()
