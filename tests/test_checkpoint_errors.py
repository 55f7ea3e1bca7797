"""Bad checkpoints and refused options: one-line CheckpointError naming the file and the problem.

Every case starts from a fixture checkpoint (or from bytes that are not one), changes one
thing, and checks the error type, that the message is a single line naming the file, and the
words that say what was expected. Options the reference itself refuses are refused with its
reason; every name the reference resolves for a module is accepted.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from eqv2_reference import cases, checkpoint_path, fixture_graph, run_model

from eqv2calc.checkpoint import CheckpointError, load_checkpoint

CLASSIC = "eq2_opt_shared_edge_gate"  # legacy model_attributes config
HYDRA = "eqV2_opt_hydra_plain_s2_stress_mlp"
DENS = "eqV2_opt_dens_registry_names"
PACKAGE = "fairchem.core.models.equiformer_v2"


@pytest.fixture(scope="module")
def raw():
    cache = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
        return copy.deepcopy(cache[name])

    return get


def _refused(path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def _save(tmp_path, data, name="bad.pt"):
    path = tmp_path / name
    torch.save(data, path)
    return path


# ------------------------------------------------------------------------------------------
# files that are not checkpoints
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"", b"hello, I am a text file\n", b"PK\x03\x04truncated zip"],
    ids=["random_bytes", "empty_file", "text", "truncated_zip"],
)
def test_bytes_that_are_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    _refused(path, "not a")


def test_missing_file(tmp_path):
    _refused(tmp_path / "nowhere.pt", "no such checkpoint file")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ([1, 2, 3], ("expected a dict with 'state_dict' and 'config'", "list")),
        ({"model": 1}, ("expected a dict with 'state_dict' and 'config'",)),
        ({"state_dict": {}, "config": {}}, ("'state_dict' is empty",)),
        ({"state_dict": [torch.zeros(3)], "config": {}}, ("'state_dict' is a list", "mapping")),
        ({"state_dict": {"w": 3.0}, "config": {}}, ("'w'", "expected a tensor")),
    ],
    ids=["list", "no_state_dict", "empty_state_dict", "list_state_dict", "non_tensor"],
)
def test_containers_that_are_not_training_checkpoints(tmp_path, payload, words):
    _refused(_save(tmp_path, payload), *words)


def test_string_config(tmp_path, raw):
    data = raw(CLASSIC)
    data["config"] = "equiformer_v2"
    _refused(_save(tmp_path, data), "'config' is a str", "expected a mapping")


def test_nan_weight_is_refused_at_load_naming_the_parameter(tmp_path, raw):
    data = raw(HYDRA)
    key = "module.backbone.blocks.1.ga.so2_conv_1.fc_m0.weight"
    data["state_dict"][key][3, 4] = float("nan")
    _refused(_save(tmp_path, data), key, "non-finite")


def test_infinite_normalizer_is_refused(tmp_path, raw):
    data = raw(HYDRA)
    data["normalizers"]["energy"]["rmsd"] = torch.tensor(math.inf)
    _refused(_save(tmp_path, data), "normalizer", "finite number")


# ------------------------------------------------------------------------------------------
# bad values of options
# ------------------------------------------------------------------------------------------


def _classic_with(raw, tmp_path, **options):
    data = raw(CLASSIC)
    data["config"]["model_attributes"].update(options)
    return _save(tmp_path, data)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_radius": -6.0}, ("cutoff", "> 0", "cutoff = max_radius")),
        ({"max_radius": 0.0}, ("cutoff", "> 0")),
        ({"max_radius": float("nan")}, ("cutoff", "> 0")),
        ({"max_neighbors": 0}, ("max_neighbors", ">= 1")),
        ({"lmax_list": [2, 2], "mmax_list": [2, 2]}, ("lmax_list=[2, 2]", "length 1")),
        ({"lmax_list": 4}, ("lmax_list=4", "length 1")),
        ({"mmax_list": []}, ("mmax_list=[]", "length 1")),
        ({"mmax_list": [3]}, ("mmax <= lmax", "mmax = mmax_list")),
        ({"grid_resolution": 5}, ("grid_resolution 5", "even number >= 6")),
        ({"grid_resolution": 4}, ("grid_resolution 4", "even number >= 6")),
        ({"norm_type": "batch_norm"}, ("norm_type 'batch_norm'",)),
        ({"num_layers": 0}, ("num_layers", ">= 1")),
        ({"max_radius": "six"}, ("cutoff='six'", "expected float", "cutoff = max_radius")),
        ({"lmax_list": ["2"]}, ("lmax='2'", "expected int", "lmax = lmax_list")),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else "_".join(v),
)
def test_bad_backbone_values(tmp_path, raw, options, words):
    _refused(_classic_with(raw, tmp_path, **options), *words)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"use_s2_act_attn": True}, ("use_s2_act_attn=True", "asserts it is False")),
        ({"distance_function": "sigmoid"}, ("distance_function='sigmoid'", "gaussian")),
        ({"weight_init": "xavier"}, ("weight_init='xavier'", "normal/uniform")),
        (
            {"use_atom_edge_embedding": False},
            ("share_atom_edge_embedding=True", "use_atom_edge_embedding"),
        ),
        ({"use_energy_lin_ref": True}, ("use_energy_lin_ref=True", "load_energy_lin_ref")),
        ({"colour": "blue"}, ("'colour'", "not an argument of the reference's EquiformerV2")),
        ({"activation_checkpoint": True}, ("'activation_checkpoint'", "EquiformerV2")),
        ({"use_force_encoding": True}, ("'use_force_encoding'", "EquiformerV2")),
    ],
    ids=lambda v: "_".join(map(str, v)) if isinstance(v, dict) else "",
)
def test_options_the_reference_refuses(tmp_path, raw, options, words):
    """Refused with the reference's own reason (assertion or constructor signature)."""
    _refused(_classic_with(raw, tmp_path, **options), *words)


def _hydra_with_head(raw, tmp_path, head: str, **changes):
    data = raw(HYDRA)
    data["config"]["model"]["heads"].setdefault(head, {}).update(changes)
    return _save(tmp_path, data)


@pytest.mark.parametrize(
    ("head", "changes", "words"),
    [
        ("energy", {"reduce": "max"}, ("reduce='max'", "'sum' or 'mean'")),
        ("stress", {"num_mlp_layers": 0}, ("num_mlp_layers=0", "at least one layer")),
        ("stress", {"colour": 1}, ("'colour'", "Rank2SymmetricTensorHead")),
        (
            "forces",
            {"module": "equiformer_v2_force_head", "output_name": "forces"},
            ("'output_name'", "EquiformerV2ForceHead"),
        ),
        ("forces", {"module": "DeNSVectorHead"}, ("'DeNSVectorHead'", "full import path")),
        ("forces", {"module": "mace_head"}, ("'mace_head'",)),
        ("forces2", {"module": "equiformerV2_vector_head"}, ("both forces heads",)),
    ],
    ids=["reduce", "mlp_layers", "unknown_option", "alias_signature", "bare_class", "other", "two"],
)
def test_heads_the_reference_refuses(tmp_path, raw, head, changes, words):
    _refused(_hydra_with_head(raw, tmp_path, head, **changes), *words)


def test_hydra_without_backbone_options(tmp_path, raw):
    data = raw(HYDRA)
    data["config"]["model"].pop("backbone")
    data["config"]["model"]["finetune_config"] = {"starting_checkpoint": "eqV2_31M_omat.pt"}
    _refused(_save(tmp_path, data), "no 'backbone'")


def test_grid_stored_for_another_resolution_is_refused(tmp_path, raw):
    """A config that does not describe the weights' grids (here: resolution removed) fails the
    check of the stored grid matrices instead of loading a silently different model."""
    data = raw(HYDRA)
    data["config"]["model"]["backbone"].pop("grid_resolution")
    _refused(_save(tmp_path, data), "stored grid", "grid_resolution=None")


# ------------------------------------------------------------------------------------------
# every name the reference resolves is accepted, with the same results
# ------------------------------------------------------------------------------------------

NAMES = {
    "backbone": [
        "equiformer_v2_dens_backbone",
        f"{PACKAGE}.equiformer_v2_dens.EqV2DeNSBackbone",
    ],
    "energy": [
        "eqV2_DeNS_scalar_head",
        f"{PACKAGE}.equiformer_v2_dens.DeNSScalarHead",
    ],
    "forces": [
        "eqV2_DeNS_vector_head",
        f"{PACKAGE}.equiformer_v2_dens.DeNSVectorHead",
    ],
    "stress": [
        "dens_rank2_symmetric_head",
        f"{PACKAGE}.equiformer_v2_dens.DeNSRank2Head",
    ],
}


def test_import_paths_give_the_same_model_as_registry_names(tmp_path, raw):
    data = raw(DENS)
    model = data["config"]["model"]
    model["backbone"]["model"] = NAMES["backbone"][1]
    for head in ("energy", "forces", "stress"):
        model["heads"][head]["module"] = NAMES[head][1]
    path = _save(tmp_path, data)
    ours = load_checkpoint(path).model
    reference = load_checkpoint(checkpoint_path(DENS)).model
    for (k1, v1), (k2, v2) in zip(ours.state_dict().items(), reference.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize(
    ("module", "energy_block"),
    [
        ("equiformer_v2_energy_head", "energy_block"),
        ("equiformerV2_scalar_head", "energy_block"),
        (f"{PACKAGE}.equiformer_v2.EquiformerV2EnergyHead", "energy_block"),
        (f"{PACKAGE}.heads.scalar.EqV2ScalarHead", "energy_block"),
        (f"{PACKAGE}.heads.EqV2ScalarHead", "energy_block"),
        ("eqV2_DeNS_scalar_head", "scalar_block"),
    ],
)
def test_energy_head_names(tmp_path, raw, module, energy_block):
    """All energy-head names load the same weights (the deprecated alias takes no output_name)."""
    data = raw(HYDRA)
    head = data["config"]["model"]["heads"]["energy"]
    head["module"] = module
    state = data["state_dict"]
    for key in [k for k in state if ".output_heads.energy.energy_block." in k]:
        state[key.replace(".energy_block.", f".{energy_block}.")] = state.pop(key)
    case = next(c for c in cases("eqv2_options") if c["checkpoint"] == HYDRA)
    loaded = load_checkpoint(_save(tmp_path, data))
    with torch.inference_mode():
        out = loaded.model(fixture_graph(case))
    np.testing.assert_allclose(
        out["energy"].numpy(), run_model(HYDRA, case)["energy"], rtol=0, atol=0
    )
