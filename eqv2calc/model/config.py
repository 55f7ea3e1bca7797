"""EquiformerV2 hyper-parameters, with the reference implementation's defaults.

:class:`EquiformerV2Config` holds what decides the model's parameters and outputs at inference;
nothing else. Checkpoints written by fairchem name these options as its constructors do, plus
graph and training switches (``otf_graph``, ``use_pbc``, ``regress_forces``, dropout rates,
weight initialisation, ...): :mod:`eqv2calc.checkpoint.names` translates, checks and drops those
in one table, and translates back when writing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# The reference's fall-backs when a config omits avg_num_nodes / avg_degree (IS2RE-100k stats).
DEFAULT_AVG_NUM_NODES = 77.81317
DEFAULT_AVG_DEGREE = 23.395238876342773

NORM_TYPES = ("layer_norm", "layer_norm_sh", "rms_norm_sh")
ENVELOPES = ("none", "polynomial")


@dataclass
class EquiformerV2Config:
    """Backbone hyper-parameters. Lengths in Å.

    Attributes (beyond the sizes; fairchem's names for some differ, see
    :data:`eqv2calc.checkpoint.names.OPTION_NAMES`):
        cutoff: cutoff radius (Å); the Gaussian distance basis spans ``[0, cutoff]``.
        max_neighbors, strict_neighbor_cap: the neighbour cap the model was trained with (graph
            construction, see :mod:`eqv2calc.graph`).
        num_elements: size of the element embedding tables (atomic numbers ``0 .. num_elements
            - 1``).
        lmax, mmax: the highest degree and order of the spherical-harmonic features (one
            resolution).
        grid_resolution: S² grid size (``res × res``); ``None`` sizes each grid from its degrees
            as the reference does (see :func:`eqv2calc.model.s2_grid.grid_shape`).
        use_atom_edge_embedding: element embeddings of both edge ends join the edge invariants;
            ``share_atom_edge_embedding``: one pair for the whole model instead of one per module.
        use_m_share_rad: one radial weight per degree and channel, applied before the rotation.
        use_gate_act / use_sep_s2_act / use_grid_mlp: the non-linearities (see the modules).
        avg_num_nodes, avg_degree: normalisers of the energy sum and the edge-degree embedding
            (the reference's defaults when ``None``).
        use_energy_lin_ref, load_energy_lin_ref: OC22 per-element energy references held by the
            model (``load``: the parameter exists; ``use``: it is added to the energy).
        dens_inputs: the DeNS backbone's force-encoding layer exists (its bias is added to the
            l = 0 features); ``sigma_encoding``: so does its noise-level encoding.
        envelope: ``"none"`` (the reference architecture) or ``"polynomial"`` (eqv2calc's own
            option, see :mod:`eqv2calc.model.envelope`): every edge's contribution fades
            smoothly to zero at the cutoff, so the energy is continuous (and twice
            differentiable) as atoms cross it. Needed for conservative (gradient-force) models;
            only continuous if the neighbour cap never binds (``max_neighbors`` above any
            atom's neighbour count inside the cutoff).
        distance_basis_width: width of each of the 600 Gaussians of the distance basis, in
            centre spacings (``cutoff / 599`` Å): ``2.0`` is the reference architecture (0.015 Å
            at a 4.5 Å cutoff). eqv2calc's own option: wider Gaussians (e.g. ``12.0``, 0.09 Å)
            make the radial functions smooth on the scale of a vibration, so that a small model
            trained on little data has no meV bumps in its energy over a few hundredths of an Å
            (the curvature at a minimum, issue 17).
    """

    max_neighbors: int = 500
    cutoff: float = 5.0
    strict_neighbor_cap: bool = True
    num_elements: int = 90
    num_layers: int = 12
    sphere_channels: int = 128
    attn_hidden_channels: int = 128
    num_heads: int = 8
    attn_alpha_channels: int = 32
    attn_value_channels: int = 16
    ffn_hidden_channels: int = 512
    norm_type: str = "rms_norm_sh"
    lmax: int = 6
    mmax: int = 2
    grid_resolution: int | None = None
    edge_channels: int = 128
    use_atom_edge_embedding: bool = True
    share_atom_edge_embedding: bool = False
    use_m_share_rad: bool = False
    use_attn_renorm: bool = True
    use_gate_act: bool = False
    use_grid_mlp: bool = False
    use_sep_s2_act: bool = True
    avg_num_nodes: float | None = None
    avg_degree: float | None = None
    use_energy_lin_ref: bool = False
    load_energy_lin_ref: bool = False
    dens_inputs: bool = False
    sigma_encoding: bool = False
    envelope: str = "none"
    distance_basis_width: float = 2.0

    def __post_init__(self) -> None:
        # the reference replaces a missing (or zero) value by its default: `avg or default`
        if not self.avg_num_nodes:
            self.avg_num_nodes = DEFAULT_AVG_NUM_NODES
        if not self.avg_degree:
            self.avg_degree = DEFAULT_AVG_DEGREE
        problems = self._type_problems()
        if problems:
            raise ValueError("invalid EquiformerV2 configuration: " + "; ".join(problems))
        if not 0 <= self.mmax <= self.lmax:
            problems.append(f"need 0 <= mmax <= lmax, got {self.lmax}/{self.mmax}")
        if self.grid_resolution is not None:
            res, lmax = self.grid_resolution, self.lmax
            if isinstance(res, bool) or not isinstance(res, int) or res % 2 or res < 2 * (lmax + 1):
                problems.append(
                    f"grid_resolution {res!r} for lmax {lmax}: expected an even number >="
                    f" {2 * (lmax + 1)} (the reference's e3nn grids assert it)"
                )
        if self.norm_type not in NORM_TYPES:
            problems.append(f"norm_type {self.norm_type!r}: expected one of {list(NORM_TYPES)}")
        if self.envelope not in ENVELOPES:
            problems.append(f"envelope {self.envelope!r}: expected one of {list(ENVELOPES)}")
        if self.share_atom_edge_embedding and not self.use_atom_edge_embedding:
            problems.append("share_atom_edge_embedding needs use_atom_edge_embedding")
        if self.use_energy_lin_ref and not self.load_energy_lin_ref:
            problems.append("use_energy_lin_ref=True needs load_energy_lin_ref=True")
        if self.sigma_encoding and not self.dens_inputs:
            problems.append("sigma_encoding needs dens_inputs (it belongs to the DeNS backbone)")
        for name in ("num_layers", "sphere_channels", "num_heads", "edge_channels"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < float(self.distance_basis_width) < math.inf:
            problems.append(
                f"distance_basis_width must be a finite number > 0, got {self.distance_basis_width}"
            )
        if not float(self.cutoff) > 0:
            problems.append(f"cutoff must be > 0 Å, got {self.cutoff}")
        if int(self.max_neighbors) < 1:
            problems.append(f"max_neighbors must be >= 1, got {self.max_neighbors}")
        if problems:
            raise ValueError("invalid EquiformerV2 configuration: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        """Each field against its annotated type (bool is not an int; ints are floats)."""
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            if kind == "bool":
                ok = isinstance(value, bool) or value in (0, 1)  # 0/1 as the reference's truthiness
                if ok:
                    setattr(self, f.name, bool(value))
            elif kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind.startswith("float"):
                ok = (value is None and "None" in kind) or (
                    isinstance(value, (int, float)) and not isinstance(value, bool)
                )
            elif kind == "int | None":
                ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
            else:
                ok = isinstance(value, str)
            if not ok:
                problems.append(f"{f.name}={value!r} (expected {kind})")
        return problems

    @classmethod
    def from_dict(cls, options: dict, *, where: str = "model config") -> EquiformerV2Config:
        """Build from our own option names; unknown keys raise, naming each key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in options if k not in known)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}")
        return cls(**options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
