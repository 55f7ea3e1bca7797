"""What ``eqv2calc train`` refuses: a run folder in use, config values that silently break a
training, ``--resume`` with options other than the run's, resuming where there is nothing to
resume; and the error format (one ``error: ...`` line, exit status 1, no traceback)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from eqv2calc.checkpoint import load_checkpoint
from eqv2calc.cli import main
from eqv2calc.training import (
    ResumeMismatchError,
    Trainer,
    config_from_dict,
    load_config,
)

MODELS = Path(__file__).resolve().parents[1] / "eqv2calc" / "registry" / "models"

TINY_MODEL = {
    "cutoff": 4.0,
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

_HOLD_LOCK = """
import sys, time
from eqv2calc.io import lock_directory
with lock_directory(sys.argv[1], "train"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _frames(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 * (1 + rng.uniform(-0.02, 0.02)), cubic=True)
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder with train.extxyz (8 labelled Cu4 cells), other.extxyz and cfg.yaml."""
    folder = tmp_path_factory.mktemp("train_data")
    write(folder / "train.extxyz", _frames(8), format="extxyz")
    write(folder / "other.extxyz", _frames(6, seed=5), format="extxyz")
    model = "\n".join(f"  {k}: {v}" for k, v in TINY_MODEL.items())
    (folder / "cfg.yaml").write_text(
        f"data:\n  train: train.extxyz\n  val_fraction: 0.25\nmodel:\n{model}\n"
        "optim:\n  lr: 2.0e-3\n  warmup_fraction: 0.0\n"
        "run:\n  epochs: 2\n  batch_size: 3\n  device: cpu\n  progress: false\n  seed: 1\n"
    )
    return folder


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory) -> Path:
    """A run folder of a 2-epoch run stopped after epoch 1 (last.pt, best.pt, metrics)."""
    out = tmp_path_factory.mktemp("runs") / "interrupted"
    cfg = load_config(data / "cfg.yaml")
    cfg.run.out_dir = str(out)
    Trainer(cfg, log=lambda line: None).fit(max_epochs=1)
    return out


def _copy_run(run: Path, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _error_line(result) -> str:
    """The command's one error line (stderr), checked for the project's format."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "Error: " not in result.stderr
    return lines[-1]


# ------------------------------------------------------------------------------ the run folder


def test_train_refuses_a_folder_another_run_holds_and_leaves_it_untouched(
    runner, data, interrupted, tmp_path
):
    out, _ = _copy_run(interrupted, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        before = _contents(out)  # with the holder's lock file
        # --overwrite would replace last.pt, best.pt and metrics.jsonl if the lock were ignored
        result = runner.invoke(
            main,
            ["train", str(data / "cfg.yaml"), "--out", str(out), "--overwrite", "--seed", "3"],
        )
        line = _error_line(result)
        assert f"output folder {out} is in use by pid {proc.pid}" in line and "(train)" in line
        assert _contents(out) == before
        resumed = runner.invoke(main, ["train", "--resume", "--out", str(out)])
        assert f"in use by pid {proc.pid}" in _error_line(resumed)
        assert _contents(out) == before
    finally:
        proc.kill()
        proc.wait()


def test_train_api_holds_the_folder_lock_for_the_whole_run(data, tmp_path, monkeypatch):
    from eqv2calc.io import LOCK_FILE_NAME
    from eqv2calc.training import trainer as trainer_module

    cfg = load_config(data / "cfg.yaml")
    cfg.run.out_dir = str(tmp_path / "run")
    cfg.run.epochs = 1
    seen = []
    fit = trainer_module.Trainer.fit

    def checking_fit(self, *args, **kwargs):
        seen.append((Path(cfg.run.out_dir) / LOCK_FILE_NAME).is_file())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "fit", checking_fit)
    trainer_module.train(cfg, log=lambda line: None)
    assert seen == [True]
    assert not (tmp_path / "run" / LOCK_FILE_NAME).exists()  # released at the end


# ------------------------------------------------------------------------------ config values


def _validated(**sections) -> None:
    options = {"data": {"train": "x.extxyz"}}
    options.update(sections)
    config_from_dict(options).validate()


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"loss": {"forces_weight": -10}},
            "loss.forces_weight must be a finite number >= 0, got -10",
        ),
        ({"loss": {"energy_weight": float("nan")}}, "loss.energy_weight must be a finite number"),
        (
            {"loss": {"fixed_atom_force_weight": -1}},
            "loss.fixed_atom_force_weight must be a finite number >= 0",
        ),
        (
            {"loss": {"energy_weight": 0, "forces_weight": 0, "stress_weight": 0}},
            "loss.stress_weight are all 0: nothing would be trained",
        ),
        ({"optim": {"min_lr_ratio": 5}}, r"optim.min_lr_ratio must be in \[0, 1\]"),
        ({"optim": {"min_lr_ratio": -0.1}}, r"optim.min_lr_ratio must be in \[0, 1\]"),
        ({"optim": {"warmup_factor": 2}}, r"optim.warmup_factor must be in \[0, 1\]"),
        ({"optim": {"clip_grad_norm": -1}}, "optim.clip_grad_norm must be a finite number > 0"),
        ({"optim": {"weight_decay": -1}}, "optim.weight_decay must be a finite number >= 0"),
        ({"optim": {"lr": float("inf")}}, "optim.lr must be a finite number > 0"),
        (
            {"run": {"energy_kind": "adsorbtion"}},
            "run.energy_kind must be 'total' or 'adsorption'.*got 'adsorbtion'",
        ),
    ],
)
def test_config_values_that_break_training_are_refused(sections, message):
    with pytest.raises(ValueError, match=message):
        _validated(**sections)


def test_config_edge_values_are_accepted():
    _validated(optim={"clip_grad_norm": None, "min_lr_ratio": 0.0, "weight_decay": 0.0})
    _validated(optim={"clip_grad_norm": 0, "min_lr_ratio": 1.0, "warmup_factor": 1.0})
    _validated(loss={"energy_weight": 0, "stress_weight": 0}, run={"energy_kind": "adsorption"})
    # the defaults are valid too
    config_from_dict({"data": {"train": "x.extxyz"}}).validate()


def test_cli_refuses_a_negative_loss_weight_before_any_work(runner, data, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((data / "cfg.yaml").read_text() + "loss:\n  forces_weight: -10\n")
    shutil.copy(data / "train.extxyz", tmp_path / "train.extxyz")
    result = runner.invoke(main, ["train", str(cfg), "--out", str(tmp_path / "run")])
    line = _error_line(result)
    assert "loss.forces_weight must be a finite number >= 0, got -10" in line
    assert not (tmp_path / "run").exists()


def test_checkpoint_with_an_unknown_energy_kind_loads_with_a_warning_not_silently(tmp_path):
    """Files written before training refused such values keep loading, but say so."""
    state = torch.load(MODELS / "eqv2calc-demo-emt.pt", map_location="cpu", weights_only=True)
    assert state["config"]["eqv2calc"]["energy_kind"] == "total"
    state["config"]["eqv2calc"]["energy_kind"] = "adsorbtion"
    path = tmp_path / "typo.pt"
    torch.save(state, path)
    with pytest.warns(UserWarning, match=rf"{path}: .*energy_kind is 'adsorbtion'"):
        assert load_checkpoint(path).energy_kind == "total"
    for written, kind in (("adsorption", "adsorption"), ("Total", "total"), ("emt", "total")):
        state["config"]["eqv2calc"]["energy_kind"] = written
        torch.save(state, path)
        assert load_checkpoint(path).energy_kind == kind


# ------------------------------------------------------------------------------ --resume


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lr", "0.1"], "--lr differs from the run being resumed (optim.lr was 0.002, now 0.1)"),
        (
            ["--forces", "gradient"],
            "--forces differs from the run being resumed (heads.forces was direct, now gradient)",
        ),
        (
            ["--epochs", "5"],
            "--epochs differs from the run being resumed (run.epochs was 2, now 5)",
        ),
        (
            ["--batch-size", "2"],
            "--batch-size differs from the run being resumed (run.batch_size was 3, now 2)",
        ),
        (["--train", "{data}/other.extxyz"], "--train differs from the run being resumed"),
        (["--envelope", "polynomial"], "--envelope differs from the run being resumed"),
        (["--seed", "4"], "--seed differs from the run being resumed (run.seed was 1, now 4)"),
    ],
)
def test_resume_refuses_an_option_the_run_cannot_honour(
    runner, data, interrupted, tmp_path, args, expected
):
    out, before = _copy_run(interrupted, tmp_path)
    args = [a.format(data=data) for a in args]
    result = runner.invoke(main, ["train", "--resume", "--out", str(out), *args])
    line = _error_line(result)
    assert f"cannot resume {out / 'last.pt'}: {expected}" in line
    assert f"--init {out / 'last.pt'}" in line  # what to do instead
    assert _contents(out) == before  # nothing trained, nothing written


def test_resume_with_a_changed_config_file_names_the_key(runner, data, interrupted, tmp_path):
    out, before = _copy_run(interrupted, tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        (data / "cfg.yaml")
        .read_text()
        .replace("train: train.extxyz", f"train: {data}/train.extxyz")
        + "loss:\n  forces_weight: 3.0\n"
    )
    result = runner.invoke(main, ["train", str(cfg), "--resume", "--out", str(out)])
    line = _error_line(result)
    assert "loss.forces_weight differs from the run being resumed (was 10.0, now 3.0)" in line
    assert _contents(out) == before


def test_resume_accepts_the_run_own_values_and_runtime_options(
    runner, data, interrupted, tmp_path, monkeypatch
):
    out, _ = _copy_run(interrupted, tmp_path)
    monkeypatch.chdir(data)  # --train spelled relative to another folder than the run's
    result = runner.invoke(
        main,
        [
            "train",
            "--resume",
            "--out",
            str(out),
            "--train",
            "train.extxyz",
            "--lr",
            "0.002",
            "--epochs",
            "2",
            "--batch-size",
            "3",
            "--forces",
            "direct",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "resuming from" in result.stderr and "epochs completed: 2" in result.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_trainer_refuses_a_resume_with_other_options(data, interrupted, tmp_path):
    out, before = _copy_run(interrupted, tmp_path)
    cfg = load_config(out / "config.yaml")
    cfg.run.out_dir, cfg.run.resume = str(out), True
    cfg.optim.lr, cfg.model["max_neighbors"] = 0.1, 6
    with pytest.raises(ResumeMismatchError) as err:
        Trainer(cfg, log=lambda line: None)
    assert err.value.differences == [("optim.lr", 0.002, 0.1), ("model.max_neighbors", 12, 6)]
    assert "optim.lr was 0.002, now 0.1" in str(err.value)
    assert _contents(out) == before


# ------------------------------------------------------------------------------ error format


def test_resume_in_a_folder_without_a_run_says_so(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, where in (("empty", "holds no last.pt"), ("absent", "does not exist")):
        result = runner.invoke(main, ["train", "--resume", "--out", str(tmp_path / folder)])
        line = _error_line(result)
        assert line.startswith("error: --resume: nothing to resume from")
        assert f"{tmp_path / folder} {where}" in line and "data.train" not in line
    assert not (tmp_path / "absent").exists()


def test_train_errors_are_one_error_line(runner, tmp_path):
    result = runner.invoke(
        main, ["train", "--train", str(tmp_path / "nope.extxyz"), "--out", str(tmp_path / "r")]
    )
    assert "nope.extxyz: no such training data file" in _error_line(result)
    assert not (tmp_path / "r").exists()  # the failed run leaves no empty folder behind
    both = runner.invoke(main, ["train", "--resume", "--overwrite", "--out", str(tmp_path)])
    assert both.exit_code == 2 and both.stderr.startswith("error: --resume and --overwrite")


def test_help_says_what_resume_accepts(runner):
    text = runner.invoke(main, ["train", "--help"], terminal_width=200).stdout
    assert "only --device, --amp/--no-amp, --threads, --progress and --test may" in text
    assert "--init <out>/last.pt" in text
