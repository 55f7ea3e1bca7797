"""Build an :class:`EquiformerV2Potential` from a checkpoint file, accounting for every key."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eqv2calc.checkpoint import names
from eqv2calc.checkpoint.reader import CheckpointError, ParsedCheckpoint, parse, read_file
from eqv2calc.model.potential import EquiformerV2Potential
from eqv2calc.model.s2_grid import grid_matrices


@dataclass
class GraphSettings:
    """How to build graphs for this model: cutoff (Å), neighbour cap, and cap strictness."""

    cutoff: float
    max_neighbors: int
    strict: bool


@dataclass
class LoadedModel:
    model: EquiformerV2Potential
    graph_settings: GraphSettings
    path: Path
    layout: str
    energy_kind: str  # "adsorption" (OC20 convention) or "total"
    used_ema: bool
    accounting: dict = field(default_factory=dict)  # key -> "loaded as <ours>" | "derived" | ...


def _translate(
    parsed: ParsedCheckpoint, state: dict[str, torch.Tensor]
) -> tuple[dict, dict, list[str]]:
    ours: dict[str, torch.Tensor] = {}
    accounting: dict[str, str] = {}
    unknown: list[str] = []
    classic = parsed.layout == "classic"
    for key, value in state.items():
        name = key[len(parsed.prefix) :]
        target = names.to_ours(name, parsed.head_modules, classic)
        if target is not None:
            ours[target] = value
            accounting[key] = target
        elif names.is_derived(name):
            accounting[key] = "derived"
        else:
            unknown.append(key)
    return ours, accounting, unknown


def _apply_ema(
    data: dict, parsed: ParsedCheckpoint, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    ema = data.get("ema") or {}
    shadow = ema.get("shadow_params") or []
    if not shadow:
        raise CheckpointError(f"{parsed.path}: use_ema=True but the file holds no EMA weights")
    # shadow_params follow the reference model's trainable-parameter order = state-dict order of
    # parameters (buffers and the frozen OC22 reference vector excluded).
    trainable = [
        k
        for k in state
        if not names.is_derived(k[len(parsed.prefix) :])
        and not k.endswith("distance_expansion.offset")
        and not k.endswith("energy_lin_ref")
    ]
    if len(trainable) != len(shadow):
        raise CheckpointError(
            f"{parsed.path}: EMA has {len(shadow)} tensors but the state dict has {len(trainable)} parameters"
        )
    out = dict(state)
    for key, value in zip(trainable, shadow):
        if tuple(value.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"{parsed.path}: EMA tensor for {key} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}"
            )
        out[key] = value
    return out


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity, naming the first such parameter."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{path}: parameter {key} holds {bad} non-finite value(s) (NaN or inf);"
                " expected finite weights (a diverged or corrupted training run?)"
            )


_GRID_KEY = re.compile(r"^(?:backbone\.)?SO3_grid\.(\d+)\.(\d+)\.(to|from)_grid_mat$")


def _check_grids(parsed: ParsedCheckpoint, state: dict[str, torch.Tensor], path: Path) -> None:
    """The S² grid matrices the reference stored must match the ones we build (float32 noise).

    This checks that grid sizes (``grid_resolution`` given or omitted), degree and order
    truncation and rescaling are understood the same way for this file's configuration.
    """
    c = parsed.config
    for key, value in state.items():
        match = _GRID_KEY.match(key[len(parsed.prefix) :])
        if not match or int(match.group(1)) != c.lmax:
            continue
        mmax = int(match.group(2))
        if mmax not in (c.mmax, c.lmax):
            continue
        to_mat, from_mat = grid_matrices(c.lmax, mmax, c.grid_resolution)
        ours = to_mat if match.group(3) == "to" else from_mat
        if tuple(ours.shape) != tuple(value.shape) or not torch.allclose(
            value.double(), ours, rtol=1e-4, atol=1e-5
        ):
            raise CheckpointError(
                f"{path}: stored grid {key} {tuple(value.shape)} differs from the grid built for"
                f" lmax={c.lmax}, mmax={mmax}, grid_resolution={c.grid_resolution}"
                f" {tuple(ours.shape)}"
            )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    use_ema: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a released (or eqv2calc-written) EquiformerV2 checkpoint.

    Args:
        path: the ``.pt`` file.
        use_ema: evaluate the file's exponential-moving-average weights instead of the raw
            ``state_dict`` (the reference calculator uses the raw weights).
        device, dtype: where and in which precision to put the model.
        allow_pickle: permit arbitrary unpickling (only for files you trust).

    Every key of the file's state dict is accounted for: translated into one of our parameters,
    or recognised as bookkeeping we recompute. Any other key, or any of our parameters left
    without a value, raises :class:`CheckpointError` naming them.
    """
    path = Path(path)
    data = read_file(path, allow_pickle=allow_pickle)
    parsed = parse(data, path)
    state = data["state_dict"]
    if use_ema:
        state = _apply_ema(data, parsed, state)
    ours, accounting, unknown = _translate(parsed, state)
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        )
        raise CheckpointError(f"{path}: state-dict keys not understood: {shown}")

    _check_finite(state, path)
    try:
        model = EquiformerV2Potential(
            parsed.config,
            parsed.heads,
            parsed.normalizers,
            parsed.element_references,
            parsed.energy_kind,
        )
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot build the model: {exc}") from None
    _check_grids(parsed, state, path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in ours and k != "element_references"]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        )
        raise CheckpointError(f"{path}: checkpoint lacks values for: {shown}")
    for key, value in ours.items():
        if tuple(expected[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)} in the file, model expects {tuple(expected[key].shape)}"
            )
    ours["element_references"] = expected["element_references"]
    model.load_state_dict(ours, strict=True)
    model.forces_kind = parsed.forces_kind
    model.eval().to(device=device, dtype=dtype)
    c = parsed.config
    settings = GraphSettings(float(c.cutoff), int(c.max_neighbors), bool(c.strict_neighbor_cap))
    return LoadedModel(
        model, settings, path, parsed.layout, parsed.energy_kind, use_ema, accounting
    )
