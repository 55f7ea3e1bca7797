"""torch-sim ModelInterface for eqv2calc models (skipped without torch-sim installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from eqv2_reference import DEMO_MODEL as DEMO

ts = pytest.importorskip("torch_sim")

DATA = Path(__file__).parent / "data" / "eqv2"


def test_torchsim_validation_and_parity_with_calculator():
    from ase.build import bulk
    from torch_sim.models.interface import validate_model_outputs

    from eqv2calc import EquiformerV2Calculator
    from eqv2calc.integrations.torchsim import EquiformerV2Model

    calc = EquiformerV2Calculator(str(DEMO), device="cpu", dtype="float64")
    model = EquiformerV2Model(calc)
    validate_model_outputs(model, torch.device("cpu"), torch.float64)

    # torch-sim 0.3.0 keeps one pbc flag for all systems: two bulk crystals
    structs = [bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1)), bulk("Au", "fcc", a=4.1, cubic=True)]
    structs[1].rattle(0.05, seed=1)
    state = ts.io.atoms_to_state(structs, torch.device("cpu"), torch.float64)
    out = model(state)
    ref = calc.predict_batch(structs)
    np.testing.assert_allclose(out["energy"].numpy(), [r["energy"] for r in ref], atol=1e-10)
    np.testing.assert_allclose(
        out["forces"].numpy(), np.concatenate([r["forces"] for r in ref]), atol=1e-10
    )


def test_torchsim_stress_model_and_sheared_cell():
    """A stress (hydra) fixture checkpoint on a triclinic cell: row-vector cell convention."""
    from ase.io import read

    from eqv2calc import EquiformerV2Calculator
    from eqv2calc.integrations.torchsim import EquiformerV2Model

    calc = EquiformerV2Calculator(
        str(DATA / "checkpoints" / "eqV2_small_omat_hydra.pt"), device="cpu", dtype="float64"
    )
    model = EquiformerV2Model(calc)
    assert model.compute_stress
    atoms = read(DATA / "structures" / "tri_small_gan.extxyz")
    out = model(ts.io.atoms_to_state([atoms], torch.device("cpu"), torch.float64))
    ref = calc.predict_batch([atoms])[0]
    s = out["stress"][0].numpy()
    voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
    np.testing.assert_allclose(voigt, ref["stress"], atol=1e-10)
    np.testing.assert_allclose(out["forces"].numpy(), ref["forces"], atol=1e-10)
