"""The one table that translates reference (fairchem) parameter names into ours, and back.

Reference state dicts name parameters after fairchem's module tree (``blocks.3.ga.so2_conv_1
.rad_func.net.0.weight``); ours follow eqv2calc's (``backbone.blocks.3.attention.conv_1.radial
.net.0.weight``). Every rule is a pair of regular expressions with the same groups, so the
translation runs both ways (loading released files, and writing files fairchem 1.x can read).

Keys that hold bookkeeping the reference stores but we recompute (Wigner/grid helpers, index
buffers) are listed in :data:`DERIVED`; the loader checks the ones we use and accounts for all.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from eqv2calc.model.config import EquiformerV2Config

# Inside-a-module rules, applied after the module prefix has been translated.
# (reference suffix, our suffix); "{i}" stands for an integer index.
_ATTENTION = [
    ("alpha_dot", "alpha_dot"),
    ("source_embedding.weight", "edge_invariants.source_embedding.weight"),
    ("target_embedding.weight", "edge_invariants.target_embedding.weight"),
    ("rad_func.net.{i}.{p}", "shared_radial.net.{i}.{p}"),
    ("so2_conv_1.fc_m0.{p}", "conv_1.fc_m0.{p}"),
    ("so2_conv_1.so2_m_conv.{i}.fc.weight", "conv_1.orders.{i}.fc.weight"),
    ("so2_conv_1.rad_func.net.{i}.{p}", "conv_1.radial.net.{i}.{p}"),
    ("alpha_norm.{p}", "alpha_norm.{p}"),
    ("so2_conv_2.fc_m0.{p}", "conv_2.fc_m0.{p}"),
    ("so2_conv_2.so2_m_conv.{i}.fc.weight", "conv_2.orders.{i}.fc.weight"),
    ("proj.{p}", "proj.{p}"),
]
_FFN = [
    ("so3_linear_1.{p}", "linear_1.{p}"),
    ("so3_linear_2.{p}", "linear_2.{p}"),
    ("scalar_mlp.0.{p}", "scalar_linear.{p}"),
    ("gating_linear.{p}", "gate_linear.{p}"),
    ("grid_mlp.{i}.weight", "grid_mlp.{i}.weight"),
]
_NORM = [
    ("norm_l0.{p}", "scalar_norm.{p}"),
    ("affine_weight", "degree_weight"),
    ("affine_bias", "bias"),
]
_RANK2 = [
    ("xedge_layer_norm.{p}", "edge_norm.{p}"),
    ("block.scalar_MLP.{i}.{p}", "scalar_mlp.{i}.{p}"),
    ("block.irrep2_MLP.{i}.{p}", "irrep2_mlp.{i}.{p}"),
    ("block.r2tensor_MLP.{i}.{p}", "tensor_mlp.{i}.{p}"),
]

# (reference module prefix, our module prefix, rules for what follows)
_BACKBONE_MODULES = [
    ("sphere_embedding.weight", "sphere_embedding.weight", None),
    ("distance_expansion.offset", "distance_basis.centres", None),
    ("force_embedding.{p}", "force_embedding.{p}", None),
    ("noise_schedule_sigma_embedding.{p}", "sigma_embedding.{p}", None),
    ("source_embedding.weight", "shared_edge_invariants.source_embedding.weight", None),
    ("target_embedding.weight", "shared_edge_invariants.target_embedding.weight", None),
    (
        "edge_degree_embedding.source_embedding.weight",
        "edge_degree.edge_invariants.source_embedding.weight",
        None,
    ),
    (
        "edge_degree_embedding.target_embedding.weight",
        "edge_degree.edge_invariants.target_embedding.weight",
        None,
    ),
    ("edge_degree_embedding.rad_func.net.{i}.{p}", "edge_degree.radial.net.{i}.{p}", None),
    ("blocks.{b}.norm_1.", "blocks.{b}.norm_1.", _NORM),
    ("blocks.{b}.norm_2.", "blocks.{b}.norm_2.", _NORM),
    ("blocks.{b}.ga.", "blocks.{b}.attention.", _ATTENTION),
    ("blocks.{b}.ffn.", "blocks.{b}.ffn.", _FFN),
    ("norm.", "norm.", _NORM),
]

#: keys the reference stores but eqv2calc derives itself (checked or recomputed on load)
DERIVED = [
    r"(^|\.)SO3_rotation\.",
    r"(^|\.)mappingReduced\.",
    r"(^|\.)SO3_grid\.",
    r"(^|\.)balance_degree_weight$",
    r"(^|\.)expand_index$",
]

_FIELD = {"i": r"(?P<i>\d+)", "b": r"(?P<b>\d+)", "p": r"(?P<p>weight|bias)"}


def _compile(template: str, *, prefix_only: bool) -> re.Pattern:
    pattern = re.escape(template)
    for key, value in _FIELD.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), value)
    return re.compile("^" + pattern + ("" if prefix_only else "$"))


def _fill(template: str, groups: dict[str, str]) -> str:
    for key, value in groups.items():
        template = template.replace("{" + key + "}", value)
    return template


def _translate_within(rules: list[tuple[str, str]], name: str, reverse: bool) -> str | None:
    for ref, ours in rules:
        src, dst = (ours, ref) if reverse else (ref, ours)
        match = _compile(src, prefix_only=False).match(name)
        if match:
            return _fill(dst, match.groupdict())
    return None


def _translate_modules(modules, name: str, reverse: bool) -> str | None:
    for ref, ours, inner in modules:
        src, dst = (ours, ref) if reverse else (ref, ours)
        match = _compile(src, prefix_only=inner is not None).match(name)
        if not match:
            continue
        head = _fill(dst, match.groupdict())
        if inner is None:
            return head
        rest = _translate_within(inner, name[match.end() :], reverse)
        if rest is not None:
            return head + rest
    return None


def head_modules(kind: str, file_module: str) -> list:
    """Module rules for one output head; ``file_module`` is the head's submodule name in the file."""
    if kind == "energy":
        return [(file_module + ".", "ffn.", _FFN)]
    if kind == "forces":
        return [
            (file_module + ".", "attention.", _ATTENTION),
            ("denoising_pos_block.", "denoising_attention.", _ATTENTION),
        ]
    if kind == "rank2":
        return [("sphharm_norm.", "sh_norm.", _NORM), ("", "", _RANK2)]
    raise ValueError(f"unknown head kind {kind!r}")


def to_ours(name: str, heads: dict[str, tuple[str, str]], classic: bool) -> str | None:
    """Translate a reference key (prefix already stripped) into our key, or None if unknown.

    ``heads`` maps our output name → (head kind, submodule name in the file); for classic files
    the submodule names are ``energy_block`` / ``force_block`` at the top level.
    """
    if name == "energy_lin_ref":
        return "energy_lin_ref"
    if classic:
        for out_name, (kind, module) in heads.items():
            if name.startswith(module + "."):
                rest = _translate_modules(head_modules(kind, module), name, reverse=False)
                return f"heads.{out_name}.{rest}" if rest else None
        rest = _translate_modules(_BACKBONE_MODULES, name, reverse=False)
        return f"backbone.{rest}" if rest else None
    if name.startswith("backbone."):
        rest = _translate_modules(_BACKBONE_MODULES, name[len("backbone.") :], reverse=False)
        return f"backbone.{rest}" if rest else None
    if name.startswith("output_heads."):
        file_key, _, rest = name[len("output_heads.") :].partition(".")
        for out_name, (kind, module) in heads.items():
            if out_name == file_key:
                inner = _translate_modules(head_modules(kind, module), rest, reverse=False)
                return f"heads.{out_name}.{inner}" if inner else None
    return None


def to_reference(name: str, heads: dict[str, tuple[str, str]], classic: bool) -> str | None:
    """Inverse of :func:`to_ours` (used when writing checkpoints)."""
    if name == "energy_lin_ref":
        return "energy_lin_ref"
    if name.startswith("backbone."):
        rest = _translate_modules(_BACKBONE_MODULES, name[len("backbone.") :], reverse=True)
        if rest is None:
            return None
        return rest if classic else f"backbone.{rest}"
    if name.startswith("heads."):
        out_name, _, rest = name[len("heads.") :].partition(".")
        kind, module = heads[out_name]
        inner = _translate_modules(head_modules(kind, module), rest, reverse=True)
        if inner is None:
            return None
        return inner if classic else f"output_heads.{out_name}.{inner}"
    return None


def is_derived(name: str) -> bool:
    return any(re.search(p, name) for p in DERIVED)


# --------------------------------------------------------------------------------------------
# The option table: which modules and constructor arguments the reference (fairchem-core 1.10)
# accepts for the EquiformerV2 family, what each means for eqv2calc, and what it refuses.
# --------------------------------------------------------------------------------------------

#: modules under which the reference's classes can be imported by full path
_PACKAGE = "fairchem.core.models.equiformer_v2"


@dataclass(frozen=True)
class ModuleClass:
    """One reference class: its registry name, class name, role and accepted arguments."""

    registry_name: str
    class_name: str
    kind: str  # backbone: "backbone" | "dens"; heads: "energy" | "forces" | "rank2"
    arguments: frozenset[str]
    submodule: str = ""  # heads: the block's attribute name in the state dict
    note: str = ""


# Backbone constructor arguments and how eqv2calc treats each one.
#: same name and meaning in EquiformerV2Config
_SAME = {
    "max_neighbors",
    "num_layers",
    "sphere_channels",
    "attn_hidden_channels",
    "num_heads",
    "attn_alpha_channels",
    "attn_value_channels",
    "ffn_hidden_channels",
    "norm_type",
    "grid_resolution",
    "edge_channels",
    "use_atom_edge_embedding",
    "share_atom_edge_embedding",
    "use_m_share_rad",
    "use_attn_renorm",
    "use_gate_act",
    "use_grid_mlp",
    "use_sep_s2_act",
    "avg_num_nodes",
    "avg_degree",
    "use_energy_lin_ref",
    "load_energy_lin_ref",
}
#: THE option-name table: reference (fairchem) backbone argument -> our EquiformerV2Config
#: field, for every option whose name differs. Checkpoints on disk keep the reference's names;
#: this table is used when reading them (:func:`backbone_config`), when writing them
#: (:func:`reference_backbone`) and for the training YAML (:func:`our_option_names`).
OPTION_NAMES = {
    "max_radius": "cutoff",
    "enforce_max_neighbors_strictly": "strict_neighbor_cap",
    "max_num_elements": "num_elements",
    "lmax_list": "lmax",
    "mmax_list": "mmax",
    "use_noise_schedule_sigma_encoding": "sigma_encoding",
}
#: reference arguments that hold our value as a one-element list (one resolution per model)
_LISTED = {"lmax_list", "mmax_list"}


def _our_value(reference_name: str, value: object) -> object:
    if reference_name not in _LISTED:
        return value
    if not isinstance(value, (list, tuple)) or len(value) != 1:
        raise ValueError(
            f"option {reference_name}={value!r} is refused: a list of length 1 expected (one"
            " resolution; the reference's norms, grids and heads are built for a single lmax)"
        )
    return value[0]


def our_option_names(options: dict) -> dict:
    """``options`` with the reference's names of :data:`OPTION_NAMES` replaced by ours.

    Values are converted (``lmax_list: [4]`` becomes ``lmax: 4``); other keys pass unchanged.
    Raises ValueError when one option is given under both names, or a list is not of length 1.
    """
    for reference_name, ours in OPTION_NAMES.items():
        if reference_name in options and ours in options:
            raise ValueError(
                f"option {ours!r} is given twice, also under fairchem's name {reference_name!r};"
                " keep one"
            )
    return {
        OPTION_NAMES.get(key, key): _our_value(key, value) if key in OPTION_NAMES else value
        for key, value in options.items()
    }


def check_model_options(options: dict) -> None:
    """Raise ValueError naming the first key of ``options`` (our names, as from
    :func:`our_option_names`) that :func:`model_config` does not take: neither an
    EquiformerV2Config option nor an argument of the reference's EquiformerV2Backbone; the
    message gives the closest accepted name and the accepted names."""
    import difflib

    ours = sorted(f.name for f in dataclasses.fields(EquiformerV2Config))
    reference = sorted(BACKBONES[1].arguments - set(ours))
    unknown = [key for key in options if key not in ours and key not in reference]
    if not unknown:
        return
    close = difflib.get_close_matches(str(unknown[0]), ours + reference, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(
        f"unknown option {unknown[0]!r}; {hint}accepted: eqv2calc's {ours}, or fairchem's "
        f"{BACKBONES[1].class_name} arguments {reference}"
    )


def reference_option_names(options: dict) -> dict:
    """Inverse of :func:`our_option_names`: our names of :data:`OPTION_NAMES` → the reference's."""
    reference = {ours: name for name, ours in OPTION_NAMES.items()}
    renamed = {}
    for key, value in options.items():
        name = reference.get(key, key)
        renamed[name] = [value] if name in _LISTED else value
    return renamed


def reference_spelling(message: str) -> str:
    """``message`` (naming our options) with the reference's names of those it mentions."""
    named = [
        f"{ours} = {name}"
        for name, ours in OPTION_NAMES.items()
        if re.search(rf"\b{ours}\b", message)
    ]
    return f"{message} (fairchem names: {', '.join(named)})" if named else message


#: accepted and without effect on inference, with the reason
_NO_EFFECT = {
    "use_pbc": "graph construction (eqv2calc builds its own graph from the structure's pbc)",
    "use_pbc_single": "graph construction batching only",
    "otf_graph": "graph construction (eqv2calc always builds graphs on the fly)",
    "regress_forces": "forces come from the force head",
    "activation_checkpoint": "training memory switch",
    "alpha_drop": "dropout (training only)",
    "drop_path_rate": "drop-path (training only)",
    "proj_drop": "dropout (training only)",
    "weight_init": "initialisation (training only)",
    "num_sphere_samples": "unused by the reference",
    "attn_activation": "unused by the reference (its activations are fixed SiLU)",
    "ffn_activation": "unused by the reference (its activations are fixed SiLU)",
    "num_distance_basis": "unused by the reference (it always uses 600 Gaussians)",
    "distance_function": "'gaussian', the only value the reference accepts",
    "use_s2_act_attn": "False, the only value the reference accepts",
    "use_force_encoding": "DeNS: only encodes forces of noisy training structures",
}
#: arguments the reference checks itself, with the values it accepts and why
_CHECKED = {
    "use_s2_act_attn": ((False,), "the reference asserts it is False (not implemented)"),
    "distance_function": (("gaussian",), "the reference asserts distance_function == 'gaussian'"),
    "weight_init": (("normal", "uniform"), "the reference asserts weight_init in normal/uniform"),
}
_BACKBONE_ARGS = frozenset(
    _SAME
    | set(OPTION_NAMES) - {"use_noise_schedule_sigma_encoding"}
    | set(_NO_EFFECT) - {"activation_checkpoint", "use_force_encoding"}
)
_LEGACY_CLASSIC = {
    "num_atoms": "argument of pre-fairchem OCP trainers",
    "bond_feat_dim": "argument of pre-fairchem OCP trainers",
    "num_targets": "argument of pre-fairchem OCP trainers",
}

BACKBONES = [
    ModuleClass("equiformer_v2", "EquiformerV2", "backbone", _BACKBONE_ARGS | set(_LEGACY_CLASSIC)),
    ModuleClass(
        "equiformer_v2_backbone",
        "EquiformerV2Backbone",
        "backbone",
        _BACKBONE_ARGS | {"activation_checkpoint"},
    ),
    ModuleClass(
        "equiformer_v2_dens_backbone",
        "EqV2DeNSBackbone",
        "dens",
        _BACKBONE_ARGS
        | {"activation_checkpoint", "use_force_encoding", "use_noise_schedule_sigma_encoding"},
    ),
]

_RANK2_ARGS = {
    "output_name",
    "decompose",
    "edge_level_mlp",
    "num_mlp_layers",
    "use_source_target_embedding",
    "extensive",
    "avg_num_nodes",
    "default_norm_type",
}
HEADS = [
    ModuleClass(
        "equiformer_v2_energy_head",
        "EquiformerV2EnergyHead",
        "energy",
        frozenset({"reduce"}),
        "energy_block",
        "deprecated alias of equiformerV2_scalar_head",
    ),
    ModuleClass(
        "equiformerV2_scalar_head",
        "EqV2ScalarHead",
        "energy",
        frozenset({"output_name", "reduce"}),
        "energy_block",
    ),
    ModuleClass(
        "eqV2_DeNS_scalar_head",
        "DeNSScalarHead",
        "energy",
        frozenset({"output_name", "reduce", "use_denoising"}),
        "scalar_block",
    ),
    ModuleClass(
        "equiformer_v2_force_head",
        "EquiformerV2ForceHead",
        "forces",
        frozenset(),
        "force_block",
        "deprecated alias of equiformerV2_vector_head",
    ),
    ModuleClass(
        "equiformerV2_vector_head",
        "EqV2VectorHead",
        "forces",
        frozenset({"output_name"}),
        "force_block",
    ),
    ModuleClass(
        "eqV2_DeNS_vector_head",
        "DeNSVectorHead",
        "forces",
        frozenset({"output_name"}),
        "vector_block",
        "carries a second block, denoising_pos_block, used only on noisy training structures",
    ),
    ModuleClass(
        "rank2_symmetric_head", "Rank2SymmetricTensorHead", "rank2", frozenset(_RANK2_ARGS)
    ),
    ModuleClass(
        "dens_rank2_symmetric_head",
        "DeNSRank2Head",
        "rank2",
        frozenset(_RANK2_ARGS | {"use_denoising"}),
    ),
]

#: the modules (under _PACKAGE) where each class can be imported from by full path
_IMPORTABLE = {
    "": {"EquiformerV2"},
    "equiformer_v2_deprecated": {"EquiformerV2"},
    "equiformer_v2": {
        "EquiformerV2Backbone",
        "EquiformerV2EnergyHead",
        "EquiformerV2ForceHead",
        "EqV2ScalarHead",
        "EqV2VectorHead",
    },
    "equiformer_v2_dens": {
        "EqV2DeNSBackbone",
        "EquiformerV2Backbone",
        "DeNSScalarHead",
        "DeNSVectorHead",
        "DeNSRank2Head",
        "Rank2SymmetricTensorHead",
    },
    "heads": {"EqV2ScalarHead", "EqV2VectorHead", "Rank2SymmetricTensorHead"},
    "heads.scalar": {"EqV2ScalarHead"},
    "heads.vector": {"EqV2VectorHead"},
    "heads.rank2": {"Rank2SymmetricTensorHead"},
}


def resolve(name: object, table: list[ModuleClass]) -> ModuleClass | None:
    """The class a config's module name means, as the reference resolves it.

    The reference accepts a registry name (``equiformer_v2_backbone``) or the full import path of
    a class (``fairchem.core.models.equiformer_v2.equiformer_v2_dens.EqV2DeNSBackbone``); a bare
    class name is neither. Returns None for anything else.
    """
    if not isinstance(name, str):
        return None
    for entry in table:
        if name == entry.registry_name:
            return entry
    module, _, class_name = name.rpartition(".")
    if module == _PACKAGE:
        sub = ""
    elif module.startswith(_PACKAGE + "."):
        sub = module[len(_PACKAGE) + 1 :]
    else:
        return None
    if class_name not in _IMPORTABLE.get(sub, set()):
        return None
    return next((e for e in table if e.class_name == class_name), None)


def backbone_config(options: dict, entry: ModuleClass) -> dict:
    """Translate a backbone's reference arguments into EquiformerV2Config options.

    Raises ValueError naming the first argument the reference itself would refuse, and why.
    """
    unknown = sorted(set(options) - entry.arguments)
    if unknown:
        raise ValueError(
            f"option {unknown[0]!r} is not an argument of the reference's {entry.class_name}"
            f" ({entry.registry_name}); fairchem would fail to build the model"
        )
    for key, (allowed, reason) in _CHECKED.items():
        if key in options and options[key] not in allowed:
            raise ValueError(f"option {key}={options[key]!r} is refused: {reason}")
    if options.get("share_atom_edge_embedding") and not options.get(
        "use_atom_edge_embedding", True
    ):
        raise ValueError(
            "option share_atom_edge_embedding=True is refused without use_atom_edge_embedding:"
            " the reference asserts use_atom_edge_embedding when sharing"
        )
    if options.get("use_energy_lin_ref") and not options.get("load_energy_lin_ref"):
        raise ValueError(
            "option use_energy_lin_ref=True is refused without load_energy_lin_ref=True:"
            " the reference asserts it (the model would have no reference parameters)"
        )
    ours = our_option_names({k: v for k, v in options.items() if k in _SAME or k in OPTION_NAMES})
    if entry.kind == "dens":
        ours["dens_inputs"] = True
    return ours


#: EquiformerV2Config options the reference does not have (see model.envelope and
#: EquiformerV2Config.distance_basis_width)
OURS_ONLY = ("envelope", "distance_basis_width")


def reference_backbone(config: dict) -> tuple[str, dict]:
    """Registry name and reference arguments for an EquiformerV2Config (as a dict).

    eqv2calc's own options (:data:`OURS_ONLY`) are not reference arguments: they are left out
    here, and the checkpoint writer keeps them under ``config["eqv2calc"]``.
    """
    options = reference_option_names({k: v for k, v in config.items() if k not in OURS_ONLY})
    if options.pop("dens_inputs", False):
        return "equiformer_v2_dens_backbone", options
    options.pop("use_noise_schedule_sigma_encoding", None)
    return "equiformer_v2_backbone", options


def head_options(options: dict, entry: ModuleClass) -> dict:
    """Translate a head's reference arguments into our head options (see model.heads).

    Raises ValueError naming the first argument the reference would refuse, and why.
    """
    unknown = sorted(set(options) - entry.arguments)
    if unknown:
        raise ValueError(
            f"option {unknown[0]!r} is not an argument of the reference's {entry.class_name}"
            f" ({entry.registry_name}); fairchem would fail to build the head"
        )
    ours: dict = {}
    if entry.kind == "energy":
        reduce = options.get("reduce", "sum")
        if reduce not in ("sum", "mean"):
            raise ValueError(
                f"option reduce={reduce!r} is refused: the reference accepts 'sum' or 'mean'"
            )
        ours["reduce"] = reduce
    elif entry.kind == "forces":
        ours["denoising_block"] = entry.class_name == "DeNSVectorHead"
    else:
        layers = options.get("num_mlp_layers", 2)
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(
                f"option num_mlp_layers={layers!r} is refused: the MLP needs at least one layer"
            )
        for key in ("decompose", "edge_level_mlp", "use_source_target_embedding", "extensive"):
            ours[key] = bool(options.get(key, False))
        ours["num_mlp_layers"] = layers
        ours["avg_num_nodes"] = float(options.get("avg_num_nodes", 1.0))
    return ours


def reference_head(kind: str, options: dict) -> tuple[ModuleClass, dict]:
    """The reference class and arguments that hold one of our heads (for writing)."""
    if kind == "energy":
        entry = next(e for e in HEADS if e.registry_name == "equiformerV2_scalar_head")
        return entry, {"reduce": options.get("reduce", "sum")}
    if kind == "forces":
        dens = options.get("denoising_block", False)
        name = "eqV2_DeNS_vector_head" if dens else "equiformerV2_vector_head"
        return next(e for e in HEADS if e.registry_name == name), {}
    entry = next(e for e in HEADS if e.registry_name == "rank2_symmetric_head")
    return entry, dict(options)


def model_config(options: dict, *, where: str = "model options") -> EquiformerV2Config:
    """An EquiformerV2Config from our option names, fairchem's backbone arguments, or a mix.

    Reference arguments go through the same table as checkpoint configs (translated, dropped
    when without effect, refused with the reference's reason); one option given under both
    names is refused. Raises ValueError naming ``where`` and the option.
    """
    ours = {f.name for f in dataclasses.fields(EquiformerV2Config)}
    try:
        options = our_option_names(options)
        reference = {k: v for k, v in options.items() if k not in ours}
        translated = backbone_config(reference, BACKBONES[1]) if reference else {}
        return EquiformerV2Config(**translated, **{k: v for k, v in options.items() if k in ours})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
