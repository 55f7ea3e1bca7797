"""The complete EquiformerV2 potential: backbone, heads and the map to physical units.

Heads predict normalised targets; :class:`OutputScaling` turns them into eV, eV/Å and eV/Å³:

* energy: ``E = (E_raw + Σ_i lin_ref[Z_i]) · std + mean + Σ_i elem_ref[Z_i]`` — ``lin_ref`` is the
  OC22 per-element reference stored inside the model (already divided by std), ``elem_ref`` the
  hydra files' per-element references (eV);
* forces: ``F = F_raw · std + mean``;
* stress: each part denormalised on its own, ``σ = t0·iso + Σ_m t2_m·S_m`` (decomposed heads), or
  ``σ = σ_raw · std + mean``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn

from eqv2calc.model.backbone import EquiformerV2Backbone, GraphInput
from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.model.constants import ExactConstants
from eqv2calc.model.heads import EnergyHead, ForceHead, Rank2Head, symmetric_tensor_basis


@dataclass
class HeadSpec:
    """Which head computes which property, with its options."""

    kind: str  # "energy" | "forces" | "rank2"
    options: dict = field(default_factory=dict)


#: the output each kind of head produces
OUTPUT_OF_KIND = {"energy": "energy", "forces": "forces", "rank2": "stress"}


@dataclass
class Normalizer:
    mean: float = 0.0
    std: float = 1.0


class EquiformerV2Potential(ExactConstants):
    """EquiformerV2 backbone + heads + output scaling.

    ``forward(graph)`` returns ``{"energy": [B] eV, "forces": [N, 3] eV/Å}`` and, with a
    stress head, ``"stress": [B, 3, 3]`` eV/Å³. Each output comes from the head of its kind
    (:data:`OUTPUT_OF_KIND`), whatever the head's name in ``heads``; one head per kind.
    """

    def __init__(
        self,
        config: EquiformerV2Config,
        heads: dict[str, HeadSpec] | None = None,
        normalizers: dict[str, Normalizer] | None = None,
        element_references: torch.Tensor | None = None,
        energy_kind: str = "total",
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = EquiformerV2Backbone(config)
        if heads is None:
            heads = {"energy": HeadSpec("energy"), "forces": HeadSpec("forces")}
        self.head_specs = heads
        kinds = [spec.kind for spec in heads.values()]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ValueError(f"more than one {kind!r} head in {sorted(heads)}")
        modules = {}
        for name, spec in heads.items():
            if spec.kind == "energy":
                modules[name] = EnergyHead(self.backbone, **spec.options)
            elif spec.kind == "forces":
                modules[name] = ForceHead(self.backbone, **spec.options)
            elif spec.kind == "rank2":
                modules[name] = Rank2Head(self.backbone, **spec.options)
            else:
                raise ValueError(f"unknown head kind {spec.kind!r} for output {name!r}")
        self.heads = nn.ModuleDict(modules)
        if config.load_energy_lin_ref:
            self.register_buffer("energy_lin_ref", torch.zeros(config.num_elements))
        self.normalizers = dict(normalizers or {})
        self.register_buffer(
            "element_references",
            element_references.clone().float()
            if element_references is not None
            else torch.zeros(0),
        )
        self.energy_kind = energy_kind
        # "direct": forces/stress from their heads; "gradient": −∂E/∂x and (1/V)·∂E/∂ε, computed
        # by eqv2calc.model.conservative (the checkpoint records which)
        self.forces_kind = "direct"
        iso, aniso = symmetric_tensor_basis(torch.float64)
        self.register_constant("stress_iso_basis", iso)
        self.register_constant("stress_aniso_basis", aniso)

    @property
    def has_stress(self) -> bool:
        return any(spec.kind == "rank2" for spec in self.head_specs.values())

    @property
    def cutoff(self) -> float:
        return float(self.config.cutoff)

    def _norm(self, key: str) -> Normalizer:
        return self.normalizers.get(key, Normalizer())

    def forward(
        self, graph: GraphInput, outputs: Collection[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """The outputs named in ``outputs`` ("energy", "forces", "stress"; all when None)."""
        emb = self.backbone(graph)
        out: dict[str, torch.Tensor] = {}
        z = graph.atomic_numbers
        for name, head in self.heads.items():
            kind = self.head_specs[name].kind
            if outputs is not None and OUTPUT_OF_KIND[kind] not in outputs:
                continue
            raw = head(emb)
            if kind == "energy":
                energy = raw
                if self.config.use_energy_lin_ref:
                    energy = energy + torch.zeros_like(energy).index_add_(
                        0, graph.batch, self.energy_lin_ref[z].to(energy.dtype)
                    )
                n = self._norm("energy")
                energy = energy * n.std + n.mean
                if self.element_references.numel():
                    refs = self.element_references.to(energy.dtype)[z]
                    energy = energy + torch.zeros_like(energy).index_add_(0, graph.batch, refs)
                out["energy"] = energy
            elif kind == "forces":
                n = self._norm("forces")
                out["forces"] = raw * n.std + n.mean
            else:  # rank2
                if isinstance(raw, tuple):
                    iso, aniso = raw
                    ni, na = self._norm("stress_isotropic"), self._norm("stress_anisotropic")
                    iso = iso * ni.std + ni.mean
                    aniso = aniso * na.std + na.mean
                    stress = iso.view(-1, 1, 1) * self.stress_iso_basis.to(
                        iso.dtype
                    ) + torch.einsum("bm,mij->bij", aniso, self.stress_aniso_basis.to(aniso.dtype))
                else:
                    n = self._norm("stress")
                    stress = raw * n.std + n.mean
                out["stress"] = stress
        return out
