"""The one table that translates reference (fairchem) parameter names into ours, and back.

Reference state dicts name parameters after fairchem's module tree (``blocks.3.ga.so2_conv_1
.rad_func.net.0.weight``); ours follow eqv2calc's (``backbone.blocks.3.attention.conv_1.radial
.net.0.weight``). Every rule is a pair of regular expressions with the same groups, so the
translation runs both ways (loading released files, and writing files fairchem 1.x can read).

Keys that hold bookkeeping the reference stores but we recompute (Wigner/grid helpers, index
buffers) are listed in :data:`DERIVED`; the loader checks the ones we use and accounts for all.
"""

from __future__ import annotations

import re

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
    ("gating_linear.{p}", "scalar_linear.{p}"),
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
