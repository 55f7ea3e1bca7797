"""Segment reductions with torch's own scatter ops (no compiled extensions).

Sums accumulate in at least float32: under bf16 autocast the values arrive in bfloat16 and
are summed (and returned) in float32; float32 and float64 inputs are unchanged.
"""

from __future__ import annotations

import torch


def _acc(values: torch.Tensor) -> torch.Tensor:
    """``values`` in at least float32 (bfloat16/float16 from autocast are widened)."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def segment_softmax(logits: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``logits`` ``[E, H]`` over the rows sharing a ``segment`` id ``[E]``.

    Numerically stabilised by subtracting each segment's maximum.
    """
    logits = _acc(logits)
    index = segment.view(-1, 1).expand_as(logits)
    seg_max = logits.new_full((num_segments, logits.shape[1]), float("-inf"))
    seg_max = seg_max.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
    shifted = (logits - seg_max.index_select(0, segment)).exp()
    denom = logits.new_zeros(num_segments, logits.shape[1]).index_add_(0, segment, shifted)
    return shifted / (denom.index_select(0, segment) + 1e-16)


def segment_mean(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of rows of ``values`` sharing a ``segment`` id; empty segments give 0."""
    values = _acc(values)
    out = values.new_zeros((num_segments, *values.shape[1:])).index_add_(0, segment, values)
    count = torch.bincount(segment, minlength=num_segments).clamp(min=1).to(values.dtype)
    return out / count.view(-1, *([1] * (values.dim() - 1)))


def segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of rows of ``values`` sharing a ``segment`` id."""
    values = _acc(values)
    return values.new_zeros((num_segments, *values.shape[1:])).index_add_(0, segment, values)
