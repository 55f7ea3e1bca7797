"""The training loop: set-up from a :class:`TrainConfig`, epochs, validation, checkpoints, resume.

>>> from eqv2calc.training import load_config, train
>>> result = train(load_config("train.yaml"))
>>> result.best_checkpoint          # load with EquiformerV2Calculator(model=...)

Checkpoints (reference layout, written atomically with :func:`eqv2calc.checkpoint.save_checkpoint`):

* ``out_dir/last.pt`` after every epoch: raw weights as ``state_dict``, the EMA weights as
  ``ema``, optimizer and scheduler state, epoch/step counters and the history — everything
  ``--resume`` needs;
* ``out_dir/best.pt`` whenever the validation loss improves: the evaluated weights (the EMA
  weights when EMA is on) as ``state_dict``, no optimizer state (a lean, shareable file).

A fresh run (not a resume) first removes an earlier run's ``last.pt``, ``best.pt``,
``metrics.jsonl`` and ``summary.json`` from ``out_dir`` (``eqv2calc train`` refuses to start in
such a folder without ``--overwrite``), so its metrics are never mixed with the earlier run's.

Resuming restarts at the epoch after the last completed one; shuffling is seeded per epoch and
the model has no dropout, so an interrupted and resumed run reproduces an uninterrupted one.
It therefore takes the run's own options: any other than :data:`RESUME_MAY_CHANGE` (device,
threads, progress bar, the test set) that differs from the config recorded in ``last.pt``
raises :class:`ResumeMismatchError` (a new run with ``run.init: last.pt`` starts from its
weights with other options). :func:`train` holds the run folder's lock for the whole run.
The model implements no dropout / drop-path: trainings run without them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eqv2calc.checkpoint import load_checkpoint, save_checkpoint
from eqv2calc.checkpoint.load import GraphSettings
from eqv2calc.checkpoint.names import model_config, our_option_names
from eqv2calc.checkpoint.reader import read_file
from eqv2calc.device import resolve_device
from eqv2calc.io import lock_directory, write_json_atomic
from eqv2calc.model.potential import EquiformerV2Potential, HeadSpec
from eqv2calc.model.radial import widen_distance_basis
from eqv2calc.training.config import FINE_TUNE_OPTIONS, TrainConfig, save_config
from eqv2calc.training.data import (
    LabelledStructure,
    iterate_batches,
    load_dataset,
    num_batches,
    split_indices,
)
from eqv2calc.training.ema import ExponentialMovingAverage
from eqv2calc.training.gradient import distillation_items, predict
from eqv2calc.training.loss import ErrorAccumulator, LossScales, compute_loss
from eqv2calc.training.schedule import WarmupCosine
from eqv2calc.training.statistics import (
    NUM_REFERENCE_ELEMENTS,
    DatasetStatistics,
    composition_matrix,
    dataset_statistics,
    fit_element_references,
)

STRESS_HEAD = HeadSpec(
    "rank2", {"decompose": True, "use_source_target_embedding": True, "extensive": False}
)
TRAINING_KEY = "eqv2calc_training"


#: options a resumed run may set otherwise than the interrupted run: where and how it runs, and
#: the test set evaluated once at the end. Every other option (data, model, heads, loss,
#: optimizer, schedule: epochs, batch size, seed...) must be the run's own, or the resumed run
#: would not continue it (:class:`ResumeMismatchError`).
RESUME_MAY_CHANGE = frozenset(
    {"run.resume", "run.out_dir", "run.device", "run.amp", "run.num_threads", "run.progress"}
    | {"data.test"}
)
_PATH_OPTIONS = ("data.train", "data.val", "data.test", "run.init")
_MISSING = object()


class ResumeMismatchError(ValueError):
    """``run.resume`` with options that differ from those of the run being resumed.

    Attributes:
        checkpoint: the ``last.pt`` being resumed.
        differences: ``(key, value in the run, value now)`` per differing option, ``key`` as
            in the config (``optim.lr``, ``model.envelope``...).
    """

    def __init__(self, checkpoint: Path, differences: list[tuple[str, object, object]]) -> None:
        self.checkpoint = Path(checkpoint)
        self.differences = differences
        parts = "; ".join(f"{key} was {old!r}, now {new!r}" for key, old, new in differences)
        super().__init__(
            f"cannot resume {checkpoint} with other options than the run's own: {parts}. "
            "Resuming continues the same run (same data, model, loss, optimizer and schedule); "
            f"resume with the run's options, or start a new run in another folder with "
            f"run.init: {checkpoint} (its weights) and the new options"
        )


def resume_differences(
    saved: dict, config: TrainConfig, model: EquiformerV2Potential
) -> list[tuple[str, object, object]]:
    """The options of ``config`` that differ from ``saved`` (the config recorded in the
    ``last.pt`` being resumed, as :meth:`TrainConfig.to_dict`), but for
    :data:`RESUME_MAY_CHANGE`: ``(key, saved value, value now)`` each.

    Paths count as equal when they name the same file; ``heads.forces`` and
    ``run.energy_kind`` left unset mean the resumed ``model``'s; a ``model`` option counts as
    equal when it is the run's or the checkpoint's own (a fine-tune ignores the architecture
    options)."""
    differences: list[tuple[str, object, object]] = []
    for section in ("data", "heads", "loss", "optim", "run"):
        recorded = saved.get(section)
        if not isinstance(recorded, dict):
            continue  # an older checkpoint without the section: nothing to compare
        for f in dataclasses.fields(getattr(config, section)):
            key = f"{section}.{f.name}"
            old, new = recorded.get(f.name, _MISSING), getattr(getattr(config, section), f.name)
            if key in RESUME_MAY_CHANGE or old is _MISSING:
                continue
            if key == "heads.forces":
                old, new = old or model.forces_kind, new or model.forces_kind
            elif key == "run.energy_kind":
                old, new = old or model.energy_kind, new or model.energy_kind
            if old == new:
                continue
            if key in _PATH_OPTIONS and old is not None and new is not None:
                if os.path.realpath(str(old)) == os.path.realpath(str(new)):
                    continue
            differences.append((key, old, new))
    try:
        recorded_model = our_option_names(dict(saved.get("model") or {}))
    except (ValueError, TypeError):
        recorded_model = {}
    for name, new in our_option_names(config.model).items():
        old = recorded_model.get(name, _MISSING)
        if new == old or new == getattr(model.config, name, _MISSING):
            continue
        if old is _MISSING:
            old = getattr(model.config, name, None)
        differences.append((f"model.{name}", old, new))
    return differences


@dataclass
class TrainResult:
    """What a run produced. Metrics are MAEs in eV/atom, eV, eV/Å and eV/Å³."""

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    epochs_completed: int
    history: list[dict] = field(default_factory=list)
    best_metrics: dict = field(default_factory=dict)
    test_metrics: dict | None = None
    statistics: DatasetStatistics | None = None


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm/scale vectors and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "embedding" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class Trainer:
    """Train or fine-tune an :class:`EquiformerV2Potential` (see the module docstring).

    Args:
        config: the run's configuration (validated here).
        log: receives one line per event (set-up facts, one summary per epoch).
    """

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        config.validate()
        self.config = config
        self.log = log
        self.out_dir = Path(config.run.out_dir)
        self.last_path = self.out_dir / "last.pt"
        self.best_path = self.out_dir / "best.pt"
        self.history: list[dict] = []
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.best_metric = math.inf
        self.best_metrics: dict = {}
        self.statistics: DatasetStatistics | None = None
        self._setup()

    # ------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        c = self.config
        for key in (
            "train",
            "val",
            "test",
        ):  # absolute, so that the saved config.yaml works anywhere
            if getattr(c.data, key):
                setattr(c.data, key, str(Path(getattr(c.data, key)).resolve()))
        if c.run.num_threads:
            torch.set_num_threads(int(c.run.num_threads))
        self.device = resolve_device(c.run.device, option="run.device", fix="'cpu' or 'auto'")
        torch.manual_seed(c.run.seed)
        model, resume_state, graph = self._starting_model()
        self._load_data(*graph)
        self._prepare_model(model, resume_state)
        self._setup_optimizer(resume_state)
        self._setup_distillation()

    def _starting_model(
        self,
    ) -> tuple[EquiformerV2Potential | None, dict | None, tuple[float, int, bool, int]]:
        """The model to start from (``None``: build a new one), the resume state and the graph
        settings (cutoff Å, max neighbours, strict cap, largest atomic number)."""
        c = self.config
        resume_state = None
        if c.run.resume:
            if not self.last_path.is_file():
                raise FileNotFoundError(
                    f"{self.last_path}: nothing to resume from (run.resume is set)"
                )
            resume_state = read_file(self.last_path)
            loaded = load_checkpoint(self.last_path)
            model, settings = loaded.model, loaded.graph_settings
            saved = (resume_state.get(TRAINING_KEY) or {}).get("config")
            if isinstance(saved, dict):
                differences = resume_differences(saved, c, model)
                if differences:
                    raise ResumeMismatchError(self.last_path, differences)
            self.log(
                f"resuming from {self.last_path} (epoch {resume_state.get('epoch', 0)} completed)"
            )
        elif c.run.init:
            loaded = load_checkpoint(c.run.init)
            model, settings = loaded.model, loaded.graph_settings
            self.log(
                f"fine-tuning {c.run.init} ({loaded.layout} layout, {sum(p.numel() for p in model.parameters()):,} parameters)"
            )
            settings = self._fine_tune_graph(model, settings)
        else:
            model = None
            opts = c.model_options()
            settings = (
                float(opts["cutoff"]),
                opts["max_neighbors"],
                bool(opts.get("strict_neighbor_cap", True)),
            )
        if model is not None:
            cutoff, max_neighbors, strict = settings.cutoff, settings.max_neighbors, settings.strict
            max_z = int(model.config.num_elements) - 1
        else:
            cutoff, max_neighbors, strict = settings
            max_z = int(c.model_options().get("num_elements", 90)) - 1
        return model, resume_state, (cutoff, max_neighbors, strict, max_z)

    def _fine_tune_graph(self, model, settings: GraphSettings) -> GraphSettings:
        """Apply the ``model`` options a fine-tune may change (they add no parameters: the
        envelope, the neighbour cap, the distance-basis width); log the others as ignored (the
        checkpoint fixes the architecture). Warn when gradient forces are trained without a
        smooth graph."""
        c = self.config
        for key, value in our_option_names(c.model).items():
            if key not in FINE_TUNE_OPTIONS:
                self.log(f"model.{key} ignored: the --init checkpoint fixes the architecture")
            elif getattr(model.config, key) != value:
                self.log(f"model.{key}: {getattr(model.config, key)!r} -> {value!r}")
                setattr(model.config, key, value)
        model.config.__post_init__()  # validates the changed options
        if model.backbone.distance_basis.width != model.config.distance_basis_width:
            widen_distance_basis(model, float(model.config.distance_basis_width))
        if c.heads.forces == "gradient" and model.config.envelope == "none":
            self.log(
                "warning: gradient forces without a smooth cutoff: the energy jumps when atoms"
                " cross the cutoff or the neighbour cap swaps a neighbour (NVE MD drifts); use"
                " --envelope polynomial and a --max-neighbors above any atom's neighbour count"
            )
        return GraphSettings(
            settings.cutoff,
            model.config.max_neighbors,
            model.config.strict_neighbor_cap,
        )

    def _load_data(self, cutoff: float, max_neighbors: int, strict: bool, max_z: int) -> None:
        """Read the training, validation and test sets as graphs (cutoff in Å)."""
        c = self.config
        data_kwargs = dict(
            cutoff=cutoff,
            max_neighbors=max_neighbors,
            strict=strict,
            max_atomic_number=max_z,
            energy_key=c.data.energy_key,
            forces_key=c.data.forces_key,
            stress_key=c.data.stress_key,
            force_weights_key=c.data.force_weights_key,
            fixed_atom_force_weight=c.loss.fixed_atom_force_weight,
        )
        self.data_kwargs = data_kwargs
        t0 = time.time()
        items = load_dataset(c.data.train, **data_kwargs)
        if c.data.val:
            self.train_items, self.val_items = items, load_dataset(c.data.val, **data_kwargs)
        else:
            train_idx, val_idx = split_indices(len(items), c.data.val_fraction, c.run.seed)
            self.train_items = [items[i] for i in train_idx]
            self.val_items = [items[i] for i in val_idx]
        self.test_items = load_dataset(c.data.test, **data_kwargs) if c.data.test else []
        self.log(
            f"data: {len(self.train_items)} training, {len(self.val_items)} validation"
            + (f", {len(self.test_items)} test" if self.test_items else "")
            + f" structures; graphs (cutoff {cutoff} Å, max_neighbors {max_neighbors}) built in {time.time() - t0:.1f} s"
        )

    def _prepare_model(
        self, model: EquiformerV2Potential | None, resume_state: dict | None
    ) -> None:
        """Build or adapt the model, set its output kinds, freeze and move it to the device."""
        c = self.config
        if model is None:
            model = self._new_model()
        elif resume_state is None:
            model = self._prepare_finetune(model)
        if c.run.energy_kind:
            model.energy_kind = c.run.energy_kind
        if c.heads.forces and resume_state is None:
            model.forces_kind = c.heads.forces
        if model.forces_kind == "gradient":
            self.log(
                "forces: gradient (−∂E/∂x, stress (1/V)·∂E/∂ε, by autograd through the backbone; "
                "the direct force/stress heads stay in the file, unused and untrained)"
            )
        if c.run.layout == "classic" and model.has_stress:
            raise ValueError(
                "run.layout 'classic' cannot hold the model's stress head; use 'hydra'"
            )
        if c.run.freeze_backbone:
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        self.model = model.to(self.device, torch.float32).train()
        self.scales = LossScales.from_model(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.log(
            f"model: {sum(p.numel() for p in self.model.parameters()):,} parameters "
            f"({sum(p.numel() for p in trainable):,} trained), heads {sorted(self.model.heads)}, device {self.device}"
        )

    def _setup_optimizer(self, resume_state: dict | None) -> None:
        """AdamW, warm-up + cosine schedule and EMA; restore them when resuming, else write
        ``config.yaml``."""
        c = self.config
        self.steps_per_epoch = num_batches(len(self.train_items), c.run.batch_size)
        total = self.steps_per_epoch * c.run.epochs
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, c.optim.weight_decay), lr=c.optim.lr
        )
        self.scheduler = WarmupCosine(
            self.optimizer,
            total,
            int(c.optim.warmup_fraction * total),
            c.optim.warmup_factor,
            c.optim.min_lr_ratio,
        )
        self.ema = (
            ExponentialMovingAverage(self.model, c.optim.ema_decay) if c.optim.ema_decay else None
        )
        if resume_state is not None:
            self._restore(resume_state)
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            init = os.path.realpath(c.run.init) if c.run.init else None
            for name in ("last.pt", "best.pt", "metrics.jsonl", "summary.json"):
                stale = self.out_dir / name  # an earlier run's: not to be mixed with this one's
                if os.path.realpath(stale) != init:
                    stale.unlink(missing_ok=True)
            save_config(c, self.out_dir / "config.yaml")

    def _setup_distillation(self) -> None:
        """The teacher's own predictions as labels for the first ``run.distill_epochs``."""
        c = self.config
        self.distill_items: list[LabelledStructure] = []
        if c.run.distill_epochs and self.epoch < c.run.distill_epochs:
            loaded = load_checkpoint(c.run.init, device=self.device)
            teacher_items = self._teacher_items(loaded.graph_settings)
            labels = distillation_items(loaded.model, teacher_items, c.run.batch_size, self.device)
            # the teacher's predictions on its own graphs, as labels of the training graphs
            self.distill_items = [
                dataclasses.replace(item, energy=t.energy, forces=t.forces, stress=t.stress)
                for item, t in zip(self.train_items, labels, strict=True)
            ]
            del loaded
            self.log(
                f"distillation: epochs 1-{c.run.distill_epochs} train on {c.run.init}'s own "
                "predictions (energy, direct-head forces and stress), then on the labels"
            )

    def _teacher_items(self, settings: GraphSettings) -> list[LabelledStructure]:
        """The training structures with the graphs the distillation teacher was made for
        (a fine-tune that lifts the neighbour cap trains on other graphs than it saw)."""
        ours = self.data_kwargs
        if (settings.cutoff, settings.max_neighbors, settings.strict) == (
            ours["cutoff"],
            ours["max_neighbors"],
            ours["strict"],
        ):
            return self.train_items
        kwargs = dict(
            ours,
            cutoff=settings.cutoff,
            max_neighbors=settings.max_neighbors,
            strict=settings.strict,
        )
        by_label = {item.label: item for item in load_dataset(self.config.data.train, **kwargs)}
        return [by_label[item.label] for item in self.train_items]

    def _new_model(self) -> EquiformerV2Potential:
        c = self.config
        fit = c.run.fit_element_references in (True, "auto")
        stats = dataset_statistics(self.train_items, fit_references=fit)
        self.statistics = stats
        opts = c.model_options()
        opts.setdefault("avg_num_nodes", stats.avg_num_nodes)
        opts.setdefault("avg_degree", stats.avg_degree)
        config = model_config(opts, where="training config 'model'")
        heads = {
            "energy": HeadSpec("energy", {"reduce": c.heads.energy_reduce}),
            "forces": HeadSpec("forces"),
        }
        want_stress = c.heads.stress is True or (
            c.heads.stress == "auto" and stats.num_with_stress > 0
        )
        if want_stress and c.run.layout == "classic":
            self.log("note: no stress head (the classic layout cannot hold one)")
            want_stress = False
        if want_stress:
            heads["stress"] = STRESS_HEAD
        normalizers = {
            k: v for k, v in stats.normalizers.items() if want_stress or not k.startswith("stress")
        }
        self.log(
            f"statistics: avg_num_nodes {stats.avg_num_nodes:.2f}, avg_degree {stats.avg_degree:.2f}, "
            f"energy residual after element references {stats.energy_residual_rms_per_atom:.4f} eV/atom (RMS), "
            f"force RMS {stats.normalizers['forces'].std:.4f} eV/Å, {stats.num_with_stress} structures with stress"
        )
        return EquiformerV2Potential(
            config,
            heads,
            normalizers,
            stats.element_references if fit else None,
            energy_kind="total",
        )

    def _prepare_finetune(self, model: EquiformerV2Potential) -> EquiformerV2Potential:
        c = self.config
        has_stress_data = any(s.stress is not None for s in self.train_items)
        if c.heads.stress is True and not model.has_stress:
            if c.run.layout == "classic":
                raise ValueError(
                    "heads.stress: a stress head cannot be added in the classic layout; use run.layout: hydra"
                )
            stats = dataset_statistics(self.train_items, fit_references=False)
            if stats.num_with_stress == 0:
                raise ValueError("heads.stress is true but no training structure carries stress")
            heads = {**model.head_specs, "stress": STRESS_HEAD}
            normalizers = {
                **model.normalizers,
                **{k: v for k, v in stats.normalizers.items() if k.startswith("stress")},
            }
            refs = model.element_references if model.element_references.numel() else None
            grown = EquiformerV2Potential(model.config, heads, normalizers, refs, model.energy_kind)
            missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
            if unexpected or any(not k.startswith("heads.stress.") for k in missing):
                raise RuntimeError(
                    f"could not add a stress head: missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
            model = grown
            self.log("added a new stress head (trained from scratch)")
        elif has_stress_data and not model.has_stress:
            self.log(
                "note: the checkpoint has no stress head; stress labels are ignored (set heads.stress: true to add one)"
            )
        if c.run.fit_element_references is True:
            model = self._refit_references(model)
        return model

    @torch.no_grad()
    def _refit_references(self, model: EquiformerV2Potential) -> EquiformerV2Potential:
        """Add a least-squares per-element correction to the initial model's energy residuals."""
        model.eval()
        preds = []
        for batch in iterate_batches(self.train_items, self.config.run.batch_size):
            preds.append(predict(model, batch, create_graph=False)["energy"].double())
        residual = np.array([s.energy for s in self.train_items]) - torch.cat(preds).numpy()
        correction = fit_element_references(self.train_items, residual)
        refs = torch.zeros(NUM_REFERENCE_ELEMENTS)
        if model.element_references.numel():
            refs[: model.element_references.numel()] = model.element_references
        model.element_references = refs + torch.as_tensor(correction, dtype=torch.float32)
        before = np.abs(residual).mean()
        after = np.abs(residual - composition_matrix(self.train_items) @ correction).mean()
        self.log(f"element references refitted: training energy MAE {before:.4f} → {after:.4f} eV")
        return model.train()

    def _restore(self, state: dict) -> None:
        training = state.get(TRAINING_KEY) or {}
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            ema = state.get("ema") or {}
            if ema.get("shadow_params"):
                self.ema.load_state_dict(
                    {**ema, "decay": None, "num_updates": training.get("ema_num_updates", 0)}
                )
        self.epoch = int(state.get("epoch", 0))
        self.step = int(state.get("step", 0))
        best = state.get("best_val_metric")
        self.best_metric = math.inf if best is None else float(best)
        self.history = list(training.get("history") or [])
        self.best_metrics = dict(training.get("best_metrics") or {})

    # ------------------------------------------------------------------------------ loops
    def _autocast(self):
        if self.config.run.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training set (``epoch`` is 0-based); returns mean loss parts."""
        c = self.config
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        bar = None
        if c.run.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.steps_per_epoch,
                desc=f"epoch {epoch + 1}/{c.run.epochs}",
                leave=False,
                unit="step",
            )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for batch in iterate_batches(
            self.distill_items if epoch < c.run.distill_epochs else self.train_items,
            c.run.batch_size,
            shuffle_seed=c.run.seed * 1_000_003 + epoch,
            device=self.device,
        ):
            with self._autocast():
                pred = predict(self.model, batch, create_graph=True)
            loss, parts = compute_loss(pred, batch, c.loss, self.scales)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss at step {self.step} (epoch {epoch + 1}): {parts}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.optim.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, c.optim.clip_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            n = batch.graph.num_graphs
            count += n
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value * n
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        if bar is not None:
            bar.close()
        return {f"train_{k}": v / max(count, 1) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, items: Sequence[LabelledStructure], *, use_ema: bool = True) -> dict:
        """MAEs (``energy_per_atom_mae`` eV/atom, ``energy_mae`` eV, ``forces_mae`` eV/Å per
        component, ``forces_l2_mae`` eV/Å per atom, ``stress_mae`` eV/Å³) and the loss."""
        if not items:
            return {}
        context = (
            self.ema.applied(self.model) if (use_ema and self.ema is not None) else nullcontext()
        )
        acc = ErrorAccumulator()
        loss_sum, count = 0.0, 0
        with context:
            self.model.eval()
            for batch in iterate_batches(items, self.config.run.batch_size, device=self.device):
                with self._autocast():
                    pred = predict(self.model, batch, create_graph=False)
                acc.update(pred, batch)
                loss, _ = compute_loss(pred, batch, self.config.loss, self.scales)
                loss_sum += float(loss) * batch.graph.num_graphs
                count += batch.graph.num_graphs
            self.model.train()
        return {"loss": loss_sum / count, **acc.result()}

    # ------------------------------------------------------------------------------ files
    def _training_state(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "history": self.history,
            "best_metrics": self.best_metrics,
            "ema_num_updates": self.ema.num_updates if self.ema is not None else 0,
            "format": 1,
        }

    def save_last(self) -> Path:
        extra = {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_val_metric": None if math.isinf(self.best_metric) else self.best_metric,
            "primary_metric": "loss",
            "val_metrics": self.history[-1] if self.history else {},
            TRAINING_KEY: self._training_state(),
        }
        ema_state = self.ema.shadow if self.ema is not None else None
        return save_checkpoint(
            self.model,
            self.last_path,
            layout=self.config.run.layout,
            extra=extra,
            ema_state=ema_state,
        )

    def save_best(self, extra_metrics: dict | None = None) -> Path:
        extra = {
            "epoch": self.epoch,
            "step": self.step,
            "best_val_metric": self.best_metric,
            "primary_metric": "loss",
            "val_metrics": self.best_metrics,
            TRAINING_KEY: {
                "config": self.config.to_dict(),
                "weights": "ema" if self.ema is not None else "raw",
                "format": 1,
                **(extra_metrics or {}),
            },
        }
        context = self.ema.applied(self.model) if self.ema is not None else nullcontext()
        with context:
            return save_checkpoint(
                self.model, self.best_path, layout=self.config.run.layout, extra=extra
            )

    def _append_metrics(self, record: dict) -> None:
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------------------ driver
    def fit(self, max_epochs: int | None = None) -> TrainResult:
        """Run the remaining epochs (at most ``max_epochs`` of them in this call).

        After each epoch: validation MAEs (EMA weights), ``last.pt``, and ``best.pt`` when the
        validation loss improved (the training loss stands in without a validation set).
        At the end, the best model is evaluated on the test set when one is configured.
        """
        c = self.config
        if self.epoch == 0 and not self.history and c.run.init and self.val_items:
            initial = self.evaluate(self.val_items, use_ema=False)
            self.log("initial model, validation: " + _format_metrics(initial))
        if self.epoch >= c.run.epochs:
            self.log(f"training already complete ({self.epoch}/{c.run.epochs} epochs)")
        done_now = 0
        try:
            while self.epoch < c.run.epochs and (max_epochs is None or done_now < max_epochs):
                t0 = time.time()
                train_metrics = self.train_epoch(self.epoch)
                val = self.evaluate(self.val_items)
                self.epoch += 1
                done_now += 1
                record = {
                    "epoch": self.epoch,
                    "step": self.step,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    **train_metrics,
                    **{f"val_{k}": v for k, v in val.items()},
                    "seconds": round(time.time() - t0, 2),
                }
                self.history.append(record)
                metric = val["loss"] if val else train_metrics["train_loss"]
                improved = metric < self.best_metric
                if improved:
                    self.best_metric = metric
                    self.best_metrics = record
                self.save_last()
                if improved:
                    self.save_best()
                self._append_metrics(record)
                self.log(
                    f"epoch {self.epoch}/{c.run.epochs}  train loss {train_metrics['train_loss']:.4f}  "
                    + ("val " + _format_metrics(val) if val else "")
                    + f"  lr {record['lr']:.2e}  {record['seconds']:.0f} s"
                    + ("  *best*" if improved else "")
                )
        except KeyboardInterrupt:
            self.log(
                f"interrupted during epoch {self.epoch + 1}; {self.last_path} holds epoch {self.epoch}: rerun with --resume"
            )
            raise
        test_metrics = None
        if self.epoch >= c.run.epochs and self.test_items and self.best_path.is_file():
            test_metrics = self.evaluate_checkpoint(self.best_path, self.test_items)
            self.log("best model, test set: " + _format_metrics(test_metrics))
            self._write_summary(test_metrics)
        return TrainResult(
            out_dir=self.out_dir,
            last_checkpoint=self.last_path,
            best_checkpoint=self.best_path if self.best_path.is_file() else None,
            epochs_completed=self.epoch,
            history=list(self.history),
            best_metrics=dict(self.best_metrics),
            test_metrics=test_metrics,
            statistics=self.statistics,
        )

    @torch.no_grad()
    def evaluate_checkpoint(
        self, path: str | os.PathLike, items: Sequence[LabelledStructure]
    ) -> dict:
        """MAEs of a saved checkpoint (as :meth:`evaluate`), e.g. the best model on the test set."""
        loaded = load_checkpoint(path, device=self.device)
        acc = ErrorAccumulator()
        for batch in iterate_batches(items, self.config.run.batch_size, device=self.device):
            acc.update(predict(loaded.model, batch, create_graph=False), batch)
        return acc.result()

    def _write_summary(self, test_metrics: dict) -> None:
        summary = {
            "best_epoch": self.best_metrics.get("epoch"),
            "best": self.best_metrics,
            "test": test_metrics,
        }
        write_json_atomic(self.out_dir / "summary.json", summary)


def _format_metrics(metrics: dict) -> str:
    parts = []
    if "energy_per_atom_mae" in metrics:
        parts.append(f"E {metrics['energy_per_atom_mae'] * 1000:.1f} meV/atom")
    if "forces_mae" in metrics:
        parts.append(f"F {metrics['forces_mae'] * 1000:.1f} meV/Å")
    if "stress_mae" in metrics:
        parts.append(f"S {metrics['stress_mae'] * 1000:.2f} meV/Å³")
    return "MAE " + ", ".join(parts)


def train(
    config: TrainConfig, *, log: Callable[[str], None] = print, max_epochs: int | None = None
) -> TrainResult:
    """Train (or fine-tune, or resume) as ``config`` says; see :class:`Trainer`.

    The run folder is locked for the whole run (:func:`eqv2calc.io.lock_directory`): a second
    run into it raises :class:`~eqv2calc.io.OutputDirLocked` naming this one, before it
    changes anything there.
    """
    config.validate()  # before the lock creates the folder
    with lock_directory(config.run.out_dir, "train"):
        return Trainer(config, log=log).fit(max_epochs=max_epochs)
