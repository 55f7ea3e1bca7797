"""Checkpoint loading: strict accounting of every key, errors, EMA weights, round trips."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from eqv2_reference import (
    ALL_CHECKPOINTS,
    case_id,
    cases,
    checkpoint_path,
    fixture_graph,
)

from eqv2calc.checkpoint import CheckpointError, load_checkpoint, names, save_checkpoint


@pytest.mark.parametrize("name", ALL_CHECKPOINTS)
def test_every_key_accounted_and_every_parameter_loaded(name):
    raw = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)["state_dict"]
    lm = load_checkpoint(checkpoint_path(name))
    assert set(lm.accounting) == set(raw)  # nothing unused
    loaded_targets = [v for v in lm.accounting.values() if v != "derived"]
    assert len(loaded_targets) == len(set(loaded_targets))  # one file key per parameter
    ours = set(lm.model.state_dict()) - {"element_references"}
    assert set(loaded_targets) == ours  # nothing missing
    for key, target in lm.accounting.items():
        if target != "derived":
            assert torch.equal(
                lm.model.state_dict()[target].cpu(),
                raw[key].float() if raw[key].is_floating_point() else raw[key],
            )


@pytest.mark.parametrize("name", ALL_CHECKPOINTS)
def test_translation_table_round_trips(name):
    raw = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
    lm = load_checkpoint(checkpoint_path(name))
    from eqv2calc.checkpoint.reader import parse

    parsed = parse(raw, checkpoint_path(name))
    for key, target in lm.accounting.items():
        if target == "derived":
            continue
        back = names.to_reference(target, parsed.head_modules, parsed.layout == "classic")
        assert parsed.prefix + back == key


@pytest.mark.parametrize("name", ALL_CHECKPOINTS)
def test_stored_grid_buffers_agree_with_ours(name):
    """Every S2-grid matrix the reference stores equals ours (float64, e3nn) to float32 rounding.

    Covers given and omitted ``grid_resolution`` (per-(l, m) grid shapes) and the rescaling of
    truncated degrees, for every (l, m) pair the reference builds.
    """
    from eqv2calc.checkpoint.reader import parse
    from eqv2calc.model.s2_grid import grid_matrices

    raw = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
    config = parse(raw, checkpoint_path(name)).config
    pattern = re.compile(r"(^|\.)SO3_grid\.(\d+)\.(\d+)\.(to|from)_grid_mat$")
    checked = 0
    for key, value in raw["state_dict"].items():
        match = pattern.search(key)
        if not match:
            continue
        lmax, mmax = int(match.group(2)), int(match.group(3))
        to_mat, from_mat = grid_matrices(lmax, mmax, config.grid_resolution)
        ours = to_mat if match.group(4) == "to" else from_mat
        assert ours.shape == value.shape, key
        np.testing.assert_allclose(value.double(), ours, rtol=0, atol=2e-6, err_msg=key)
        checked += 1
    assert checked >= 2 * (config.lmax + 1) ** 2


def test_graph_settings_and_energy_kind():
    oc20 = load_checkpoint(checkpoint_path("eq2_small_oc20_classic"))
    assert (
        oc20.graph_settings.cutoff,
        oc20.graph_settings.max_neighbors,
        oc20.graph_settings.strict,
    ) == (12.0, 20, True)
    assert oc20.energy_kind == "adsorption" and oc20.layout == "classic"
    omat = load_checkpoint(checkpoint_path("eqV2_small_omat_hydra"))
    assert (
        omat.graph_settings.strict is False
        and omat.energy_kind == "total"
        and omat.layout == "hydra"
    )
    assert omat.model.has_stress and not oc20.model.has_stress
    assert load_checkpoint(checkpoint_path("eq2_small_oc22_linref")).energy_kind == "total"


@pytest.mark.parametrize(
    "case", [c for c in cases() if "diagnostic_if_ema_weights_were_used" in c], ids=case_id
)
def test_ema_weights_reproduce_reference_diagnostic(case):
    lm = load_checkpoint(checkpoint_path(case["checkpoint"]), use_ema=True)
    with torch.inference_mode():
        out = lm.model(fixture_graph(case))
    diag = case["diagnostic_if_ema_weights_were_used"]
    assert abs(out["energy"].item() - diag["energy"]) <= case["suggested_tolerance"]["energy_atol"]
    dmax = np.abs(out["forces"].numpy() - np.array(case["forces"])).max()
    assert (
        abs(dmax - diag["max_abs_force_diff_vs_reference"])
        <= case["suggested_tolerance"]["forces_atol"]
    )


def test_use_ema_without_ema_is_an_error():
    with pytest.raises(CheckpointError, match="no EMA"):
        load_checkpoint(checkpoint_path("eq2_small_oc22_linref"), use_ema=True)


@pytest.mark.parametrize(
    "layout,name",
    [
        ("classic", "eq2_small_oc20_classic"),
        ("hydra", "eqV2_small_omat_hydra"),
        ("hydra", "eqV2_small_dens_hydra"),
    ],
)
def test_save_and_reload_gives_identical_predictions(tmp_path, layout, name):
    lm = load_checkpoint(checkpoint_path(name))
    path = save_checkpoint(lm.model, tmp_path / "copy.pt", layout=layout)
    again = load_checkpoint(path)
    case = next(c for c in cases() if c["checkpoint"] == name)
    with torch.inference_mode():
        a, b = lm.model(fixture_graph(case)), again.model(fixture_graph(case))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert again.graph_settings == lm.graph_settings


def test_truncated_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(checkpoint_path("eq2_small_oc22_linref").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(bad)


def test_not_a_checkpoint(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="expected a dict with 'state_dict' and 'config'"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


class _Custom:  # pickled by reference: needs full unpickling to load
    pass


def test_arbitrary_pickle_is_refused_with_instructions(tmp_path):
    path = tmp_path / "pickled.pt"
    data = torch.load(
        checkpoint_path("eq2_small_oc22_linref"), map_location="cpu", weights_only=True
    )
    data["extra"] = _Custom()
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_pickle=True).layout == "classic"


def test_unsupported_config_key_is_named(tmp_path):
    data = torch.load(
        checkpoint_path("eq2_small_oc22_linref"), map_location="cpu", weights_only=True
    )
    data["config"]["model_attributes"]["use_magic"] = True
    path = tmp_path / "odd.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="'use_magic'"):
        load_checkpoint(path)


def test_unknown_and_missing_keys_are_named(tmp_path):
    data = torch.load(
        checkpoint_path("eq2_small_oc22_linref"), map_location="cpu", weights_only=True
    )
    data["state_dict"]["module.module.mystery.weight"] = torch.zeros(1)
    torch.save(data, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="mystery.weight"):
        load_checkpoint(tmp_path / "extra.pt")
    data["state_dict"].pop("module.module.mystery.weight")
    data["state_dict"].pop("module.module.norm.norm_l0.bias")
    torch.save(data, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="backbone.norm.scalar_norm.bias"):
        load_checkpoint(tmp_path / "short.pt")


def test_energy_kind_survives_classic_round_trip(tmp_path):
    lm = load_checkpoint(checkpoint_path("eq2_small_oc20_classic"))
    lm.model.energy_kind = "total"
    path = save_checkpoint(lm.model, tmp_path / "total.pt", layout="classic")
    assert load_checkpoint(path).energy_kind == "total"
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert (
        path.stat().st_mode & 0o777 == 0o666 & ~umask
    )  # permissions as for any file the user writes
