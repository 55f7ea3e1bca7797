"""Fixed tensors (grid matrices, rescale factors, tensor bases) kept exact in every precision.

A module registers each constant from a float64 value with :meth:`ExactConstants.register_constant`.
The buffer itself follows the module's device and dtype like any buffer, but every time the
module is moved or cast (``.to``, ``.double()``, ``.cuda()``, ...) it is re-made from the float64
original, so that a float64 model gets the float64 values (not float32 values widened) and a
float32 model gets them rounded once.
"""

from __future__ import annotations

import torch
from torch import nn


class ExactConstants(nn.Module):
    """Mixin for modules holding constants computed in float64 (see the module docstring)."""

    def register_constant(self, name: str, value: torch.Tensor) -> None:
        """Register ``value`` (any float dtype; computed in float64) as a non-persistent buffer."""
        if "_exact_constants" not in self.__dict__:
            self._exact_constants: dict[str, torch.Tensor] = {}
        master = value.detach().to("cpu", torch.float64).contiguous()
        self._exact_constants[name] = master
        self.register_buffer(name, master.to(torch.get_default_dtype()), persistent=False)

    def exact(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """The float64 original of constant ``name`` (whatever the module's dtype), on ``device``."""
        return self._exact_constants[name].to(device)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's private signature
        super()._apply(fn, recurse)
        for name, master in self.__dict__.get("_exact_constants", {}).items():
            current = self._buffers[name]
            if current is not None:
                self._buffers[name] = master.to(device=current.device, dtype=current.dtype)
        return self
