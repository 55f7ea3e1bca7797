"""``eqv2calc train``: train or fine-tune an EquiformerV2 model (options → :mod:`eqv2calc.training`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from eqv2calc.cli._common import FiniteFloat, fail

_HELP = """Train or fine-tune an EquiformerV2 model on energies and forces (stress optional).

\b
  eqv2calc train config.yaml                      train from scratch as the config says
  eqv2calc train --train data.extxyz --out run1   defaults: small model, 20 epochs
  eqv2calc train config.yaml --init eqV2_31M_omat_mp_salex.pt --freeze-backbone
  eqv2calc train --train data.extxyz --init demo --forces gradient --distill-epochs 1 \\
      --envelope polynomial --max-neighbors 100   conservative fine-tune (gradient forces)
  eqv2calc train --resume --out run1              continue an interrupted run

Data: extxyz (or any ASE-readable file) or an ASE database (.db) whose structures carry
energy (eV) and forces (eV/Å), and optionally stress (eV/Å³). The YAML config has the
sections data, model, heads, loss, optim and run (see eqv2calc.training.config); options
given here override it. Data paths in the config are relative to the config file.

--resume continues the interrupted run in --out exactly (same data, model, loss, optimizer and
learning-rate schedule): only --device, --amp/--no-amp, --threads, --progress and --test may
differ from the run's own options; any other option given must equal the run's, or train
refuses to start. To go on from a run with other options (more --epochs, another --lr,
--forces gradient, new data), start a new run from its weights: --init <out>/last.pt (or
best.pt) with another --out.

The run folder is locked while train runs: a second train (or relax, md...) into it is
refused, naming the run that holds it.

After every epoch the run folder gets last.pt (everything needed by --resume), best.pt when
the validation loss improved (the EMA weights; use it with --model best.pt), and a line in
metrics.jsonl. Checkpoints use fairchem's hydra layout (or --layout classic).

--forces gradient makes the model conservative: forces = −∂E/∂x and stress = (1/V)·∂E/∂ε
through the same backbone (slower to train: the force loss needs second derivatives). The
checkpoint records it, and eqv2calc computes gradients whenever it loads the file.
--distill-epochs N first trains N epochs on the initial model's own predictions (its
direct-head forces), then on the labels. A gradient model conserves energy only if its energy is
continuous: --envelope polynomial fades every edge out smoothly at the cutoff, and a
--max-neighbors above any atom's neighbour count keeps the cap from swapping neighbours.
"""


@click.command("train", help=_HELP)
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--train",
    "train_path",
    type=click.Path(dir_okay=False),
    help="Training data (overrides data.train).",
)
@click.option(
    "--val",
    "val_path",
    type=click.Path(dir_okay=False),
    help="Validation data (default: hold out data.val_fraction).",
)
@click.option(
    "--test",
    "test_path",
    type=click.Path(dir_okay=False),
    help="Test data, evaluated with the best model at the end.",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Run folder (overrides run.out_dir)."
)
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Structures per optimizer step.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), help="Peak learning rate.")
@click.option(
    "--init",
    "init",
    type=click.Path(dir_okay=False),
    help="Checkpoint to fine-tune from (path or registry name).",
)
@click.option(
    "--freeze-backbone",
    is_flag=True,
    default=None,
    help="With --init: train only the output heads.",
)
@click.option(
    "--forces",
    type=click.Choice(["direct", "gradient"]),
    help="Force/stress heads (direct) or energy derivatives (gradient, conservative); "
    "default: as the --init checkpoint (heads.forces).",
)
@click.option(
    "--envelope",
    type=click.Choice(["none", "polynomial"]),
    help="Smooth cutoff (model.envelope): 'polynomial' makes the energy continuous as atoms cross"
    " the cutoff, as gradient-force models need; allowed with --init (adds no parameters).",
)
@click.option(
    "--max-neighbors",
    type=click.IntRange(min=1),
    help="Neighbour cap (model.max_neighbors); with --envelope polynomial choose it above any"
    " atom's neighbour count within the cutoff, or the energy jumps when the cap swaps one.",
)
@click.option(
    "--distance-basis-width",
    type=FiniteFloat(min=0.0, min_open=True),
    help="Width of each Gaussian of the 600-function distance basis, in centre spacings"
    " (model.distance_basis_width; the reference's 2.0 is 0.015 Å at a 4.5 Å cutoff). Wider"
    " (e.g. 12: 0.09 Å) gives smooth radial functions, so a small model's curvature at minima"
    " (modes, phonons) is not dominated by bumps; with --init the checkpoint's radial layers are"
    " rescaled to the new width.",
)
@click.option(
    "--distill-epochs",
    type=click.IntRange(min=0),
    help="With --init and --forces gradient: first epochs trained on the initial model's own "
    "predictions (run.distill_epochs; counted in --epochs).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in --out from its last.pt (config defaults to "
    "<out>/config.yaml), with the run's own options: only --device, --amp, --threads, --progress "
    "and --test may differ; another value of any other option is refused (start a new run with "
    "--init <out>/last.pt instead).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Start afresh in a run folder that holds an earlier run (its checkpoints and metrics "
    "are replaced); without it (and without --resume) train refuses to start there.",
)
@click.option(
    "--layout", type=click.Choice(["hydra", "classic"]), help="Checkpoint layout (default hydra)."
)
@click.option("--device", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
@click.option("--amp/--no-amp", default=None, help="bfloat16 mixed precision on CUDA.")
@click.option("--seed", type=int, help="Seed of the split, initial weights and shuffling.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.")
@click.option("--progress/--no-progress", default=None, help="Progress bar per epoch.")
def train_command(
    *,
    config,
    train_path,
    val_path,
    test_path,
    out_dir,
    epochs,
    batch_size,
    lr,
    init,
    freeze_backbone,
    forces,
    envelope,
    max_neighbors,
    distance_basis_width,
    distill_epochs,
    resume,
    overwrite,
    layout,
    device,
    amp,
    seed,
    threads,
    progress,
) -> None:
    from eqv2calc.checkpoint import CheckpointError
    from eqv2calc.io import OutputDirLocked, lock_directory
    from eqv2calc.training import (
        ResumeMismatchError,
        TrainConfig,
        TrainingDataError,
        load_config,
        train,
    )

    if resume and overwrite:
        fail(
            "--resume and --overwrite exclude each other: --resume continues the run in the "
            "folder, --overwrite replaces it",
            code=2,
        )
    if config is None and resume and out_dir and (Path(out_dir) / "config.yaml").is_file():
        config = str(Path(out_dir) / "config.yaml")
    try:  # a config error is a usage error (exit 2), found before any data is read
        cfg = load_config(config) if config else TrainConfig()
    except (ValueError, FileNotFoundError) as err:
        fail(str(err), code=2)
    overrides = {
        ("data", "train"): train_path,
        ("data", "val"): val_path,
        ("data", "test"): test_path,
        ("run", "out_dir"): out_dir,
        ("run", "epochs"): epochs,
        ("run", "batch_size"): batch_size,
        ("optim", "lr"): lr,
        ("run", "freeze_backbone"): freeze_backbone,
        ("heads", "forces"): forces,
        ("run", "distill_epochs"): distill_epochs,
        ("run", "layout"): layout,
        ("run", "device"): device,
        ("run", "amp"): amp,
        ("run", "seed"): seed,
        ("run", "num_threads"): threads,
        ("run", "progress"): progress,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(cfg, section), key, value)
    for key, value in (
        ("envelope", envelope),
        ("max_neighbors", max_neighbors),
        ("distance_basis_width", distance_basis_width),
    ):
        if value is not None:
            cfg.model[key] = value
    given = {  # config key -> the option that set it on this command line
        f"{section}.{key}": _OPTION_NAMES[f"{section}.{key}"]
        for (section, key), value in overrides.items()
        if value is not None and f"{section}.{key}" in _OPTION_NAMES
    }
    given.update(
        {
            f"model.{key}": f"--{key.replace('_', '-')}"
            for key, value in (
                ("envelope", envelope),
                ("max_neighbors", max_neighbors),
                ("distance_basis_width", distance_basis_width),
            )
            if value is not None
        }
    )
    folder = Path(cfg.run.out_dir)
    if resume and not (folder / "last.pt").is_file():
        where = "does not exist" if not folder.is_dir() else "holds no last.pt"
        fail(
            f"--resume: nothing to resume from: the run folder {folder} {where} (train writes "
            f"last.pt there after each epoch); start a new run without --resume, or give the "
            "--out of the run to continue"
        )
    created = not folder.exists()
    try:
        if init is not None:
            cfg.run.init = _resolve_init(init)
            given["run.init"] = "--init"
        cfg.run.resume = bool(resume)
        cfg.validate()
        with lock_directory(folder, "train"):  # held for the whole run: one train per folder
            earlier = [p for p in (folder / "last.pt", folder / "best.pt") if p.exists()]
            if earlier and not resume and not overwrite:
                fail(
                    f"{earlier[0]} exists (an earlier run in {cfg.run.out_dir}); pass --resume "
                    "to continue it, --overwrite to start afresh there, or another --out",
                    code=2,
                )
            result = train(cfg, log=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except ResumeMismatchError as err:
        fail(_resume_message(err, given))
    except (
        TrainingDataError,
        CheckpointError,
        OutputDirLocked,
        ValueError,
        FileNotFoundError,
        FloatingPointError,
    ) as err:
        fail(str(err))
    finally:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # refused unless empty

    click.echo(f"epochs completed: {result.epochs_completed}")
    click.echo(f"last checkpoint:  {result.last_checkpoint}")
    if result.best_checkpoint is not None:
        click.echo(
            f"best checkpoint:  {result.best_checkpoint} (epoch {result.best_metrics.get('epoch')})"
        )
    for label, metrics, prefix in (
        ("validation", result.best_metrics, "val_"),
        ("test", result.test_metrics or {}, ""),
    ):
        parts = [
            f"{name} {metrics[prefix + key] * scale:.{digits}f} {unit}"
            for name, key, scale, unit, digits in (
                ("energy", "energy_per_atom_mae", 1000, "meV/atom", 1),
                ("forces", "forces_mae", 1000, "meV/Å", 1),
                ("stress", "stress_mae", 1000, "meV/Å³", 2),
            )
            if prefix + key in metrics
        ]
        if parts:
            click.echo(f"{label} MAE: " + ", ".join(parts))


#: config key -> command-line option, to name an option that differs on --resume
_OPTION_NAMES = {
    "data.train": "--train",
    "data.val": "--val",
    "data.test": "--test",
    "run.epochs": "--epochs",
    "run.batch_size": "--batch-size",
    "optim.lr": "--lr",
    "run.init": "--init",
    "run.freeze_backbone": "--freeze-backbone",
    "heads.forces": "--forces",
    "run.distill_epochs": "--distill-epochs",
    "run.layout": "--layout",
    "run.seed": "--seed",
}


def _resume_message(err, given: dict[str, str]) -> str:
    """The one-line refusal of a --resume whose options differ from the run's: each option
    by its command-line name when given there, else by its config key."""
    parts = []
    for key, old, new in err.differences:
        option = given.get(key)
        if option is not None:
            parts.append(
                f"{option} differs from the run being resumed ({key} was {old}, now {new})"
            )
        else:
            parts.append(f"{key} differs from the run being resumed (was {old}, now {new})")
    last = err.checkpoint
    return (
        f"cannot resume {last}: " + "; ".join(parts) + ". --resume continues the same run "
        "(same data, model, loss, optimizer and schedule): resume without these options, or "
        f"start a new run from its weights with --init {last} (or "
        f"{last.with_name('best.pt')}) and another --out"
    )


def _resolve_init(name: str) -> str:
    """A path as is; otherwise a registry name (downloaded when needed)."""
    if Path(name).exists():
        return name
    from eqv2calc.registry import resolve_model

    return str(resolve_model(name))
