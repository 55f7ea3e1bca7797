"""Tests for eqv2calc.training and the ``eqv2calc train`` command.

Labels come from ASE's EMT; the model is tiny so that every training run takes a second or two.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io import write
from click.testing import CliRunner

from eqv2calc.checkpoint import load_checkpoint
from eqv2calc.cli.train import train_command
from eqv2calc.model.heads import symmetric_tensor_basis
from eqv2calc.training import Trainer, TrainingDataError, config_from_dict, load_config
from eqv2calc.training.data import collate, labelled_structure, load_dataset
from eqv2calc.training.ema import ExponentialMovingAverage
from eqv2calc.training.schedule import warmup_cosine_factor
from eqv2calc.training.statistics import dataset_statistics, fit_element_references, stress_parts

CHECKPOINTS = Path(__file__).parent / "data" / "eqv2" / "checkpoints"

TINY_MODEL = {
    "cutoff": 4.5,
    "max_neighbors": 12,
    "num_layers": 1,
    "sphere_channels": 8,
    "attn_hidden_channels": 8,
    "num_heads": 2,
    "attn_alpha_channels": 4,
    "attn_value_channels": 4,
    "ffn_hidden_channels": 16,
    "edge_channels": 8,
    "lmax": 2,
    "mmax": 1,
}


def _labelled(atoms):
    atoms = atoms.copy()
    atoms.calc = EMT()
    results = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(apply_constraint=False),
    }
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    out = atoms.copy()
    out.info.pop("adsorbate_info", None)
    out.calc = SinglePointCalculator(out, **results)
    return out


def _structures(n_bulk: int = 6, n_slab: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_bulk):
        atoms = bulk(["Cu", "Pt", "Ni"][i % 3], "fcc", cubic=True)
        atoms.set_cell(atoms.cell.array * (1 + rng.uniform(-0.03, 0.03)), scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(1000)))
        frames.append(_labelled(atoms))
    for i in range(n_slab):
        slab = fcc111(["Cu", "Pt"][i % 2], (2, 2, 2), vacuum=5.0)
        add_adsorbate(slab, "O", 1.6, "fcc")
        slab.rattle(0.05, seed=int(rng.integers(1000)))
        frames.append(_labelled(slab))
    return frames


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.extxyz"
    write(path, _structures(), format="extxyz")
    return path


def _config(data_file: Path, out_dir: Path, **sections):
    options = {
        "data": {"train": str(data_file), "val_fraction": 0.2},
        "model": dict(TINY_MODEL),
        "optim": {"lr": 3e-3, "ema_decay": 0.9, "warmup_fraction": 0.0},
        "run": {
            "epochs": 2,
            "batch_size": 4,
            "out_dir": str(out_dir),
            "progress": False,
            "device": "cpu",
            "seed": 1,
        },
    }
    for name, values in sections.items():
        options.setdefault(name, {}).update(values)
    return config_from_dict(options)


def _quiet(line: str) -> None:
    pass


# ------------------------------------------------------------------------------ small units


def test_schedule_warmup_then_cosine_to_floor():
    assert warmup_cosine_factor(0, 100, 10, 0.2, 0.01) == pytest.approx(0.2)
    assert warmup_cosine_factor(5, 100, 10, 0.2, 0.01) == pytest.approx(0.6)
    assert warmup_cosine_factor(10, 100, 10, 0.2, 0.01) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 100, 10, 0.2, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine_factor(100, 100, 10, 0.2, 0.01) == pytest.approx(0.01)
    assert warmup_cosine_factor(500, 100, 10, 0.2, 0.01) == pytest.approx(0.01)


def test_ema_follows_the_documented_recursion():
    model = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(model, decay=0.5)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: d = min(0.5, 2/11) = 2/11
    d = 2.0 / 11.0
    for s, p0 in zip(ema.shadow, start):
        torch.testing.assert_close(s, d * p0 + (1 - d) * (p0 + 1.0))
    with ema.applied(model):
        torch.testing.assert_close(next(model.parameters()), ema.shadow[0])
    torch.testing.assert_close(next(model.parameters()), start[0] + 1.0)


def test_element_references_recover_an_exactly_linear_energy():
    refs = {29: -3.7, 78: -5.1, 8: -1.3, 28: -4.4}
    items = []
    for atoms in _structures():
        energy = sum(refs[z] for z in atoms.numbers)
        atoms.calc.results["energy"] = energy
        items.append(
            labelled_structure(
                atoms, "s", cutoff=4.5, max_neighbors=12, strict=True, max_atomic_number=89
            )
        )
    fitted = fit_element_references(items)
    for z, value in refs.items():
        assert fitted[z] == pytest.approx(value, abs=1e-8)
    assert np.count_nonzero(fitted) == len(refs)
    stats = dataset_statistics(items)
    assert stats.energy_residual_rms_per_atom == pytest.approx(0.0, abs=1e-8)
    assert stats.avg_num_nodes == pytest.approx(np.mean([len(a) for a in _structures()]))


def test_stress_parts_invert_the_decomposed_head():
    iso, aniso = symmetric_tensor_basis(torch.float64)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    sigma = a + a.transpose(1, 2)
    t0, t2 = stress_parts(sigma)
    rebuilt = t0.view(-1, 1, 1) * iso + torch.einsum("bm,mij->bij", t2, aniso)
    torch.testing.assert_close(rebuilt, sigma)


def test_labels_are_checked_with_a_message_naming_the_structure():
    atoms = _structures(1, 0)[0]
    atoms.calc = None
    with pytest.raises(TrainingDataError, match=r"s:3 \(Cu4\): no energy"):
        labelled_structure(
            atoms, "s:3", cutoff=4.5, max_neighbors=12, strict=True, max_atomic_number=89
        )
    atoms = _structures(1, 0)[0]
    atoms.calc.results["forces"] = np.zeros((2, 3))
    with pytest.raises(TrainingDataError, match=r"forces have shape \(2, 3\), expected \(4, 3\)"):
        labelled_structure(
            atoms, "s", cutoff=4.5, max_neighbors=12, strict=True, max_atomic_number=89
        )
    atoms = _structures(1, 0)[0]
    with pytest.raises(TrainingDataError, match=r"atom 0 is Cu \(Z=29\)"):
        labelled_structure(
            atoms, "s", cutoff=4.5, max_neighbors=12, strict=True, max_atomic_number=20
        )


def test_fixed_atoms_get_the_configured_force_weight():
    slab = _structures(0, 1)[0]
    slab.set_constraint(FixAtoms(indices=[0, 1]))
    item = labelled_structure(
        slab,
        "s",
        cutoff=4.5,
        max_neighbors=12,
        strict=True,
        max_atomic_number=89,
        fixed_atom_force_weight=0.0,
    )
    assert item.force_weights.tolist() == [0.0, 0.0] + [1.0] * (len(slab) - 2)


def test_config_rejects_unknown_keys_and_reads_yaml(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) in 'optim': \['learning_rate'\]"):
        config_from_dict({"optim": {"learning_rate": 1e-3}})
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  train: sub/train.extxyz\nrun:\n  epochs: 3\n")
    cfg = load_config(path)
    assert cfg.run.epochs == 3
    assert Path(cfg.data.train) == (tmp_path / "sub" / "train.extxyz").resolve()


def test_dataset_reads_ase_database(tmp_path):
    import ase.db

    frames = _structures(2, 1)
    with ase.db.connect(str(tmp_path / "data.db")) as db:
        for atoms in frames:
            db.write(atoms)
    items = load_dataset(
        tmp_path / "data.db", cutoff=4.5, max_neighbors=12, strict=True, max_atomic_number=89
    )
    assert [it.energy for it in items] == pytest.approx([a.get_potential_energy() for a in frames])
    assert items[0].stress is not None and items[2].stress is None
    batch = collate(items)
    assert batch.graph.num_graphs == 3 and batch.has_stress.tolist() == [True, True, False]


# ------------------------------------------------------------------------------ training runs


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = _config(data_file, out, run={"epochs": 6}, optim={"lr": 5e-3})
    trainer = Trainer(config, log=_quiet)
    before = trainer.evaluate(trainer.train_items, use_ema=False)
    result = trainer.fit()
    return trainer, result, before


def test_training_lowers_the_loss(trained):
    trainer, result, before = trained
    after = trainer.evaluate(trainer.train_items, use_ema=False)
    assert result.epochs_completed == 6 and len(result.history) == 6
    assert after["loss"] < 0.7 * before["loss"]
    assert after["forces_mae"] < before["forces_mae"]
    assert {"val_energy_per_atom_mae", "val_forces_mae", "val_stress_mae"} <= set(
        result.history[-1]
    )
    lines = (result.out_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_saved_model_predicts_like_the_in_memory_model(trained):
    from eqv2calc.calculator import EquiformerV2Calculator

    trainer, result, _ = trained
    frames = _structures(2, 2, seed=5)
    # best.pt holds the EMA weights of the best epoch; last.pt the raw weights of the last epoch
    loaded = load_checkpoint(result.last_checkpoint)
    calc_last = EquiformerV2Calculator(model=str(result.last_checkpoint), device="cpu")
    items = [
        labelled_structure(a, "x", cutoff=4.5, max_neighbors=12, strict=True, max_atomic_number=89)
        for a in frames
    ]
    batch = collate(items)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(batch.graph)
        again = loaded.model(batch.graph)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(again[key], expected[key], rtol=1e-5, atol=1e-6)
    predicted = calc_last.predict_batch(frames)
    np.testing.assert_allclose(
        [p["energy"] for p in predicted], expected["energy"].numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.concatenate([p["forces"] for p in predicted]), expected["forces"].numpy(), atol=1e-5
    )
    s = expected["stress"][0].numpy()
    np.testing.assert_allclose(
        predicted[0]["stress"], [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], atol=1e-6
    )
    # the EMA weights stored in last.pt are those the trainer holds
    with trainer.ema.applied(trainer.model), torch.no_grad():
        ema_expected = trainer.model(batch.graph)
    ema_loaded = load_checkpoint(result.last_checkpoint, use_ema=True)
    with torch.no_grad():
        torch.testing.assert_close(
            ema_loaded.model(batch.graph)["forces"], ema_expected["forces"], rtol=1e-5, atol=1e-6
        )
    best = load_checkpoint(result.best_checkpoint)
    assert best.layout == "hydra" and best.model.has_stress
    assert best.graph_settings.cutoff == 4.5 and best.graph_settings.max_neighbors == 12


def test_classic_layout_round_trip(data_file, tmp_path):
    config = _config(
        data_file, tmp_path, run={"epochs": 1, "layout": "classic"}, heads={"stress": False}
    )
    trainer = Trainer(config, log=_quiet)
    result = trainer.fit()
    loaded = load_checkpoint(result.last_checkpoint)
    assert loaded.layout == "classic" and not loaded.model.has_stress
    batch = collate(trainer.val_items)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(batch.graph)["forces"], trainer.model(batch.graph)["forces"]
        )
    with pytest.raises(ValueError, match="classic layout holds no stress head"):
        _config(data_file, tmp_path, run={"layout": "classic"}, heads={"stress": True}).validate()


def test_resume_continues_exactly_where_an_interrupted_run_stopped(data_file, tmp_path):
    straight = Trainer(_config(data_file, tmp_path / "a", run={"epochs": 3}), log=_quiet)
    straight.fit()

    first = Trainer(_config(data_file, tmp_path / "b", run={"epochs": 3}), log=_quiet)
    first.fit(max_epochs=1)  # "interrupted" after epoch 1
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == first.steps_per_epoch

    resumed = Trainer(
        _config(data_file, tmp_path / "b", run={"epochs": 3, "resume": True}), log=_quiet
    )
    assert resumed.epoch == 1 and resumed.step == first.steps_per_epoch
    assert resumed.scheduler.last_epoch == first.steps_per_epoch
    exp_avg = resumed.optimizer.state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(exp_avg, first.optimizer.state_dict()["state"][0]["exp_avg"])
    result = resumed.fit()
    assert result.epochs_completed == 3 and [h["epoch"] for h in result.history] == [1, 2, 3]
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    for s, t in zip(resumed.ema.shadow, straight.ema.shadow):
        torch.testing.assert_close(s, t, rtol=1e-4, atol=1e-6)


def test_finetune_hydra_fixture_with_frozen_backbone(data_file, tmp_path):
    init = CHECKPOINTS / "eqV2_small_omat_hydra.pt"
    config = _config(
        data_file,
        tmp_path,
        run={"epochs": 1, "init": str(init), "freeze_backbone": True, "batch_size": 5},
    )
    trainer = Trainer(config, log=_quiet)
    original = load_checkpoint(init).model.state_dict()
    trainer.fit()
    tuned = load_checkpoint(tmp_path / "last.pt").model.state_dict()
    backbone = [k for k in original if k.startswith("backbone.")]
    heads = [k for k in original if k.startswith("heads.") and original[k].dtype.is_floating_point]
    assert all(torch.equal(original[k], tuned[k]) for k in backbone)
    assert any(not torch.equal(original[k], tuned[k]) for k in heads)
    assert tuned["element_references"].shape == original["element_references"].shape


def test_finetune_classic_fixture_refits_element_references(data_file, tmp_path):
    init = CHECKPOINTS / "eq2_small_oc20_classic.pt"
    logs: list[str] = []
    config = _config(
        data_file,
        tmp_path,
        run={
            "epochs": 1,
            "init": str(init),
            "fit_element_references": True,
            "layout": "classic",
            "energy_kind": "total",
            "batch_size": 5,
        },
        optim={"lr": 1e-4},
    )
    trainer = Trainer(config, log=logs.append)
    refit = [line for line in logs if line.startswith("element references refitted")]
    assert refit
    before, after = (float(x) for x in refit[0].split("MAE ")[1].split(" eV")[0].split(" → "))
    assert after < before
    result = trainer.fit()
    loaded = load_checkpoint(result.last_checkpoint)
    assert loaded.layout == "classic"
    assert loaded.model.element_references.numel() == 119


# ------------------------------------------------------------------------------ command line


def test_cli_trains_and_reports(data_file, tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.extxyz").write_bytes(data_file.read_bytes())
    cfg = tmp_path / "cfg.yaml"
    model_lines = "\n".join(f"  {k}: {v}" for k, v in TINY_MODEL.items())
    cfg.write_text(f"model:\n{model_lines}\nrun:\n  batch_size: 5\n  device: cpu\n")
    result = runner.invoke(
        train_command,
        ["cfg.yaml", "--train", "train.extxyz", "--out", "run", "--epochs", "1", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "best checkpoint:" in result.output and "validation MAE: energy" in result.output
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    # resuming (from another folder) reads run/config.yaml; a finished run does nothing more
    monkeypatch.chdir(tmp_path / "run")
    again = runner.invoke(
        train_command, ["--resume", "--out", str(tmp_path / "run"), "--no-progress"]
    )
    assert again.exit_code == 0, again.output
    assert "training already complete (1/1 epochs)" in again.output


def test_cli_never_replaces_an_earlier_run_silently(data_file, tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    model_lines = "\n".join(f"  {k}: {v}" for k, v in TINY_MODEL.items())
    cfg.write_text(f"model:\n{model_lines}\nrun:\n  batch_size: 5\n  device: cpu\n")
    args = ["cfg.yaml", "--train", str(data_file), "--out", "run", "--epochs", "1", "--no-progress"]
    first = runner.invoke(train_command, args)
    assert first.exit_code == 0, first.output
    best = (tmp_path / "run" / "best.pt").read_bytes()
    again = runner.invoke(train_command, [*args, "--seed", "7"])
    assert again.exit_code == 2, again.output
    assert "run/last.pt exists" in again.output and "--overwrite" in again.output
    assert (tmp_path / "run" / "best.pt").read_bytes() == best
    forced = runner.invoke(train_command, [*args, "--seed", "7", "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "run" / "best.pt").read_bytes() != best
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1  # this run's epoch only, not appended to the earlier run's


def test_config_values_of_the_wrong_type_are_named(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  clip_grad_norm: null\nrun:\n  epochs: 2\n")
    cfg = load_config(path)  # YAML reads 1e-3 as a string
    assert cfg.optim.lr == 1e-3 and cfg.optim.clip_grad_norm is None and cfg.run.epochs == 2
    for text, message in [
        ("run:\n  epochs: ten\n", "run.epochs must be an integer, got 'ten'"),
        ("run:\n  batch_size: 0.5\n", "run.batch_size must be an integer, got 0.5"),
        ("optim:\n  lr: fast\n", "optim.lr must be a number, got 'fast'"),
        ("run:\n  amp: 1\n", "run.amp must be true/false, got 1"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{path.name}: {message}"):
            load_config(path)
    with pytest.raises(ValueError, match=r"optim.lr must be > 0, got -0.001"):
        config_from_dict({"data": {"train": "x.extxyz"}, "optim": {"lr": -1e-3}}).validate()


def test_unknown_model_option_is_refused_when_the_config_is_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cfg.yaml"
    # fairchem's names, no-effect arguments and ours are all model options
    path.write_text(
        "model:\n  max_radius: 5.0\n  lmax_list: [2]\n  alpha_drop: 0.0\n  envelope: none\n"
    )
    assert load_config(path).model_options()["cutoff"] == 5.0
    path.write_text("data:\n  train: absent.extxyz\nmodel:\n  max_num_neighbors: 20\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: section 'model': unknown option 'max_num_neighbors'")
    assert "did you mean 'max_neighbors'?" in message and "'num_layers'" in message
    # the command refuses it before reading the (here missing) data, as a usage error
    result = CliRunner().invoke(train_command, ["cfg.yaml", "--out", "run", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "cfg.yaml: section 'model': unknown option 'max_num_neighbors'" in result.output
    assert "absent.extxyz" not in result.output and not (tmp_path / "run").exists()


def test_cli_errors_are_one_line(data_file, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(
        train_command, ["--train", str(tmp_path / "nope.extxyz"), "--out", str(tmp_path / "r")]
    )
    assert missing.exit_code != 0
    assert "nope.extxyz: no such training data file" in missing.output
    resume = runner.invoke(
        train_command, ["--train", str(data_file), "--resume", "--out", str(tmp_path / "empty")]
    )
    assert resume.exit_code != 0 and "nothing to resume from" in resume.output
    assert all(len(line) < 300 for line in resume.output.splitlines())


def test_loss_scales_follow_the_model_normalizers(trained):
    from eqv2calc.training.loss import LossScales

    trainer, _, _ = trained
    model = trainer.model
    scales = LossScales.from_model(model)
    assert scales.forces == pytest.approx(model.normalizers["forces"].std)
    assert scales.energy_per_atom == pytest.approx(
        model.normalizers["energy"].std / model.config.avg_num_nodes
    )
    assert math.isfinite(scales.stress) and scales.stress > 0


def test_cli_help_keeps_the_two_line_example_on_two_lines():
    text = CliRunner().invoke(train_command, ["--help"], terminal_width=200).output
    assert "--distill-epochs 1 \\\n" in text
    assert "Peak learning rate.  [x>0]" in text
