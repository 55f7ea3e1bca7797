"""Writing EquiformerV2 checkpoints in the reference layouts (readable by eqv2calc and fairchem 1.x)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from eqv2calc.checkpoint import names
from eqv2calc.io import atomic_path
from eqv2calc.model.potential import EquiformerV2Potential


def _atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:  # umask honoured, like any ordinary file
        torch.save(obj, tmp)


def save_checkpoint(
    model: EquiformerV2Potential,
    path: str | os.PathLike,
    *,
    layout: str = "hydra",
    extra: dict | None = None,
    ema_state: list[torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically, in the ``"classic"`` or ``"hydra"`` layout.

    Parameter names are translated back to the reference names through the same table the
    loader uses; normalizers and element references are stored where released files keep them.
    ``extra`` entries (epoch, optimizer state, ...) are added at the top level.
    """
    path = Path(path)
    classic = layout == "classic"
    if layout not in ("classic", "hydra"):
        raise ValueError(f"layout must be 'classic' or 'hydra', got {layout!r}")
    ours = dataclasses.asdict(model.config)
    envelope = ours.pop("envelope")  # eqv2calc's own options: kept under config["eqv2calc"]
    basis_width = ours.pop("distance_basis_width")
    backbone_name, cfg = names.reference_backbone(ours)
    ref_heads = {
        name: names.reference_head(spec.kind, spec.options)
        for name, spec in model.head_specs.items()
    }
    heads = {
        name: (spec.kind, ref_heads[name][0].submodule) for name, spec in model.head_specs.items()
    }
    if classic and (
        sorted(spec.kind for spec in model.head_specs.values()) != ["energy", "forces"]
        or backbone_name != "equiformer_v2_backbone"
        or any(spec.options.get("denoising_block") for spec in model.head_specs.values())
    ):
        raise ValueError(
            "the classic layout holds a plain (non-DeNS) backbone with exactly an energy and a"
            " forces head; use layout='hydra'"
        )
    prefix = "module.module." if classic else "module."
    state = {}
    for key, value in model.state_dict().items():
        if key == "element_references":
            continue
        ref = names.to_reference(key, heads, classic)
        if ref is None:
            raise ValueError(f"no reference name for parameter {key!r}")
        state[prefix + ref] = value.detach().cpu()

    norms = model.normalizers
    if classic:
        normalizers = {}
        if "energy" in norms:
            normalizers["target"] = {
                "mean": torch.tensor(norms["energy"].mean),
                "std": torch.tensor(norms["energy"].std),
            }
        if "forces" in norms:
            normalizers["grad_target"] = {
                "mean": torch.tensor(norms["forces"].mean),
                "std": torch.tensor(norms["forces"].std),
            }
        config = {
            "model": "equiformer_v2",
            "model_attributes": cfg,
            "task": {"dataset": "eqv2calc"},
        }
    else:
        normalizers = {
            k: {"mean": torch.tensor(v.mean), "rmsd": torch.tensor(v.std)} for k, v in norms.items()
        }
        head_cfg = {}
        for name, spec in model.head_specs.items():
            entry, options = ref_heads[name]
            head_cfg[name] = {"module": entry.registry_name, **options}
            if spec.kind == "rank2":
                head_cfg[name]["output_name"] = "stress"
        backbone = {"model": backbone_name, **cfg}
        config = {
            "model": {
                "name": "hydra",
                "backbone": backbone,
                "heads": head_cfg,
                "pass_through_head_outputs": True,
            }
        }
    config["eqv2calc"] = {
        "energy_kind": model.energy_kind,
        "forces": getattr(model, "forces_kind", "direct"),  # "gradient": −∂E/∂x, (1/V)·∂E/∂ε
        "envelope": envelope,  # "polynomial": smooth cutoff (model.envelope); fairchem ignores it
    }
    if basis_width != 2.0:  # the reference's width: files with it stay as fairchem writes them
        config["eqv2calc"]["distance_basis_width"] = basis_width  # fairchem cannot read these

    payload = {"state_dict": state, "config": config, "normalizers": normalizers}
    if model.element_references.numel():
        payload["elementrefs"] = {
            "energy": {"element_references": model.element_references.detach().cpu()}
        }
    if ema_state is not None:
        payload["ema"] = {
            "decay": None,
            "num_updates": None,
            "shadow_params": [t.detach().cpu() for t in ema_state],
            "collected_params": [],
        }
    payload.update(extra or {})
    _atomic_save(payload, path)
    return path
