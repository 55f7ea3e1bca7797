"""Training and fine-tuning of EquiformerV2 potentials on energies, forces and stress.

>>> from eqv2calc.training import load_config, train
>>> result = train(load_config("train.yaml"))
>>> result.best_checkpoint, result.best_metrics["val_forces_mae"]   # eV/Å

Modules: :mod:`~eqv2calc.training.config` (YAML options), :mod:`~eqv2calc.training.data`
(reading, graphs, batches), :mod:`~eqv2calc.training.statistics` (normalizers, element
references), :mod:`~eqv2calc.training.loss`, :mod:`~eqv2calc.training.schedule`,
:mod:`~eqv2calc.training.ema` and :mod:`~eqv2calc.training.trainer` (the loop, checkpoints,
resume).
"""

from eqv2calc.training.config import TrainConfig, config_from_dict, load_config, save_config
from eqv2calc.training.data import TrainingDataError
from eqv2calc.training.trainer import ResumeMismatchError, Trainer, TrainResult, train

__all__ = [
    "ResumeMismatchError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDataError",
    "config_from_dict",
    "load_config",
    "save_config",
    "train",
]
