"""CUDA equals CPU within float32 noise; the device engine and graphs run on CUDA.

Skipped without a CUDA device. Tolerances are the parity fixtures' own suggested tolerances
(the fairchem float32 reference's noise level), read from ``reference.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eqv2_reference import DEMO_MODEL as DEMO

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

DATA = Path(__file__).parent / "data" / "eqv2"
REFERENCE = json.loads((DATA / "reference.json").read_text()) if DATA.is_dir() else {"cases": []}


def _tol(case: dict, key: str, default: float) -> float:
    """The case's ``suggested_tolerance`` (``<key>_atol``), else ``default``."""
    return float(case.get("suggested_tolerance", {}).get(f"{key}_atol", default))


@pytest.mark.parametrize(
    "case", REFERENCE["cases"], ids=lambda c: f"{c['checkpoint']}__{c['structure']}"
)
def test_cuda_equals_cpu_on_fixtures(case):
    from ase.io import read

    from eqv2calc import EquiformerV2Calculator

    ck = str(DATA / "checkpoints" / f"{case['checkpoint']}.pt")
    atoms = read(DATA / "structures" / f"{case['structure']}.extxyz")
    cpu = EquiformerV2Calculator(ck, device="cpu", dtype="float32").predict_batch([atoms])[0]
    gpu = EquiformerV2Calculator(ck, device="cuda", dtype="float32").predict_batch([atoms])[0]
    assert abs(cpu["energy"] - gpu["energy"]) <= _tol(case, "energy", 1e-4)
    np.testing.assert_allclose(gpu["forces"], cpu["forces"], atol=_tol(case, "forces", 1e-4))
    if "stress" in cpu:
        np.testing.assert_allclose(gpu["stress"], cpu["stress"], atol=_tol(case, "stress", 1e-5))


def test_device_graph_on_cuda_matches_graph_builder():
    from ase.build import bulk, fcc111

    from eqv2calc.graph import batch_graphs, graph_from_atoms
    from eqv2calc.neighbors import neighbor_graph

    structs = [fcc111("Cu", size=(3, 3, 3), vacuum=6.0), bulk("Cu", "fcc", a=3.6, cubic=True)]
    ref = batch_graphs(
        [graph_from_atoms(a, cutoff=6.0, max_neighbors=20, strict=True) for a in structs]
    )
    pos = torch.tensor(np.concatenate([a.positions for a in structs]), device="cuda")
    cells = torch.tensor(np.array([a.cell.array for a in structs]), device="cuda")
    pbc = torch.tensor(np.array([a.pbc for a in structs]), device="cuda")
    batch = torch.tensor(ref.batch, device="cuda")
    for method in ("dense", "vesin"):
        if method == "vesin":
            pytest.importorskip("vesin_torch")
        dg = neighbor_graph(
            pos, cells, pbc, batch, 2, cutoff=6.0, max_neighbors=20, strict=True, method=method
        )
        np.testing.assert_array_equal(dg.edge_index.cpu().numpy(), ref.edge_index)
        np.testing.assert_array_equal(dg.cell_offsets.cpu().numpy(), ref.cell_offsets)


def test_engine_runs_on_cuda_like_cpu():
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    from eqv2calc import EquiformerV2Calculator
    from eqv2calc.engine import EngineSettings, relax_engine

    structs = []
    for k in range(3):
        s = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
        add_adsorbate(s, "O", 1.8, ("fcc", "hcp", "ontop")[k])
        s.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
        s.rattle(0.05, seed=k)
        structs.append(s)
    settings = EngineSettings(optimizer="LBFGS", fmax=0.05, steps=100)
    res = {}
    for dev in ("cpu", "cuda"):
        calc = EquiformerV2Calculator(str(DEMO), device=dev, dtype="float64")
        res[dev] = relax_engine(structs, calc, settings)
    for a, b in zip(res["cpu"], res["cuda"]):
        assert a.converged and b.converged
        assert abs(a.final_energy - b.final_energy) < 1e-4
        assert abs(a.steps - b.steps) <= 3
