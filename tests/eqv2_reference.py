"""Shared access to the parity fixtures in tests/data/eqv2 (a plain module, importable by tests)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from ase.io import read

DATA = Path(__file__).parent / "data" / "eqv2"
CHECKPOINTS = [
    "eq2_small_oc20_classic",
    "eqV2_small_omat_hydra",
    "eqV2_small_dens_hydra",
    "eq2_small_oc22_linref",
]


@functools.lru_cache(maxsize=1)
def reference() -> dict:
    return json.loads((DATA / "reference.json").read_text())


def cases() -> list[dict]:
    return reference()["cases"]


def case_id(case: dict) -> str:
    return f"{case['checkpoint']}-{case['structure']}"


def checkpoint_path(name: str) -> Path:
    return DATA / "checkpoints" / f"{name}.pt"


def structure(name: str):
    return read(DATA / "structures" / f"{name}.extxyz")


@functools.cache
def loaded(name: str, dtype: torch.dtype = torch.float32):
    from eqv2calc.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint_path(name), dtype=dtype)


def fixture_graph(case: dict, dtype: torch.dtype = torch.float32):
    """The model input built from the reference's own edges for this case."""
    from eqv2calc.model.backbone import GraphInput

    edges = np.load(DATA / case["edges_file"])
    atoms = structure(case["structure"])
    return GraphInput(
        atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.long),
        edge_index=torch.tensor(edges["edge_index"]),
        edge_vec=torch.tensor(edges["edge_distance_vec"]).to(dtype),
        batch=torch.zeros(len(atoms), dtype=torch.long),
        num_graphs=1,
    )


def run_model(name: str, case: dict, dtype: torch.dtype = torch.float32) -> dict[str, np.ndarray]:
    model = loaded(name, dtype).model
    with torch.inference_mode():
        out = model(fixture_graph(case, dtype))
    return {k: v.double().numpy() for k, v in out.items()}
