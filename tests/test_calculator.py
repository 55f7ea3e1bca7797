"""The ASE calculator: interface, batching, errors, dtype and devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from eqv2_reference import checkpoint_path, structure

from eqv2calc import EquiformerV2Calculator


@pytest.fixture(scope="module")
def oc20():
    return EquiformerV2Calculator(checkpoint_path("eq2_small_oc20_classic"), device="cpu")


@pytest.fixture(scope="module")
def omat():
    return EquiformerV2Calculator(checkpoint_path("eqV2_small_omat_hydra"), device="cpu")


def test_properties_and_metadata(oc20, omat):
    assert "stress" not in oc20.implemented_properties and "stress" in omat.implemented_properties
    assert oc20.energy_kind == "adsorption" and omat.energy_kind == "total"
    assert oc20.cutoff == 12.0


def test_free_energy_equals_energy(oc20):
    atoms = structure("tri_small_gan")
    atoms.calc = oc20
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_stress_on_model_without_stress_head_explains(oc20):
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.calc = oc20
    with pytest.raises(PropertyNotImplementedError, match="only checkpoints with a stress head"):
        atoms.get_stress()


def test_batch_equals_one_at_a_time(omat):
    structures = [
        structure(n) for n in ("slab_cu111_co", "bulk_mgo_strained", "molecule_ethanol_nopbc")
    ]
    batched = omat.predict_batch(structures)
    for atoms, res in zip(structures, batched):
        single = omat.predict_batch([atoms])[0]
        assert abs(single["energy"] - res["energy"]) < 1e-5
        np.testing.assert_allclose(single["forces"], res["forces"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(single["stress"], res["stress"], atol=1e-6, rtol=0)
    assert omat.predict_batch([]) == []


def test_results_refresh_when_atoms_move(oc20):
    atoms = structure("bulk_mgo_strained")
    atoms.calc = oc20
    e0 = atoms.get_potential_energy()
    atoms.positions[0] += [0.1, 0.0, 0.0]
    assert atoms.get_potential_energy() != e0


def test_unsupported_element_names_atom_and_element(oc20):
    atoms = Atoms("CuOg", positions=[[0, 0, 0], [0, 0, 2.0]], cell=[10, 10, 10], pbc=True)
    atoms.calc = oc20
    with pytest.raises(ValueError, match=r"atom 1 has atomic number 118 \(Og\)"):
        atoms.get_potential_energy()


def test_empty_structure_is_rejected(oc20):
    with pytest.raises(ValueError, match="no atoms"):
        oc20.predict_batch([Atoms()])


def test_float64_agrees_with_float32(oc20):
    c64 = EquiformerV2Calculator(
        checkpoint_path("eq2_small_oc20_classic"), device="cpu", dtype="float64"
    )
    atoms = structure("slab_cu111_co")
    r32, r64 = oc20.predict_batch([atoms])[0], c64.predict_batch([atoms])[0]
    assert c64.model.backbone.sphere_embedding.weight.dtype == torch.float64
    assert abs(r32["energy"] - r64["energy"]) < 1e-4
    np.testing.assert_allclose(r32["forces"], r64["forces"], atol=1e-4, rtol=0)


def test_bad_dtype_and_device_messages():
    with pytest.raises(ValueError, match="dtype must be"):
        EquiformerV2Calculator(checkpoint_path("eq2_small_oc22_linref"), dtype="float16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            EquiformerV2Calculator(checkpoint_path("eq2_small_oc22_linref"), device="cuda")


def test_cell_relaxation_is_driven_by_the_model_stress(omat):
    """The cell filter's cell forces are -V·σ/N with our stress σ (eV/Å³, ASE's sign), and a
    FIRE step moves the cell along them (so the stress reaches the optimizer, sign included)."""
    from ase.stress import voigt_6_to_full_3x3_stress

    atoms = structure("bulk_mgo_strained")
    atoms.calc = omat
    cell_filter = FrechetCellFilter(atoms)
    cell_forces = cell_filter.get_forces()[-3:]
    sigma = voigt_6_to_full_3x3_stress(atoms.get_stress())
    expected = -atoms.get_volume() * sigma / cell_filter.exp_cell_factor
    np.testing.assert_allclose(cell_forces, expected, rtol=1e-12, atol=1e-12)
    assert np.abs(cell_forces).max() > 1e-3
    before = cell_filter.get_positions()[-3:].copy()
    FIRE(cell_filter, logfile=None).run(fmax=1e-6, steps=1)
    step = cell_filter.get_positions()[-3:] - before
    cosine = np.sum(step * cell_forces) / np.linalg.norm(step) / np.linalg.norm(cell_forces)
    assert cosine > 0.999


def test_molecule_without_cell(oc20):
    atoms = molecule("H2O")
    atoms.calc = oc20
    assert atoms.get_forces().shape == (3, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(oc20):
    gpu = EquiformerV2Calculator(checkpoint_path("eq2_small_oc20_classic"), device="cuda")
    atoms = structure("slab_cu111_co")
    a, b = oc20.predict_batch([atoms])[0], gpu.predict_batch([atoms])[0]
    assert abs(a["energy"] - b["energy"]) < 1e-4
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4, rtol=0)
