"""Reading checkpoint files: safe unpickling, layout detection, config and metadata parsing."""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.model.potential import HeadSpec, Normalizer


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or is not an EquiformerV2 checkpoint."""


def read_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True`` unless the caller opts in to full unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    allow_pickle = allow_pickle or os.environ.get("EQV2CALC_ALLOW_PICKLE") == "1"
    try:
        data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: the file needs arbitrary unpickling, which is refused by default ({first}). "
            "If you trust the file, load it with allow_pickle=True or set EQV2CALC_ALLOW_PICKLE=1."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): {exc}"
        ) from None
    if not isinstance(data, dict) or "state_dict" not in data or "config" not in data:
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path}: not a training checkpoint; expected a dict with 'state_dict' and 'config', found {found}"
        )
    return data


# Module names as configs give them (registry names or import paths), by role.
_BACKBONES = {
    "equiformer_v2",
    "equiformer_v2_backbone",
    "EquiformerV2",
    "EquiformerV2Backbone",
    "EqV2DeNSBackbone",
    "equiformer_v2_dens_backbone",
    "EquiformerV2_DeNS",
}
_ENERGY_HEADS = {
    "equiformer_v2_energy_head",
    "EquiformerV2EnergyHead",
    "equiformerV2_scalar_head",
    "EqV2ScalarHead",
    "DeNSScalarHead",
    "equiformer_v2_dens_energy_head",
    "DeNSEnergyHead",
}
_FORCE_HEADS = {
    "equiformer_v2_force_head",
    "EquiformerV2ForceHead",
    "equiformerV2_vector_head",
    "EqV2VectorHead",
    "DeNSVectorHead",
    "equiformer_v2_dens_force_head",
    "DeNSForceHead",
}
_RANK2_HEADS = {
    "rank2_symmetric_head",
    "Rank2SymmetricTensorHead",
    "DeNSRank2Head",
    "dens_rank2_symmetric_head",
}
_HEAD_OPTIONS = {
    "energy": {"reduce"},
    "forces": set(),
    "rank2": {"decompose", "use_source_target_embedding", "extensive", "edge_level_mlp"},
}
# options that only steer training; accepted and ignored at inference
_TRAINING_ONLY = {"use_denoising", "output_name", "module"}


def short_name(module: str) -> str:
    """``fairchem.core.models...EqV2DeNSBackbone`` → ``EqV2DeNSBackbone`` (nothing is imported)."""
    return module.rsplit(".", 1)[-1]


@dataclass
class ParsedCheckpoint:
    path: Path
    layout: str  # "classic" | "hydra"
    config: EquiformerV2Config
    heads: dict[str, HeadSpec]
    head_modules: dict[str, tuple[str, str]]  # our output name -> (kind, submodule name in file)
    normalizers: dict[str, Normalizer]
    element_references: torch.Tensor | None
    energy_kind: str
    prefix: str
    raw: dict = field(repr=False, default_factory=dict)
    forces_kind: str = "direct"  # "gradient": forces/stress are energy derivatives (eqv2calc)


def _normalizers(data: dict, path: Path) -> dict[str, Normalizer]:
    raw = data.get("normalizers") or {}
    legacy = {"target": "energy", "grad_target": "forces"}
    out = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            continue
        mean = value.get("mean", 0.0)
        std = value.get("rmsd", value.get("std", value.get("stdev", 1.0)))
        name = legacy.get(key, key)
        out[name] = Normalizer(float(torch.as_tensor(mean)), float(torch.as_tensor(std)))
    return out


def _state_prefix(state: dict) -> str:
    first = next(iter(state))
    for prefix in ("module.module.", "module."):
        if first.startswith(prefix):
            return prefix
    return ""


def parse(data: dict, path: Path) -> ParsedCheckpoint:
    """Interpret a checkpoint's config: which layout, backbone options, heads, normalizers."""
    config = data["config"]
    model = config.get("model")
    state = data["state_dict"]
    prefix = _state_prefix(state)
    keys = {k[len(prefix) :] for k in state}

    if isinstance(model, dict) and model.get("name") == "hydra":
        layout = "hydra"
        backbone_opts = dict(model.get("backbone") or {})
        backbone_name = short_name(str(backbone_opts.pop("model", "")))
        if backbone_name not in _BACKBONES:
            raise CheckpointError(
                f"{path}: unsupported backbone {backbone_name!r} (expected an EquiformerV2 backbone)"
            )
        if "DeNS" in backbone_name or "dens" in backbone_name:
            backbone_opts.setdefault("use_force_encoding", True)
        heads, head_modules = {}, {}
        for file_key, head in (model.get("heads") or {}).items():
            module = short_name(str(head.get("module", "")))
            if module in _ENERGY_HEADS:
                kind = "energy"
            elif module in _FORCE_HEADS:
                kind = "forces"
            elif module in _RANK2_HEADS:
                kind = "rank2"
            else:
                raise CheckpointError(
                    f"{path}: head {file_key!r} uses unsupported module {head.get('module')!r}"
                )
            options = {k: v for k, v in head.items() if k not in _TRAINING_ONLY}
            unknown = sorted(set(options) - _HEAD_OPTIONS[kind])
            if unknown:
                raise CheckpointError(f"{path}: head {file_key!r}: unsupported option(s) {unknown}")
            submodule = ""
            if kind == "energy":
                submodule = next(
                    (
                        m
                        for m in ("energy_block", "scalar_block")
                        if any(k.startswith(f"output_heads.{file_key}.{m}.") for k in keys)
                    ),
                    "energy_block",
                )
            elif kind == "forces":
                submodule = next(
                    (
                        m
                        for m in ("force_block", "vector_block")
                        if any(k.startswith(f"output_heads.{file_key}.{m}.") for k in keys)
                    ),
                    "force_block",
                )
                if any(k.startswith(f"output_heads.{file_key}.denoising_pos_block.") for k in keys):
                    options["denoising_block"] = True
            heads[file_key] = HeadSpec(kind, options)
            head_modules[file_key] = (kind, submodule)
        if "energy" not in heads or "forces" not in heads:
            raise CheckpointError(
                f"{path}: hydra model needs 'energy' and 'forces' heads, found {sorted(heads)}"
            )
    else:
        layout = "classic"
        if isinstance(model, dict):
            name = model.get("name")
            backbone_opts = {k: v for k, v in model.items() if k != "name"}
        else:
            name = model
            backbone_opts = dict(config.get("model_attributes") or {})
        if short_name(str(name)) not in _BACKBONES:
            raise CheckpointError(f"{path}: model {name!r} is not EquiformerV2")
        heads = {"energy": HeadSpec("energy"), "forces": HeadSpec("forces")}
        head_modules = {"energy": ("energy", "energy_block"), "forces": ("forces", "force_block")}

    backbone_opts.pop("model", None)
    try:
        cfg = EquiformerV2Config.from_dict(backbone_opts, where=f"{path}: model config")
    except (ValueError, TypeError) as exc:
        raise CheckpointError(str(exc)) from None

    refs = None
    elementrefs = data.get("elementrefs") or {}
    if "energy" in elementrefs:
        refs = torch.as_tensor(elementrefs["energy"]["element_references"]).float()

    written_by_us = (config.get("eqv2calc") or {}).get("energy_kind")
    dataset = str((config.get("task") or {}).get("dataset", "")) + str(
        (config.get("dataset") or {}).get("format", "")
    )
    if layout == "classic" and not cfg.load_energy_lin_ref and "oc22" not in dataset.lower():
        energy_kind = "adsorption"
    else:
        energy_kind = "total"
    if written_by_us in ("adsorption", "total"):
        energy_kind = written_by_us
    forces_kind = (config.get("eqv2calc") or {}).get("forces", "direct")
    if forces_kind not in ("direct", "gradient"):
        raise CheckpointError(
            f"{path}: config eqv2calc.forces is {forces_kind!r}; expected 'direct' or 'gradient'"
        )

    return ParsedCheckpoint(
        path=path,
        layout=layout,
        config=cfg,
        heads=heads,
        head_modules=head_modules,
        normalizers=_normalizers(data, path),
        element_references=refs,
        energy_kind=energy_kind,
        prefix=prefix,
        raw=data,
        forces_kind=forces_kind,
    )
