"""Gradient (conservative) forces and stress: finite differences, batching, files, training.

The finite-difference checks are ASE's own (``ase.calculators.fd``): central differences of the
energy the calculator reports, with respect to each coordinate (forces) and to a symmetric
strain (stress). In float64 they agree with the autograd derivatives to ~1e-9; a missing term
(a detached edge frame, a periodic image left out of the strain, a wrong sign or volume) gives
errors of the size of the forces themselves (~0.1 eV/Å).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from eqv2_reference import CHECKPOINTS, checkpoint_path, structure

from eqv2calc.calculator import EquiformerV2Calculator
from eqv2calc.checkpoint import load_checkpoint, save_checkpoint
from eqv2calc.model.conservative import gradient_outputs

FORCE_TOL = 1e-6  # eV/Å, float64
STRESS_TOL = 1e-7  # eV/Å³, float64 (stresses are ~1e-3)


def gradient_calc(model, dtype: str = "float64") -> EquiformerV2Calculator:
    calc = EquiformerV2Calculator(model, device="cpu", dtype=dtype)
    calc.model.forces_kind = "gradient"
    return calc


def rattled(name: str, seed: int = 0):
    atoms = structure(name)
    atoms.rattle(0.02, seed=seed)  # no exact neighbour-cap ties
    return atoms


@pytest.mark.parametrize(
    ("checkpoint", "name"),
    [(c, "tri_small_gan") for c in CHECKPOINTS]  # every fixture layout, triclinic GaN
    + [
        ("eqV2_small_omat_hydra", "bulk_mgo_strained"),
        ("eq2_small_oc22_linref", "bulk_mgo_strained"),
    ],
)
def test_forces_and_stress_are_energy_derivatives(checkpoint, name):
    calc = gradient_calc(checkpoint_path(checkpoint))
    atoms = rattled(name)
    atoms.calc = calc
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    assert np.abs(forces).max() > 1e-3 and np.abs(stress).max() > 1e-5  # not trivially zero
    some = [0, len(atoms) - 1]  # two atoms (of different elements) keep the test quick
    numerical = calculate_numerical_forces(atoms, eps=1e-5, iatoms=some)
    np.testing.assert_allclose(forces[some], numerical, rtol=0, atol=FORCE_TOL)
    numerical_stress = calculate_numerical_stress(atoms, eps=1e-6, voigt=False)
    np.testing.assert_allclose(stress, numerical_stress, rtol=0, atol=STRESS_TOL)


def test_molecule_forces_without_cell():
    calc = gradient_calc(checkpoint_path("eq2_small_oc20_classic"))
    atoms = rattled("molecule_ethanol_nopbc")
    atoms.calc = calc
    forces = atoms.get_forces()
    some = [0, 1, 3]  # C, C, H
    numerical = calculate_numerical_forces(atoms, eps=1e-5, iatoms=some)
    np.testing.assert_allclose(forces[some], numerical, rtol=0, atol=FORCE_TOL)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()  # no volume: no stress


def test_bundled_model_slab():
    """The demo model (lmax 2, its own grid): a slab with vacuum and fixed atoms."""
    calc = gradient_calc("demo")
    slab = structure("slab_cu111_co")[:14]
    slab.rattle(0.03, seed=4)
    slab.calc = calc
    idx = [0, 13]
    numerical = calculate_numerical_forces(slab, eps=1e-6, iatoms=idx)
    forces = slab.get_forces(apply_constraint=False)
    np.testing.assert_allclose(forces[idx], numerical, rtol=0, atol=FORCE_TOL)


@pytest.mark.parametrize("model", [None, "demo", "eqV2_small_omat_hydra"])
def test_perfect_crystal(model):
    """A perfect fcc crystal has edges exactly along ±y, where edge-frame angles have no
    derivative: forces and stress must still be finite (and forces zero by symmetry)."""
    calc = gradient_calc(model if model in (None, "demo") else checkpoint_path(model))
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True)
    crystal.calc = calc
    forces, stress = crystal.get_forces(), crystal.get_stress()
    assert np.isfinite(forces).all() and np.isfinite(stress).all()
    assert np.abs(forces).max() < 1e-3  # zero by symmetry, up to the S2-grid sampling
    if model != "demo":
        # (not for the first demo model: with lmax 2 every l > 0 feature vanishes on a cubic site
        # and its separable layer norm makes the energy sharply curved there, width ~1e-6)
        np.testing.assert_allclose(
            stress, calculate_numerical_stress(crystal, eps=1e-6), rtol=0, atol=STRESS_TOL
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_equals_single(dtype):
    calc = gradient_calc(checkpoint_path("eqV2_small_omat_hydra"), dtype)
    items = [
        rattled("bulk_mgo_strained", 1),
        rattled("tri_small_gan", 2),
        rattled("bulk_cu_fcc_conv"),
    ]
    batched = calc.predict_batch(items)
    tol = 1e-10 if dtype == "float64" else 1e-4
    for atoms, res in zip(items, batched):
        single = calc.predict_batch([atoms])[0]
        assert abs(single["energy"] - res["energy"]) < tol * max(1.0, abs(res["energy"]))
        np.testing.assert_allclose(res["forces"], single["forces"], rtol=0, atol=tol)
        np.testing.assert_allclose(res["stress"], single["stress"], rtol=0, atol=tol)


def test_float32_close_to_float64():
    atoms = rattled("bulk_mgo_strained", 3)
    r32 = gradient_calc(checkpoint_path("eqV2_small_dens_hydra"), "float32").predict_batch([atoms])
    r64 = gradient_calc(checkpoint_path("eqV2_small_dens_hydra"), "float64").predict_batch([atoms])
    scale = np.abs(r64[0]["forces"]).max()
    np.testing.assert_allclose(r32[0]["forces"], r64[0]["forces"], rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(r32[0]["stress"], r64[0]["stress"], rtol=0, atol=1e-6)


def test_gradient_kind_survives_the_checkpoint(tmp_path):
    loaded = load_checkpoint(checkpoint_path("eq2_small_oc22_linref"))
    assert loaded.model.forces_kind == "direct"
    loaded.model.forces_kind = "gradient"
    path = save_checkpoint(loaded.model, tmp_path / "conservative.pt", layout="classic")
    data = torch.load(path, weights_only=True)
    assert data["config"]["eqv2calc"]["forces"] == "gradient"
    calc = EquiformerV2Calculator(path, device="cpu", dtype="float64")
    assert calc.forces_kind == "gradient" and calc.has_stress  # stress without a stress head
    atoms = rattled("tri_small_gan", 5)
    atoms.calc = calc
    np.testing.assert_allclose(
        atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-5), rtol=0, atol=FORCE_TOL
    )
    # the direct heads give other forces: the file really switched what the calculator computes
    direct = gradient_calc(checkpoint_path("eq2_small_oc22_linref"))
    direct.model.forces_kind = "direct"
    assert np.abs(direct.predict_batch([atoms])[0]["forces"] - atoms.get_forces()).max() > 1e-3


def test_gradient_outputs_virial_is_strain_derivative():
    """The raw virial ∂E/∂ε equals volume × stress, including for a triclinic cell."""
    calc = gradient_calc(checkpoint_path("eqV2_small_omat_hydra"))
    atoms = rattled("tri_small_gan", 6)
    out = gradient_outputs(calc.model, calc.structure_input([atoms]))
    np.testing.assert_allclose(
        out["virial"][0].detach().numpy(),
        out["stress"][0].detach().numpy() * atoms.get_volume(),
        rtol=1e-12,
    )
    assert torch.allclose(out["virial"][0], out["virial"][0].T)


def test_molecule_mixed_in_a_batch_keeps_others_stress():
    calc = gradient_calc(checkpoint_path("eqV2_small_omat_hydra"))
    mol = molecule("H2O")
    res = calc.predict_batch([mol, rattled("tri_small_gan")])
    assert "stress" not in res[0] and np.isfinite(res[1]["stress"]).all()


def _emt_frames(n: int = 6) -> list:
    """Small rattled Cu/Au cells with EMT energy, forces and stress as stored labels."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.55 + 0.02 * i, cubic=True)
        if i % 2:
            atoms[1].symbol = "Au"
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        labels = {
            "energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces(),
            "stress": atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


def test_distillation_targets_are_the_direct_predictions():
    from ase.stress import voigt_6_to_full_3x3_stress

    from eqv2calc.training.data import labelled_structure
    from eqv2calc.training.gradient import distillation_items

    frames = _emt_frames()
    calc = EquiformerV2Calculator("demo", device="cpu", dtype="float32")
    s = calc.loaded.graph_settings
    options = {"cutoff": s.cutoff, "max_neighbors": s.max_neighbors, "strict": s.strict}
    items = [
        labelled_structure(a, f"s{i}", max_atomic_number=89, **options)
        for i, a in enumerate(frames)
    ]
    relabelled = distillation_items(calc.model, items, batch_size=4)
    direct = calc.predict_batch(frames)
    for item, res, atoms in zip(relabelled, direct, frames):
        assert abs(item.energy - res["energy"]) < 1e-4
        np.testing.assert_allclose(item.forces.numpy(), res["forces"], rtol=0, atol=1e-5)
        stress = voigt_6_to_full_3x3_stress(res["stress"])
        np.testing.assert_allclose(item.stress.numpy(), stress, rtol=0, atol=1e-6)
        # ... and not the EMT labels
        assert np.abs(item.forces.numpy() - atoms.calc.results["forces"]).max() > 1e-3


def test_conservative_fine_tune_from_the_command_line(tmp_path):
    from ase.io import write
    from click.testing import CliRunner

    from eqv2calc.cli import main
    from eqv2calc.registry import resolve_model

    frames = _emt_frames()
    write(tmp_path / "data.extxyz", frames)
    args = ["train", "--train", str(tmp_path / "data.extxyz"), "--init", str(resolve_model("demo"))]
    args += ["--forces", "gradient", "--distill-epochs", "1", "--epochs", "2", "--batch-size", "3"]
    args += ["--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "forces: gradient" in result.output and "distillation" in result.output
    best = tmp_path / "run" / "best.pt"
    assert torch.load(best, weights_only=True)["config"]["eqv2calc"]["forces"] == "gradient"
    calc = EquiformerV2Calculator(best, device="cpu", dtype="float64")
    assert calc.forces_kind == "gradient"
    atoms = frames[1].copy()
    atoms.calc = calc
    numerical = calculate_numerical_forces(atoms, eps=1e-6, iatoms=[1])
    np.testing.assert_allclose(atoms.get_forces()[[1]], numerical, rtol=0, atol=FORCE_TOL)


def test_fine_tune_with_envelope_lifts_the_cap_and_distils_on_the_teachers_graphs(tmp_path):
    """--envelope/--max-neighbors with --init: recorded in the checkpoint; the distillation
    labels are the initial model's predictions on the graphs it was made for (cap 18), not on
    the fine-tune's wider graphs."""
    from ase.io import write

    from eqv2calc.registry import resolve_model
    from eqv2calc.training import TrainConfig
    from eqv2calc.training.trainer import Trainer

    frames = _emt_frames()
    write(tmp_path / "data.extxyz", frames)
    cfg = TrainConfig()
    cfg.data.train, cfg.data.val_fraction = str(tmp_path / "data.extxyz"), 0.0
    cfg.model = {"envelope": "polynomial", "max_neighbors": 80, "num_layers": 5}
    cfg.heads.forces = "gradient"
    cfg.run.init, cfg.run.distill_epochs, cfg.run.epochs = str(resolve_model("demo")), 1, 1
    cfg.run.out_dir, cfg.run.progress, cfg.run.num_threads = str(tmp_path / "run"), False, 1
    lines: list[str] = []
    trainer = Trainer(cfg, log=lines.append)
    assert any("model.num_layers ignored" in line for line in lines)
    assert any("model.envelope: 'none' -> 'polynomial'" in line for line in lines)
    assert trainer.model.config.envelope == "polynomial"
    assert trainer.data_kwargs["max_neighbors"] == 80
    # the training graphs are wider than the teacher's (cap 18 binds in these bulk cells)
    assert max(item.edge_index.shape[1] / item.num_atoms for item in trainer.train_items) > 18
    teacher = EquiformerV2Calculator("demo", device="cpu", dtype="float32")
    direct = {f"data.extxyz:{i}": r for i, r in enumerate(teacher.predict_batch(frames))}
    for item in trainer.distill_items:
        res = direct[item.label]
        assert abs(item.energy - res["energy"]) < 1e-4
        np.testing.assert_allclose(item.forces.numpy(), res["forces"], rtol=0, atol=1e-5)
    trainer.fit()
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]
    assert saved["eqv2calc"]["envelope"] == "polynomial"
    assert saved["model"]["backbone"]["max_neighbors"] == 80
