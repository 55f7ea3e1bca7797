"""Drivers: relaxation (one at a time and batched), molecular dynamics, single points.

``relax``/``relax_batch``/``run_md``/``evaluate`` work on ``ase.Atoms``; ``run_relax_job``
and ``run_eval_job`` add file handling (outputs written as results come, JSON summaries) and
are what the ``eqv2calc relax``/``eval`` commands call.

Every driver takes any ASE calculator and never imports the model. Units: eV, Å, eV/Å,
eV/Å³, fs, K.
"""

from __future__ import annotations

from eqv2calc.batching import chunk_by_atoms, predict_many
from eqv2calc.checks import StructureError, validate_structure
from eqv2calc.drivers.batch_relax import relax_batch
from eqv2calc.drivers.evaluate import EvalResult, evaluate
from eqv2calc.drivers.jobs import JobReport, run_eval_job, run_relax_job
from eqv2calc.drivers.md import MDResult, MDSettings, run_md
from eqv2calc.drivers.relax import RelaxResult, RelaxSettings, fix_below, relax

__all__ = [
    "EvalResult",
    "JobReport",
    "MDResult",
    "MDSettings",
    "RelaxResult",
    "RelaxSettings",
    "StructureError",
    "chunk_by_atoms",
    "evaluate",
    "fix_below",
    "predict_many",
    "relax",
    "relax_batch",
    "run_eval_job",
    "run_md",
    "run_relax_job",
    "validate_structure",
]
