"""The option-name table (eqv2calc.checkpoint.names.OPTION_NAMES): fairchem's backbone argument
names on disk and in pasted configs, ours in EquiformerV2Config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from eqv2calc.checkpoint import names
from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.testing import tiny_config
from eqv2calc.training.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_renamed_option_is_a_config_field_and_a_reference_argument():
    fields = {f.name for f in dataclasses.fields(EquiformerV2Config)}
    assert set(names.OPTION_NAMES.values()) <= fields
    dens = next(e for e in names.BACKBONES if e.kind == "dens")
    assert set(names.OPTION_NAMES) <= dens.arguments
    assert not set(names.OPTION_NAMES) & fields  # no fairchem spelling left among our fields


@pytest.mark.parametrize("dens", [False, True])
def test_written_names_are_fairchems_and_read_back_to_the_same_config(dens):
    config = tiny_config(lmax=3, mmax=2, cutoff=4.5, num_elements=30, strict_neighbor_cap=False)
    if dens:
        config = dataclasses.replace(config, dens_inputs=True, sigma_encoding=True)
    registry_name, options = names.reference_backbone(dataclasses.asdict(config))
    assert options["max_radius"] == 4.5 and options["max_num_elements"] == 30
    assert options["lmax_list"] == [3] and options["mmax_list"] == [2]
    assert options["enforce_max_neighbors_strictly"] is False
    assert not set(names.OPTION_NAMES.values()) & set(options)
    if dens:
        assert registry_name == "equiformer_v2_dens_backbone"
        assert options["use_noise_schedule_sigma_encoding"] is True
    else:
        assert registry_name == "equiformer_v2_backbone"
        assert "use_noise_schedule_sigma_encoding" not in options
    entry = names.resolve(registry_name, names.BACKBONES)
    back = EquiformerV2Config.from_dict(names.backbone_config(options, entry))
    assert back == config


def test_model_options_accept_either_spelling_and_refuse_both():
    ours = names.model_config({"cutoff": 4.0, "lmax": 3, "mmax": 1, "num_elements": 40})
    theirs = names.model_config(
        {"max_radius": 4.0, "lmax_list": [3], "mmax_list": [1], "max_num_elements": 40}
    )
    mixed = names.model_config({"max_radius": 4.0, "lmax": 3, "mmax_list": [1], "num_elements": 40})
    assert ours == theirs == mixed
    assert (ours.cutoff, ours.lmax, ours.mmax, ours.num_elements) == (4.0, 3, 1, 40)
    with pytest.raises(ValueError, match=r"'cutoff' is given twice.*'max_radius'"):
        names.model_config({"cutoff": 4.0, "max_radius": 4.0}, where="here")
    with pytest.raises(ValueError, match=r"here: .*lmax_list=\[2, 2\].*length 1"):
        names.model_config({"lmax_list": [2, 2], "mmax_list": [1, 1]}, where="here")


def test_training_yaml_model_section_takes_fairchem_names():
    cfg = config_from_dict(
        {"model": {"max_radius": 4.0, "enforce_max_neighbors_strictly": False, "lmax_list": [3]}}
    )
    opts = cfg.model_options()
    assert opts["cutoff"] == 4.0 and opts["strict_neighbor_cap"] is False and opts["lmax"] == 3
    assert not set(names.OPTION_NAMES) & set(opts)
    with pytest.raises(
        ValueError, match=r"training config: section 'model'.*'lmax' is given twice"
    ):
        config_from_dict({"model": {"lmax": 3, "lmax_list": [3]}})


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "models" / "train_default").glob("train_config*.yaml"))
)
def test_bundled_training_config_builds_its_model(name):
    """models/train_default/train_config*.yaml keep fairchem's names (pasted configs work)."""
    cfg = load_config(ROOT / "models" / "train_default" / name)
    config = names.model_config(cfg.model_options())
    assert config.cutoff == cfg.model_options()["cutoff"] > 0
    assert config.lmax >= config.mmax >= 0
