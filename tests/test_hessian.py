"""Hessians: autograd for gradient models, batched central differences otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.vibrations import Vibrations
from eqv2_reference import checkpoint_path, structure

from eqv2calc.calculator import EquiformerV2Calculator
from eqv2calc.hessian import asymmetry, compute_hessian, finite_difference_hessian


def small_cell(seed: int = 0):
    atoms = structure("tri_small_gan")
    atoms.rattle(0.03, seed=seed)
    return atoms


def gradient_calc(dtype: str) -> EquiformerV2Calculator:
    return EquiformerV2Calculator(
        checkpoint_path("eqV2_small_omat_hydra"), device="cpu", dtype=dtype, forces="gradient"
    )


def test_autograd_hessian_of_a_gradient_model():
    """Autograd second derivatives = central differences of the (exact) gradient forces."""
    calc = gradient_calc("float64")
    atoms = small_cell()
    h = calc.get_hessian(atoms)
    assert h.shape == (6, 6) and calc.hessian_report.method == "autograd"
    reference = finite_difference_hessian(calc, atoms, delta=1e-5)
    np.testing.assert_allclose(h, reference, rtol=0, atol=1e-6 * np.abs(reference).max())
    assert calc.hessian_report.asymmetry < 1e-12
    # float32: the same Hessian to float32 precision, still symmetric to rounding
    h32 = gradient_calc("float32").get_hessian(atoms)
    np.testing.assert_allclose(h32, h, rtol=0, atol=1e-4 * np.abs(h).max())
    assert asymmetry(h32) < 1e-5


def test_direct_model_hessian_reports_asymmetry():
    calc = EquiformerV2Calculator(
        checkpoint_path("eqV2_small_omat_hydra"), device="cpu", dtype="float64"
    )
    atoms = small_cell(1)
    h = calc.get_hessian(atoms, delta=1e-3)
    assert calc.hessian_report.method == "finite differences"
    assert calc.hessian_report.asymmetry == pytest.approx(asymmetry(h))
    # random-weight direct heads are far from an energy gradient: clearly asymmetric
    assert calc.hessian_report.asymmetry > 1e-2
    # one batched call for all 6N copies = the same differences taken one structure at a time
    one_by_one = np.empty_like(h)
    for row in range(6):
        i, a = divmod(row, 3)
        moved = [atoms.copy(), atoms.copy()]
        moved[0].positions[i, a] += 1e-3
        moved[1].positions[i, a] -= 1e-3
        fp, fm = (calc.predict_batch([m])[0]["forces"] for m in moved)
        one_by_one[row] = -(fp - fm).reshape(-1) / 2e-3
    np.testing.assert_allclose(h, one_by_one, rtol=0, atol=1e-9 * np.abs(h).max())


def test_finite_differences_match_ase_vibrations_with_emt(tmp_path):
    """Any ASE calculator: the same central differences as ASE's Vibrations (EMT, δ 0.01 Å)."""
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms[1].symbol = "Au"
    atoms.rattle(0.02, seed=3)
    h = finite_difference_hessian(EMT(), atoms, delta=0.01)
    ref_atoms = atoms.copy()
    ref_atoms.calc = EMT()
    vib = Vibrations(ref_atoms, delta=0.01, nfree=2, name=str(tmp_path / "vib"))
    vib.run()
    reference = vib.get_vibrations().get_hessian_2d()
    # ASE symmetrises its Hessian; compare the symmetrised ones
    np.testing.assert_allclose(0.5 * (h + h.T), reference, rtol=0, atol=1e-8)
    assert asymmetry(h) < 1e-4  # EMT is conservative: asymmetric only by O(δ²) terms


def test_autograd_refused_for_direct_models():
    calc = EquiformerV2Calculator(checkpoint_path("eq2_small_oc22_linref"), device="cpu")
    with pytest.raises(ValueError, match="gradient forces"):
        compute_hessian(calc, small_cell(), method="autograd")
