"""Deterministic mode: bitwise-reproducible model evaluations from one run to the next.

What is and is not bitwise reproducible (see also README "Errors and recovery"):

* Same machine, same software, same thread count, same inputs: with deterministic mode on,
  energies, forces and stresses are bitwise identical from one process to the next, so an
  optimizer takes the same steps and ends in the same minimum.
* Different thread counts, CPU models, BLAS/OpenMP builds, torch versions, devices (CPU vs
  GPU) or dtypes: results differ in the last bits (float32 ~1e-7 relative); a relaxation may
  then take a different number of steps and, on a flat energy surface, stop in a different
  nearby minimum. These differences are rounding, not errors.
* The graph (neighbour search, neighbour cap and its tie rule) is deterministic in every mode.
"""

from __future__ import annotations

import os

import torch

__all__ = ["use_deterministic_mode"]


def use_deterministic_mode(num_threads: int = 1) -> None:
    """Switch this process to deterministic evaluation (affects every torch model in it).

    Sets ``torch.use_deterministic_algorithms(True)`` (kernels with a non-deterministic
    reduction order raise instead of running), fixes the number of CPU threads (default 1: a
    reduction split over threads is summed in an order that depends on the thread count), and
    on CUDA disables cuDNN autotuning and sets ``CUBLAS_WORKSPACE_CONFIG`` (takes effect only
    if no CUDA work was done yet in this process).

    Args:
        num_threads: CPU threads for torch (keep it the same between runs to compare).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(int(num_threads))
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
