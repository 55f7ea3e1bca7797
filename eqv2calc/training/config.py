"""Training configuration: dataclasses with defaults, read from (and written to) YAML.

A config file has up to six sections; every key is optional and unknown keys are errors::

    data:   {train: train.extxyz, val: null, val_fraction: 0.1, test: null,
             energy_key: energy, forces_key: forces, stress_key: stress}
    model:  {cutoff: 6.0, max_neighbors: 20, num_layers: 2, ...}   # EquiformerV2Config options
    heads:  {stress: auto, energy_reduce: sum}
    loss:   {energy_weight: 1.0, forces_weight: 10.0, stress_weight: 1.0, ...}
    optim:  {lr: 5.0e-4, weight_decay: 1.0e-3, warmup_fraction: 0.05, ...}
    run:    {epochs: 20, batch_size: 8, out_dir: runs/eqv2, layout: hydra, ...}

``model`` takes eqv2calc's option names (:class:`~eqv2calc.model.config.EquiformerV2Config`) or
fairchem's backbone arguments (``max_radius``, ``lmax_list: [4]``, ...), translated through
:data:`eqv2calc.checkpoint.names.OPTION_NAMES`, so a fairchem config can be pasted; one option
under both names is refused. When fine-tuning (``run.init``) the checkpoint fixes the
architecture: of ``model`` only the options in :data:`FINE_TUNE_OPTIONS` apply (they add no
parameters: the smooth cutoff and the neighbour cap); the others are logged as ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eqv2calc.checkpoint.names import check_model_options, our_option_names
from eqv2calc.checkpoint.reader import ENERGY_KINDS

_TRI = (True, False, "auto")  # the values of a true/false/auto switch

#: model options a fine-tune may change: graph and cutoff smoothness, the width of the distance
#: basis (its layers are rescaled, see model.radial.widen_distance_basis); no new parameters
FINE_TUNE_OPTIONS = ("envelope", "max_neighbors", "strict_neighbor_cap", "distance_basis_width")


@dataclass
class DataConfig:
    """Where the labelled structures are, and which keys hold the labels.

    Attributes:
        train: extxyz (or any ASE-readable file) or ASE database (``.db``) with energies (eV)
            and forces (eV/Å); stress (eV/Å³, ASE sign convention) optional.
        val: a separate validation file; when None, ``val_fraction`` of ``train`` is held out.
        val_fraction: share of the training structures used for validation when ``val`` is None.
        test: optional file evaluated once at the end with the best model.
        energy_key, forces_key, stress_key: label names, looked up in the attached calculator's
            results first, then in ``atoms.info`` / ``atoms.arrays``.
        force_weights_key: optional per-atom array (``atoms.arrays``) of force-loss weights.
    """

    train: str | None = None
    val: str | None = None
    val_fraction: float = 0.1
    test: str | None = None
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    force_weights_key: str = "force_weights"


@dataclass
class HeadsConfig:
    """Which outputs a model trained from scratch predicts.

    Attributes:
        stress: ``True`` adds a rank-2 stress head, ``False`` none, ``"auto"`` adds one when
            some training structures carry stress.
        energy_reduce: ``"sum"`` (extensive, divided by ``avg_num_nodes``) or ``"mean"``.
        forces: ``"direct"`` (force and stress heads, as released eqV2 models), ``"gradient"``
            (conservative: forces = −∂E/∂x and stress = (1/V)·∂E/∂ε through the backbone;
            the checkpoint records it and eqv2calc computes gradients when loading it), or
            None: as the ``run.init`` checkpoint (direct for a new model).
    """

    stress: bool | str = "auto"
    energy_reduce: str = "sum"
    forces: str | None = None


@dataclass
class LossConfig:
    """Loss terms; each is divided by the target's normalizer scale, so weights are unitless.

    Attributes:
        energy_weight: weight of the per-atom energy error.
        forces_weight: weight of the force error.
        stress_weight: weight of the stress error (structures without stress contribute 0).
        energy_loss: ``"mae"`` or ``"mse"`` of the per-atom energy (eV/atom).
        forces_loss: ``"l2mae"`` (mean Euclidean norm of the force error per atom) or ``"mse"``.
        stress_loss: ``"mae"`` or ``"mse"`` over the 9 components.
        fixed_atom_force_weight: force weight of atoms fixed by ``FixAtoms`` (1 = like others,
            0 = ignore them, as OC20 trainings do).
    """

    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 1.0
    energy_loss: str = "mae"
    forces_loss: str = "l2mae"
    stress_loss: str = "mae"
    fixed_atom_force_weight: float = 1.0


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, gradient clipping and an EMA of the weights.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW decay (not applied to biases, norms and embeddings).
        warmup_fraction: share of all steps spent warming up linearly from ``warmup_factor·lr``.
        warmup_factor: starting learning rate as a fraction of ``lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        clip_grad_norm: maximum gradient norm (None or 0 = no clipping).
        ema_decay: decay of the exponential moving average (None = no EMA).
    """

    lr: float = 5.0e-4
    weight_decay: float = 1.0e-3
    warmup_fraction: float = 0.05
    warmup_factor: float = 0.2
    min_lr_ratio: float = 0.01
    clip_grad_norm: float | None = 10.0
    ema_decay: float | None = 0.999


@dataclass
class RunConfig:
    """How the run is carried out.

    Attributes:
        epochs: passes over the training set.
        batch_size: structures per step.
        out_dir: folder for ``last.pt``, ``best.pt``, ``metrics.jsonl`` and ``config.yaml``.
        layout: ``"hydra"`` (default) or ``"classic"`` checkpoint layout.
        init: checkpoint to fine-tune from (any file ``load_checkpoint`` reads).
        freeze_backbone: train only the heads (with ``init``).
        fit_element_references: ``"auto"`` (fit when training from scratch, keep the
            checkpoint's when fine-tuning), ``True`` (fit; when fine-tuning, fit a per-element
            correction to the initial model's residuals), ``False`` (none / keep).
        resume: continue from ``out_dir/last.pt``.
        seed: seed of the split, the initial weights and the shuffling.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        num_threads: torch CPU threads (None = torch's default).
        progress: show a progress bar.
        energy_kind: override the energy kind stored in the checkpoint: ``"total"`` or
            ``"adsorption"`` (OC20-style referenced energy); None keeps the ``init``
            checkpoint's (``"total"`` for a new model).
        distill_epochs: with ``heads.forces: gradient`` and ``init``: the first epochs train on
            the initial model's own predictions (energy, direct-head forces and stress) instead
            of the labels: a direct→gradient distillation stage (counted in ``epochs``).
    """

    epochs: int = 20
    batch_size: int = 8
    out_dir: str = "runs/eqv2calc-train"
    layout: str = "hydra"
    init: str | None = None
    freeze_backbone: bool = False
    fit_element_references: bool | str = "auto"
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    num_threads: int | None = None
    progress: bool = True
    energy_kind: str | None = None
    distill_epochs: int = 0


#: small, fast defaults for a model trained from scratch (override in the ``model`` section)
DEFAULT_MODEL: dict[str, Any] = {
    "cutoff": 6.0,
    "max_neighbors": 20,
    "strict_neighbor_cap": True,
    "num_layers": 2,
    "sphere_channels": 32,
    "attn_hidden_channels": 32,
    "num_heads": 4,
    "attn_alpha_channels": 16,
    "attn_value_channels": 8,
    "ffn_hidden_channels": 64,
    "edge_channels": 32,
    "norm_type": "layer_norm_sh",
    "lmax": 2,
    "mmax": 2,
    "num_elements": 90,
    "use_grid_mlp": True,
    "use_sep_s2_act": True,
    "attn_activation": "silu",
    "ffn_activation": "silu",
    "alpha_drop": 0.0,
    "drop_path_rate": 0.0,
}


@dataclass
class TrainConfig:
    """The whole configuration (see the module docstring for the YAML form)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def model_options(self) -> dict[str, Any]:
        """Backbone options for a model trained from scratch: defaults updated by ``model``.

        Our option names throughout (fairchem's names in ``model`` are translated).
        """
        return {**DEFAULT_MODEL, **our_option_names(self.model)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ValueError naming every inconsistent option."""
        problems = []
        if self.data.train is None:
            problems.append("data.train: no training data given")
        if not 0.0 <= self.data.val_fraction < 1.0:
            problems.append(f"data.val_fraction must be in [0, 1), got {self.data.val_fraction}")
        if self.run.layout not in ("hydra", "classic"):
            problems.append(f"run.layout must be 'hydra' or 'classic', got {self.run.layout!r}")
        if self.run.epochs < 1:
            problems.append(f"run.epochs must be >= 1, got {self.run.epochs}")
        if not self.optim.lr > 0:
            problems.append(f"optim.lr must be > 0, got {self.optim.lr}")
        if self.run.batch_size < 1:
            problems.append(f"run.batch_size must be >= 1, got {self.run.batch_size}")
        if self.run.freeze_backbone and not self.run.init:
            problems.append("run.freeze_backbone needs run.init (a checkpoint to fine-tune)")
        for name, value, allowed, spelled in (
            ("loss.energy_loss", self.loss.energy_loss, ("mae", "mse"), "'mae' or 'mse'"),
            ("loss.forces_loss", self.loss.forces_loss, ("l2mae", "mse"), "'l2mae' or 'mse'"),
            ("loss.stress_loss", self.loss.stress_loss, ("mae", "mse"), "'mae' or 'mse'"),
            ("heads.stress", self.heads.stress, _TRI, "true, false or 'auto'"),
            ("heads.energy_reduce", self.heads.energy_reduce, ("sum", "mean"), "'sum' or 'mean'"),
            (
                "run.fit_element_references",
                self.run.fit_element_references,
                _TRI,
                "true, false or 'auto'",
            ),
        ):
            if value not in allowed:
                problems.append(f"{name} must be {spelled}, got {value!r}")
        problems += self._numeric_problems()
        if self.run.energy_kind is not None and self.run.energy_kind not in ENERGY_KINDS:
            problems.append(
                f"run.energy_kind must be {' or '.join(map(repr, ENERGY_KINDS))} (or null: as "
                f"the checkpoint / 'total' for a new model), got {self.run.energy_kind!r}"
            )
        if self.optim.ema_decay is not None and not 0.0 < self.optim.ema_decay < 1.0:
            problems.append(
                f"optim.ema_decay must be in (0, 1) or null, got {self.optim.ema_decay}"
            )
        if not 0.0 <= self.optim.warmup_fraction < 1.0:
            problems.append(
                f"optim.warmup_fraction must be in [0, 1), got {self.optim.warmup_fraction}"
            )
        if self.heads.forces not in (None, "direct", "gradient"):
            problems.append(
                f"heads.forces must be 'direct', 'gradient' or null, got {self.heads.forces!r}"
            )
        if self.run.distill_epochs:
            if not 0 <= self.run.distill_epochs <= self.run.epochs:
                problems.append(
                    f"run.distill_epochs must be in [0, run.epochs={self.run.epochs}], "
                    f"got {self.run.distill_epochs}"
                )
            if not self.run.init or self.heads.forces != "gradient":
                problems.append(
                    "run.distill_epochs needs run.init and heads.forces: gradient (it distils "
                    "the initial model's direct forces into gradient forces)"
                )
        if self.run.layout == "classic" and self.heads.stress is True:
            problems.append(
                "heads.stress: the classic layout holds no stress head; use run.layout: hydra"
            )
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    def _numeric_problems(self) -> list[str]:
        """Loss weights and optimizer numbers that would silently break the training: negative
        or non-finite weights (a negative weight maximises that error), all weights 0 (nothing
        to learn), a final learning rate above the peak, negative clipping or decay."""
        problems = []
        weights = {
            "loss.energy_weight": self.loss.energy_weight,
            "loss.forces_weight": self.loss.forces_weight,
            "loss.stress_weight": self.loss.stress_weight,
            "loss.fixed_atom_force_weight": self.loss.fixed_atom_force_weight,
        }
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number >= 0, got {value}")
        if all(
            value == 0 for name, value in weights.items() if name != "loss.fixed_atom_force_weight"
        ):
            problems.append(
                "loss.energy_weight, loss.forces_weight and loss.stress_weight are all 0: "
                "nothing would be trained; give at least one a weight > 0"
            )
        if not math.isfinite(self.optim.lr):
            problems.append(f"optim.lr must be a finite number > 0, got {self.optim.lr}")
        for name, value in (
            ("optim.min_lr_ratio", self.optim.min_lr_ratio),
            ("optim.warmup_factor", self.optim.warmup_factor),
        ):
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1] (a fraction of optim.lr), got {value}")
        if not (math.isfinite(self.optim.weight_decay) and self.optim.weight_decay >= 0):
            problems.append(
                f"optim.weight_decay must be a finite number >= 0, got {self.optim.weight_decay}"
            )
        clip = self.optim.clip_grad_norm
        if clip is not None and not (math.isfinite(clip) and clip >= 0):
            problems.append(
                f"optim.clip_grad_norm must be a finite number > 0, or 0 or null for no "
                f"clipping, got {clip}"
            )
        return problems


_SECTIONS = {
    "data": DataConfig,
    "heads": HeadsConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "run": RunConfig,
}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _checked_value(cls: type, section: str, key: str, value: Any, where: str) -> Any:
    """``value`` of ``section.key`` if its type fits the field's (a number written as a string,
    as YAML reads ``1e-3``, becomes a float); else ValueError naming the key."""
    kinds = typing.get_type_hints(cls)[key]
    if typing.get_origin(kinds) not in (typing.Union, types.UnionType):
        if kinds not in (bool, int, float, str):
            return value  # containers and other types are left to validate()
        allowed: tuple[Any, ...] = (kinds,)
    else:
        allowed = typing.get_args(kinds)
    if value is None and type(None) in allowed:
        return value
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and (int in allowed or float in allowed):
        return value if int in allowed else float(value)
    elif isinstance(value, float) and float in allowed:
        return value
    elif isinstance(value, str):
        if str in allowed:
            return value
        if float in allowed and _is_number(value):
            return float(value)
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    expected = " or ".join(names.get(t, "null") for t in allowed)
    raise ValueError(f"{where}: {section}.{key} must be {expected}, got {value!r}")


def config_from_dict(options: dict[str, Any], *, where: str = "training config") -> TrainConfig:
    """Build a :class:`TrainConfig`; unknown sections or keys (``model`` options included)
    raise ValueError naming them."""
    if not isinstance(options, dict):
        raise ValueError(f"{where}: expected a mapping of sections, got {type(options).__name__}")
    unknown = sorted(set(options) - set(_SECTIONS) - {"model"})
    if unknown:
        raise ValueError(
            f"{where}: unknown section(s) {unknown}; expected {sorted([*_SECTIONS, 'model'])}"
        )
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = options.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{where}: section {name!r} must be a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(section) - known)
        if bad:
            raise ValueError(f"{where}: unknown key(s) in {name!r}: {bad}; known: {sorted(known)}")
        kwargs[name] = cls(
            **{k: _checked_value(cls, name, k, v, where) for k, v in section.items()}
        )
    model = options.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(f"{where}: section 'model' must be a mapping of EquiformerV2 options")
    try:
        check_model_options(our_option_names(model))
    except ValueError as exc:
        raise ValueError(f"{where}: section 'model': {exc}") from None
    return TrainConfig(model=dict(model), **kwargs)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML training config; relative data paths are taken relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such training config file")
    try:
        options = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    config = config_from_dict(options, where=str(path))
    for key in ("train", "val", "test"):
        value = getattr(config.data, key)
        if value is not None and not Path(value).is_absolute():
            setattr(config.data, key, str((path.parent / value).resolve()))
    return config


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``config`` as YAML (atomically)."""
    from eqv2calc.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
