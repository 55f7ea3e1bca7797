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
errors. bf16 autocast runs (scatter sums accumulate in float32) but its error against float64
on the 48 parity fixture cases is far above float32's own (forces up to 8.4e-3 eV/Å against
3.4e-3; energy 0.34 eV against 4.3e-4; stress 0.87 eV/Å³ against 1.2e-2), so
:func:`resolve_precision` refuses it unless ``force=True`` (``--force-precision``). tf32 on
CPU is accepted and runs as float32 (TF32 exists only on CUDA).

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
        refusal: for a refused mode, which error is how large (the refusal message).
    """

    name: str
    dtype: str
    accepted: bool
    refusal: str = ""

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
    "bf16": Precision(
        "bf16",
        "float32",
        False,
        refusal="its error against float64 on the 48 parity fixture cases reaches 8.4e-3 eV/Å "
        "in forces, 0.34 eV in energy and 0.87 eV/Å³ in stress, above float32's own noise "
        "(3.4e-3 eV/Å, 4.3e-4 eV, 1.2e-2 eV/Å³)",
    ),
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
        why = mode.refusal or "its measured error against float64 exceeds float32's own noise"
        raise ValueError(
            f"precision {key!r} is refused: {why} (benchmarks/README.md, 'Precision modes'); "
            "pass --force-precision (API: force=True) to use it anyway"
        )
    return mode


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(model, dynamic=True)`` when ``enabled`` (graphs vary in size)."""
    if not enabled:
        return model
    return torch.compile(model, dynamic=True)
