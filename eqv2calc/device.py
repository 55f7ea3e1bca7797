"""Choosing the torch device: ``"auto"`` or an explicit name, checked against what is present."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(
    device: str | torch.device,
    *,
    option: str = "device",
    fix: str = "device='cpu' or 'auto'",
) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to torch.

    Args:
        device: ``"auto"``, a device name (``"cpu"``, ``"cuda:0"``) or a :class:`torch.device`.
        option: the option's name, for the error message (``"run.device"`` in a training config).
        fix: what the error message suggests instead.

    Raises:
        ValueError: a CUDA device is asked for but CUDA is not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {device!r} requested but CUDA is not available; use {fix}")
    return dev
