"""Unseen combinations of options: random small configurations across the whole option surface.

Each seed draws sizes, lmax/mmax, grids (given or omitted), norm, activation, element
embeddings (none, per module, shared), use_m_share_rad, DeNS inputs and a rank-2 head with
random options (:func:`eqv2calc.testing.random_config`). For every draw:

* the model is rotation-equivariant to float64 rounding once its S² grids are fine enough
  (32 × 32; with the configured grids the point-wise activations alias, see
  tests/test_equivariance.py) — this exercises frames, Wigner blocks, SO(2) convolutions,
  truncation and rescaling for that combination;
* float64 outputs do not depend on chunk sizes (1e-12 relative);
* saving (hydra layout, through the option table) and loading gives the same outputs exactly;
* float32 agrees with float64.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from eqv2calc.checkpoint import load_checkpoint, save_checkpoint
from eqv2calc.model import chunking
from eqv2calc.testing import (
    assert_potential_equivariant,
    random_config,
    tiny_graph,
    tiny_model,
)

SEEDS = range(16)


def _graph(config, dtype):
    return tiny_graph(
        3, cutoff=config.cutoff, max_neighbors=config.max_neighbors, seed=1, dtype=dtype
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_random_configuration_is_equivariant_with_fine_grids(seed):
    config, heads = random_config(seed)
    fine = dataclasses.replace(config, grid_resolution=32)
    model = tiny_model(fine, heads, seed=seed, dtype=torch.float64)
    assert_potential_equivariant(model, _graph(config, torch.float64), tolerance=1e-8)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_configuration_chunks_save_load_and_float32(seed, tmp_path, monkeypatch):
    config, heads = random_config(seed)
    model = tiny_model(config, heads, seed=seed, dtype=torch.float64)
    graph = _graph(config, torch.float64)
    with torch.inference_mode():
        whole = model(graph)
        for name in ("EDGE_CHUNK_SIZE", "NODE_CHUNK_SIZE"):
            monkeypatch.setattr(chunking, name, 3)
        chunked = model(graph)
    assert set(whole) == {"energy", "forces"} | ({"stress"} if "stress" in heads else set())
    for key, value in whole.items():
        scale = float(value.abs().max())
        assert scale > 0 and float((chunked[key] - value).abs().max()) <= 1e-12 * scale, key

    path = save_checkpoint(model, tmp_path / "model.pt", layout="hydra")
    loaded = load_checkpoint(path, dtype=torch.float64)
    assert loaded.model.config == config
    assert {k: v.kind for k, v in loaded.model.head_specs.items()} == {
        k: v.kind for k, v in heads.items()
    }
    with torch.inference_mode():
        again = loaded.model(graph)
        single = load_checkpoint(path).model(_graph(config, torch.float32))
    for key, value in whole.items():
        torch.testing.assert_close(again[key], chunked[key], rtol=0, atol=0)
        scale = float(value.abs().max())
        assert float((single[key].double() - value).abs().max()) <= 1e-3 * scale, key
