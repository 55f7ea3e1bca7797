"""Reading checkpoint files: safe unpickling, layout detection, config and metadata parsing."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eqv2calc.checkpoint import names
from eqv2calc.model.config import ENVELOPES, EquiformerV2Config
from eqv2calc.model.potential import HeadSpec, Normalizer

#: what a checkpoint's energy can mean: a total energy, or an OC20-style adsorption energy
#: (referenced to the clean slab and gas-phase references)
ENERGY_KINDS = ("total", "adsorption")

#: energy kinds in eqv2calc's config section that mean one of :data:`ENERGY_KINDS` ("emt", the
#: registry's label of the EMT-imitating demo models, is a total energy)
_ENERGY_KIND_ALIASES = {"emt": "total"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or is not an EquiformerV2 checkpoint."""


def read_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True`` unless the caller opts in to full unpickling.

    Checks the container: a dict with a non-empty ``state_dict`` mapping names to tensors and a
    ``config`` mapping. Anything else raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    allow_pickle = allow_pickle or os.environ.get("EQV2CALC_ALLOW_PICKLE") == "1"
    try:
        data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" not in text.lower():  # not a refused class: the bytes are not a pickle
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (unreadable or corrupt contents)"
            ) from None
        lines = [ln.strip() for ln in text.splitlines() if "global" in ln.lower()]
        raise CheckpointError(
            f"{path}: the file needs arbitrary unpickling, which is refused by default"
            f" ({lines[0] if lines else 'unsupported global'}). If you trust the file, load it"
            " with allow_pickle=True or set EQV2CALC_ALLOW_PICKLE=1."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): {first}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure of the unpickler
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__} while reading)"
        ) from None
    if not isinstance(data, dict) or "state_dict" not in data or "config" not in data:
        found = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path}: not a training checkpoint; expected a dict with 'state_dict' and 'config',"
            f" found {found}"
        )
    state, config = data["state_dict"], data["config"]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: 'state_dict' is a {type(state).__name__}, expected a mapping of parameter"
            " names to tensors"
        )
    if not state:
        raise CheckpointError(f"{path}: 'state_dict' is empty; expected the model's parameters")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: 'state_dict' entry {key!r} holds a {type(value).__name__}, expected"
                " a tensor under a string name"
            )
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: 'config' is a {type(config).__name__}, expected a mapping (the training"
            " configuration)"
        )
    return data


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


def _number(value: object, path: Path, what: str) -> float:
    try:
        number = float(torch.as_tensor(value).reshape(-1)[0]) if value is not None else None
    except (TypeError, ValueError, RuntimeError, IndexError):
        number = None
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise CheckpointError(f"{path}: normalizer {what} is {value!r}, expected a finite number")
    return number


def _normalizers(data: dict, path: Path, renames: dict[str, str]) -> dict[str, Normalizer]:
    """Output scalings by our output names (``renames``: the file's output name -> ours)."""
    raw = data.get("normalizers") or {}
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: 'normalizers' is a {type(raw).__name__}, expected a dict")
    legacy = {"target": "energy", "grad_target": "forces"}
    out = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            continue
        mean = _number(value.get("mean", 0.0), path, f"{key}.mean")
        std = _number(value.get("rmsd", value.get("std", value.get("stdev", 1.0))), path, key)
        name = legacy.get(key, key)
        out[renames.get(name, name)] = Normalizer(mean, std)
    return out


def _state_prefix(state: dict) -> str:
    first = next(iter(state))
    for prefix in ("module.module.", "module."):
        if first.startswith(prefix):
            return prefix
    return ""


def _mapping(value: object, path: Path, what: str) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {what} is a {type(value).__name__}, expected a mapping")
    return value


#: fields older eqv2calc versions wrote into backbone configs (config["eqv2calc"] present)
_OLD_EQV2CALC_FIELDS = {
    "radial_bias",
    "use_denoising_energy",
    "use_denoising_stress",
    "use_force_encoding",
    "use_noise_schedule_sigma_encoding",
}


def _old_eqv2calc_options(options: dict, entry: names.ModuleClass, path: Path) -> bool:
    """Drop the fields older eqv2calc versions wrote that ``entry`` does not take; True when
    they marked DeNS inputs on a plain backbone."""
    if options.get("radial_bias", True) is not True:
        raise CheckpointError(f"{path}: radial_bias=False (radial MLPs without bias) is refused")
    dens = entry.kind != "dens" and bool(options.get("use_force_encoding", False))
    for key in _OLD_EQV2CALC_FIELDS - entry.arguments:
        options.pop(key, None)
    return dens


def _hydra_heads(
    model: dict, keys: set[str], path: Path, old_eqv2calc: bool = False
) -> tuple[dict[str, HeadSpec], dict[str, tuple[str, str]], dict[str, str]]:
    """Heads of a hydra config: specs, state-dict submodules and output-name renames."""
    heads, head_modules, renames = {}, {}, {}
    by_kind: dict[str, str] = {}
    output_of_kind = {"energy": "energy", "forces": "forces", "rank2": "stress"}
    for file_key, head in _mapping(model.get("heads") or {}, path, "model.heads").items():
        head = dict(_mapping(head, path, f"head {file_key!r}"))
        module = head.pop("module", None)
        entry = names.resolve(module, names.HEADS)
        if entry is None:
            raise CheckpointError(
                f"{path}: head {file_key!r}: module {module!r} is not an EquiformerV2 head the"
                " reference resolves (registry name or full import path)"
            )
        try:
            options = names.head_options(head, entry)
        except ValueError as exc:
            raise CheckpointError(f"{path}: head {file_key!r}: {exc}") from None
        if entry.kind in by_kind:
            raise CheckpointError(
                f"{path}: heads {by_kind[entry.kind]!r} and {file_key!r} are both {entry.kind}"
                " heads; eqv2calc evaluates one energy, one forces and one stress head"
            )
        by_kind[entry.kind] = file_key
        # normalizers are keyed by the head's output name (the file key unless output_name)
        file_output = head.get("output_name", file_key)
        ours = output_of_kind[entry.kind]
        renames[file_output] = ours
        if entry.kind == "rank2":
            for part in ("isotropic", "anisotropic"):
                renames[f"{file_output}_{part}"] = f"{ours}_{part}"
        if old_eqv2calc and entry.kind == "forces":  # older eqv2calc wrote DeNS heads this way
            prefix = f"output_heads.{file_key}.denoising_pos_block."
            options["denoising_block"] = any(k.startswith(prefix) for k in keys)
        heads[file_key] = HeadSpec(entry.kind, options)
        head_modules[file_key] = (entry.kind, entry.submodule)
    for kind in ("energy", "forces"):
        if kind not in by_kind:
            raise CheckpointError(
                f"{path}: hydra model has no {kind} head (heads: {sorted(heads)})"
            )
    return heads, head_modules, renames


def parse(data: dict, path: Path) -> ParsedCheckpoint:
    """Interpret a checkpoint's config: which layout, backbone options, heads, normalizers.

    Every module name and constructor argument goes through the option table in
    :mod:`eqv2calc.checkpoint.names`; anything the reference would refuse is refused here.
    """
    config = _mapping(data["config"], path, "'config'")
    model = config.get("model")
    state = data["state_dict"]
    prefix = _state_prefix(state)
    keys = {k[len(prefix) :] for k in state}
    renames: dict[str, str] = {}
    # written by an older eqv2calc: its backbone configs held a few fields of its own
    old_eqv2calc = isinstance(config.get("eqv2calc"), dict)

    if isinstance(model, dict) and model.get("name") == "hydra":
        layout = "hydra"
        allowed = {"name", "backbone", "heads", "otf_graph", "pass_through_head_outputs"}
        allowed |= {"finetune_config", "freeze_backbone"}
        unknown = sorted(set(model) - allowed)
        if unknown:
            raise CheckpointError(
                f"{path}: hydra option {unknown[0]!r} is not an argument of the reference's"
                " HydraModel"
            )
        if not model.get("backbone"):
            raise CheckpointError(
                f"{path}: hydra config has no 'backbone' (a fine-tuning config that only names"
                " its starting checkpoint); expected the backbone options in the file"
            )
        backbone_opts = dict(_mapping(model["backbone"], path, "model.backbone"))
        backbone_name = backbone_opts.pop("model", None)
        heads, head_modules, renames = _hydra_heads(model, keys, path, old_eqv2calc)
    else:
        layout = "classic"
        if isinstance(model, dict):
            backbone_name = model.get("name")
            backbone_opts = {k: v for k, v in model.items() if k != "name"}
        else:
            backbone_name = model
            backbone_opts = dict(
                _mapping(config.get("model_attributes") or {}, path, "model_attributes")
            )
        heads = {"energy": HeadSpec("energy"), "forces": HeadSpec("forces")}
        head_modules = {"energy": ("energy", "energy_block"), "forces": ("forces", "force_block")}
    backbones = names.BACKBONES if layout == "hydra" else names.BACKBONES[:1]
    entry = names.resolve(backbone_name, backbones)
    if entry is None:
        expected = (
            "an EquiformerV2 backbone" if layout == "hydra" else "'equiformer_v2' (classic layout)"
        )
        raise CheckpointError(f"{path}: model {backbone_name!r} is not {expected}")
    old_dens = old_eqv2calc and _old_eqv2calc_options(backbone_opts, entry, path)
    try:
        options = names.backbone_config(backbone_opts, entry)
        if old_dens:
            options["dens_inputs"] = True
        cfg = EquiformerV2Config.from_dict(options, where="model config")
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {names.reference_spelling(str(exc))}") from None

    refs = None
    elementrefs = data.get("elementrefs") or {}
    if isinstance(elementrefs, dict) and "energy" in elementrefs:
        refs = torch.as_tensor(elementrefs["energy"]["element_references"]).double()

    written_by_us = (config.get("eqv2calc") or {}).get("energy_kind")
    dataset = str((config.get("task") or {}).get("dataset", "")) + str(
        (config.get("dataset") or {}).get("format", "")
    )
    if layout == "classic" and not cfg.load_energy_lin_ref and "oc22" not in dataset.lower():
        energy_kind = "adsorption"
    else:
        energy_kind = "total"
    if written_by_us is not None:
        kind = str(written_by_us).strip().lower()
        kind = _ENERGY_KIND_ALIASES.get(kind, kind)
        if kind in ENERGY_KINDS:
            energy_kind = kind
        else:
            # Training refuses such values now; files written before that keep loading (as
            # they did) with the kind read from the layout, but not silently.
            warnings.warn(
                f"{path}: config eqv2calc.energy_kind is {written_by_us!r}, not one of "
                f"{list(ENERGY_KINDS)}; treating its energies as {energy_kind!r} energies",
                stacklevel=2,
            )
    envelope = (config.get("eqv2calc") or {}).get("envelope", "none")
    if envelope not in ENVELOPES:
        raise CheckpointError(
            f"{path}: config eqv2calc.envelope is {envelope!r}; expected one of {list(ENVELOPES)}"
        )
    cfg.envelope = envelope
    basis_width = (config.get("eqv2calc") or {}).get("distance_basis_width", 2.0)
    if (
        isinstance(basis_width, bool)
        or not isinstance(basis_width, (int, float))
        or not 0 < basis_width < float("inf")
    ):
        raise CheckpointError(
            f"{path}: config eqv2calc.distance_basis_width is {basis_width!r}; expected a positive"
            " number of centre spacings (2.0 in fairchem's files)"
        )
    cfg.distance_basis_width = float(basis_width)
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
        normalizers=_normalizers(data, path, renames),
        element_references=refs,
        energy_kind=energy_kind,
        prefix=prefix,
        raw=data,
        forces_kind=forces_kind,
    )
