"""Shared access to the parity fixtures (a plain module, importable by tests).

Two fixture sets with the same layout and ``reference.json`` format (see their README files):
``tests/data/eqv2`` (layouts of the released checkpoints) and ``tests/data/eqv2_options``
(configuration options and module names no released checkpoint uses). Checkpoint names are
unique across the sets, and both hold the same six structures.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from ase.io import read

ROOT = Path(__file__).parent / "data"
DATA = ROOT / "eqv2"
OPTIONS = ROOT / "eqv2_options"
SETS = {"eqv2": DATA, "eqv2_options": OPTIONS}
#: the bundled demo model as shipped in the package (tests fail, not skip, if it is missing)
DEMO_MODEL = (
    Path(__file__).resolve().parents[1]
    / "eqv2calc"
    / "registry"
    / "models"
    / "eqv2calc-demo-emt.pt"
)
CHECKPOINTS = [
    "eq2_small_oc20_classic",
    "eqV2_small_omat_hydra",
    "eqV2_small_dens_hydra",
    "eq2_small_oc22_linref",
]
OPTION_CHECKPOINTS = [
    "eq2_opt_shared_edge_gate",
    "eqV2_opt_hydra_plain_s2_stress_mlp",
    "eqV2_opt_dens_registry_names",
    "eq2_opt_newcfg_L5",
]
ALL_CHECKPOINTS = CHECKPOINTS + OPTION_CHECKPOINTS


@functools.cache
def reference(fixture_set: str = "eqv2") -> dict:
    return json.loads((SETS[fixture_set] / "reference.json").read_text())


def cases(fixture_set: str = "eqv2") -> list[dict]:
    """The cases of one set, each tagged with ``fixture_set``."""
    return [{**case, "fixture_set": fixture_set} for case in reference(fixture_set)["cases"]]


def all_cases() -> list[dict]:
    return cases("eqv2") + cases("eqv2_options")


def case_id(case: dict) -> str:
    return f"{case['checkpoint']}-{case['structure']}"


def data_dir(checkpoint: str) -> Path:
    return OPTIONS if checkpoint in OPTION_CHECKPOINTS else DATA


def checkpoint_path(name: str) -> Path:
    return data_dir(name) / "checkpoints" / f"{name}.pt"


def structure(name: str):
    return read(DATA / "structures" / f"{name}.extxyz")


@functools.cache
def loaded(name: str, dtype: torch.dtype = torch.float32):
    from eqv2calc.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint_path(name), dtype=dtype)


def fixture_graph(case: dict, dtype: torch.dtype = torch.float32):
    """The model input built from the reference's own edges for this case."""
    from eqv2calc.model.backbone import GraphInput

    edges = np.load(data_dir(case["checkpoint"]) / case["edges_file"])
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
