"""Precision and compilation modes for model evaluation.

=========  =====================================================  ==========================
mode       what runs                                             accepted by default?
=========  =====================================================  ==========================
float32    the model in float32 (as the released models trained)  yes (the reference)
float64    the model in float64                                   yes
tf32       float32 with TF32 matmuls/convolutions (CUDA only)     yes (CUDA); no-op on CPU
bf16       float32 weights under ``torch.autocast(bfloat16)``     no: refused unless forced
=========  =====================================================  ==========================

"Accepted" means the mode's error against float64 stays within the float32 reference's own
noise on the parity fixtures; ``benchmarks/README.md`` ("Precision modes") has the measured
errors. bf16 autocast is not accepted: measured on this model it does not even run (an
``index_add_`` in the edge-degree embedding gets a bfloat16 source and a float32 target), and
nothing shows its error within float32 noise, so :func:`resolve_precision` refuses it unless
``force=True`` (``--force-precision``).

``torch.compile`` is separate and opt-in (:func:`maybe_compile`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["PRECISIONS", "Precision", "maybe_compile", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    """A precision mode.

    Attributes:
        name: ``float32``, ``float64``, ``tf32`` or ``bf16``.
        dtype: dtype the model weights are loaded in (``"float32"``/``"float64"``).
        accepted: within the float32 reference's noise (see module docstring).
    """

    name: str
    dtype: str
    accepted: bool

    def context(self, device: torch.device | str):
        """Context manager under which the model runs in this mode on ``device``."""
        dev = torch.device(device)
        if self.name == "bf16":
            return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
        if self.name == "tf32" and dev.type == "cuda":
            return _tf32()
        return contextlib.nullcontext()


@contextlib.contextmanager
def _tf32():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


PRECISIONS: dict[str, Precision] = {
    "float32": Precision("float32", "float32", True),
    "float64": Precision("float64", "float64", True),
    "tf32": Precision("tf32", "float32", True),
    "bf16": Precision("bf16", "float32", False),
}


def resolve_precision(name: str, force: bool = False) -> Precision:
    """The mode called ``name``; refuses a mode outside float32 noise unless ``force``.

    Raises:
        ValueError: unknown name, or a refused mode without ``force``.
    """
    key = str(name).lower()
    if key not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}")
    mode = PRECISIONS[key]
    if not mode.accepted and not force:
        raise ValueError(
            f"precision {key!r} is refused: its measured error against float64 exceeds the "
            "float32 reference's own noise (see benchmarks/README.md, 'Precision modes'); "
            "pass --force-precision to use it anyway"
        )
    return mode


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model, dynamic=True)`` when ``enabled`` (graphs vary in size)."""
    if not enabled:
        return model
    return torch.compile(model, dynamic=True)
