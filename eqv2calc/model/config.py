"""EquiformerV2 hyper-parameters, with the reference implementation's defaults.

:class:`EquiformerV2Config` names every option the released checkpoints use. Options that only
matter for training (dropout rates, weight initialisation, ...) are accepted and kept so that
a checkpoint's config round-trips, but do not change inference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# The reference's fall-backs when a config omits avg_num_nodes / avg_degree (IS2RE-100k stats).
DEFAULT_AVG_NUM_NODES = 77.81317
DEFAULT_AVG_DEGREE = 23.395238876342773


@dataclass
class EquiformerV2Config:
    """Backbone hyper-parameters. Lengths in Å."""

    max_neighbors: int = 500
    max_radius: float = 5.0
    max_num_elements: int = 90
    num_layers: int = 12
    sphere_channels: int = 128
    attn_hidden_channels: int = 128
    num_heads: int = 8
    attn_alpha_channels: int = 32
    attn_value_channels: int = 16
    ffn_hidden_channels: int = 512
    norm_type: str = "rms_norm_sh"
    lmax_list: list[int] = field(default_factory=lambda: [6])
    mmax_list: list[int] = field(default_factory=lambda: [2])
    grid_resolution: int | None = None
    num_sphere_samples: int = 128
    edge_channels: int = 128
    use_atom_edge_embedding: bool = True
    share_atom_edge_embedding: bool = False
    use_m_share_rad: bool = False
    distance_function: str = "gaussian"
    num_distance_basis: int = 512
    attn_activation: str = "scaled_silu"
    use_s2_act_attn: bool = False
    use_attn_renorm: bool = True
    ffn_activation: str = "scaled_silu"
    use_gate_act: bool = False
    use_grid_mlp: bool = False
    use_sep_s2_act: bool = True
    alpha_drop: float = 0.1
    drop_path_rate: float = 0.05
    proj_drop: float = 0.0
    weight_init: str = "normal"
    enforce_max_neighbors_strictly: bool = True
    avg_num_nodes: float | None = None
    avg_degree: float | None = None
    use_energy_lin_ref: bool = False
    load_energy_lin_ref: bool = False
    use_pbc: bool = True
    use_pbc_single: bool = False
    regress_forces: bool = True
    otf_graph: bool = True
    # DeNS backbone extras (inference without denoising)
    use_force_encoding: bool = False
    use_noise_schedule_sigma_encoding: bool = False
    use_denoising_energy: bool = True
    use_denoising_stress: bool = True
    # eqv2calc's own: whether radial MLP linear layers carry a bias (released files: yes)
    radial_bias: bool = True

    def __post_init__(self) -> None:
        if self.avg_num_nodes is None:
            self.avg_num_nodes = DEFAULT_AVG_NUM_NODES
        if self.avg_degree is None:
            self.avg_degree = DEFAULT_AVG_DEGREE
        problems = []
        if len(self.lmax_list) != 1 or len(self.mmax_list) != 1:
            problems.append(
                f"lmax_list/mmax_list must have one entry (one resolution); got {self.lmax_list}/{self.mmax_list}"
            )
        if self.distance_function != "gaussian":
            problems.append(
                f"distance_function {self.distance_function!r} (only 'gaussian' is supported)"
            )
        if self.use_s2_act_attn:
            problems.append("use_s2_act_attn=True (the reference does not implement it either)")
        if self.share_atom_edge_embedding:
            problems.append("share_atom_edge_embedding=True (no released checkpoint uses it)")
        if self.use_noise_schedule_sigma_encoding:
            problems.append(
                "use_noise_schedule_sigma_encoding=True (no released checkpoint uses it)"
            )
        if self.norm_type not in ("layer_norm", "layer_norm_sh", "rms_norm_sh"):
            problems.append(f"norm_type {self.norm_type!r}")
        if self.use_energy_lin_ref and not self.load_energy_lin_ref:
            problems.append("use_energy_lin_ref=True needs load_energy_lin_ref=True")
        if problems:
            raise ValueError("unsupported EquiformerV2 configuration: " + "; ".join(problems))

    @property
    def lmax(self) -> int:
        return self.lmax_list[0]

    @property
    def mmax(self) -> int:
        return self.mmax_list[0]

    @property
    def cutoff(self) -> float:
        return self.max_radius

    @property
    def grid(self) -> int:
        return self.grid_resolution if self.grid_resolution is not None else 2 * (self.lmax + 1)

    @classmethod
    def from_dict(cls, options: dict, *, where: str = "model config") -> EquiformerV2Config:
        """Build from a checkpoint's model options; unknown keys raise, naming each key."""
        ignored = {
            "name",
            "model",
            "num_targets",
            "bond_feat_dim",
            "num_atoms",
            "activation_checkpoint",
        }
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in options if k not in known and k not in ignored)
        if unknown:
            raise ValueError(f"{where}: unsupported option(s) {', '.join(map(repr, unknown))}")
        return cls(**{k: v for k, v in options.items() if k in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
