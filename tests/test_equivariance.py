"""Symmetry tests: energy invariant, forces co-rotate, under rotation/translation/permutation.

Tolerances (measured, see below) come from the S2 activation and grid MLP: functions on the
sphere are sampled on a finite (18 × 18) grid, so those point-wise non-linearities are
equivariant only up to aliasing. In float64 that leaves ~3e-5–5e-5 eV/Å in forces and
~2e-6–2e-5 eV in energy on these fixture structures; a broken frame or Wigner matrix gives
errors of the size of the forces themselves (~0.1 eV/Å). Translation and permutation involve
no grid and hold to rounding.

The stress head of the released models is *not* rotation-equivariant by construction (it
applies a biased MLP with SiLU to each component of its l = 2 part); we reproduce the
reference there, so only its isotropic part (pressure) is checked for invariance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eqv2_reference import checkpoint_path, structure
from scipy.spatial.transform import Rotation

from eqv2calc.calculator import EquiformerV2Calculator
from eqv2calc.model.so3 import CoefficientLayout, EdgeRotation, edge_rotation_blocks

STRUCTURES = ["bulk_mgo_strained", "slab_cu111_co", "molecule_ethanol_nopbc"]


@pytest.fixture(scope="module", params=["float32", "float64"])
def calc(request):
    return EquiformerV2Calculator(
        checkpoint_path("eqV2_small_omat_hydra"), device="cpu", dtype=request.param
    )


def _rotated(atoms, R):
    out = atoms.copy()
    out.positions = atoms.positions @ R.T
    out.cell = atoms.cell.array @ R.T
    return out


@pytest.mark.parametrize("name", STRUCTURES)
def test_rotation(calc, name):
    atoms = structure(name)
    R = Rotation.random(random_state=7).as_matrix()
    r0, r1 = calc.predict_batch([atoms, _rotated(atoms, R)])
    fmax = np.abs(r0["forces"]).max()
    assert abs(r1["energy"] - r0["energy"]) < 1e-4
    np.testing.assert_allclose(r1["forces"], r0["forces"] @ R.T, rtol=0, atol=1e-3 * max(fmax, 0.1))
    pressure = lambda s: s[:3].sum()  # noqa: E731
    assert abs(pressure(r1["stress"]) - pressure(r0["stress"])) < 1e-4


@pytest.mark.parametrize("name", STRUCTURES)
def test_translation_and_wrapping(calc, name):
    atoms = structure(name)
    shifted = atoms.copy()
    shifted.positions += np.array([0.37, -1.21, 2.05])
    if atoms.pbc.any():
        shifted.wrap()
    r0, r1 = calc.predict_batch([atoms, shifted])
    assert abs(r1["energy"] - r0["energy"]) < 1e-5
    np.testing.assert_allclose(r1["forces"], r0["forces"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(r1["stress"], r0["stress"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", STRUCTURES)
def test_permutation(calc, name):
    atoms = structure(name)
    perm = np.random.default_rng(3).permutation(len(atoms))
    r0, r1 = calc.predict_batch([atoms, atoms[perm]])
    assert abs(r1["energy"] - r0["energy"]) < 1e-5
    np.testing.assert_allclose(r1["forces"], r0["forces"][perm], rtol=0, atol=1e-5)


def test_edge_frame_puts_edge_on_polar_axis():
    vec = torch.randn(50, 3, dtype=torch.float64)
    d1 = edge_rotation_blocks(vec, 1)[1]
    unit = vec / vec.norm(dim=1, keepdim=True)
    target = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(50, 3)
    torch.testing.assert_close(torch.einsum("eij,ej->ei", d1, unit), target, rtol=0, atol=1e-6)


def test_rotate_back_inverts_rotate_for_kept_orders():
    layout = CoefficientLayout(4, 4)  # no truncation: rotate_back must be the exact inverse
    vec = torch.randn(20, 3, dtype=torch.float64)
    rot = EdgeRotation(vec, layout)
    x = torch.randn(20, 25, 3, dtype=torch.float64)
    torch.testing.assert_close(rot.rotate_back(rot.rotate(x)), x)
