"""Force constants of an adsorbate at (110) and (211) minima: a model against EMT.

A diagnostic beside ``check_physics.py`` (which measures the held-out (100)/(111) pairs): minima
drawn as ``physics_data.open_facet_frames`` draws them (a random metal, facet and adsorbate, the
adsorbate relaxed by EMT from a random spot), then the diagonal force constants of the adsorbate
(eV/Å², central differences of ±0.02 Å) with EMT and with the model on the same structures.
A negative lateral constant means the EMT minimum is not a minimum of the model. Summary: the
median absolute error per axis (relative errors mean little for the nearly flat directions of
the (110) troughs, k ≈ 0.05 eV/Å²) and the count of constants whose sign differs from EMT's.

The seed draws other minima than the training data's, but on the same pairs and facets once
``--open-facets`` frames are trained on, so this measures fit, not generalisation.

Usage (repository root)::

    python models/train_default/check_open_facets.py --model default --count 14 --seed 7
"""

from __future__ import annotations

import argparse

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from physics_data import open_facet_minimum  # beside this script

STEP = 0.02  # Å


def force_constants(atoms: Atoms, calc: Calculator) -> np.ndarray:
    """Diagonal force constants k_x, k_y, k_z (eV/Å²) of the last atom of ``atoms``."""
    k = np.empty(3)
    for axis in range(3):
        forces = []
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.calc = calc
            moved.positions[-1, axis] += sign * STEP
            forces.append(moved.get_forces()[-1, axis])
        k[axis] = -(forces[0] - forces[1]) / (2 * STEP)
    return k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model name or .pt (default: bundled)")
    parser.add_argument("--count", type=int, default=14, help="minima to draw")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from eqv2calc import EquiformerV2Calculator

    model = EquiformerV2Calculator(args.model, dtype="float64")
    rng = np.random.default_rng(args.seed)
    errors, flips = [], 0
    for _ in range(args.count):
        minimum = open_facet_minimum(rng)
        ref, got = force_constants(minimum, EMT()), force_constants(minimum, model)
        errors.append(np.abs(got - ref))
        flips += int(np.sum(np.sign(got) != np.sign(ref)))
        print(
            f"{minimum.info['adsorbate']}/{minimum.info['surface']:8s} k (eV/Å²) "
            f"EMT {np.array2string(ref, precision=2)}  model {np.array2string(got, precision=2)}",
            flush=True,
        )
    median = np.median(errors, axis=0)
    print(
        f"median |error| of k_x, k_y, k_z: {median[0]:.2f}, {median[1]:.2f}, {median[2]:.2f} "
        f"eV/Å²; signs different from EMT's: {flips} of {3 * args.count}"
    )


if __name__ == "__main__":
    main()
