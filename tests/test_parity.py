"""Parity with the reference implementation (fairchem-core 1.10) on every fixture case.

Both fixture sets: ``tests/data/eqv2`` (the layouts of the released checkpoints) and
``tests/data/eqv2_options`` (options no released checkpoint uses: shared atom-edge embedding,
gate and plain S2 activations, omitted grid resolution, DeNS sigma encoding, undecomposed
rank-2 heads, registry names...). Tolerances are each case's ``suggested_tolerance`` from
reference.json (derived there from float32 noise and the reference's own sensitivity to its
random edge frames), fixed per case; exceptions are listed in :data:`FLOAT64_EXCEPTIONS`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eqv2_reference import all_cases, case_id, data_dir, fixture_graph, loaded, run_model, structure

from eqv2calc.model.backbone import GraphInput

CASES = all_cases()

#: (checkpoint, structure, output) -> absolute tolerance for the float64 comparison, and why
FLOAT64_EXCEPTIONS = {
    ("eqV2_small_dens_hydra", "bulk_cu_fcc_conv", "stress"): (
        5e-4,  # eV/Å³; the suggested tolerance is 1.8e-4
        "perfect fcc cell: the rank-2 head layer-normalises edge features that are nearly equal"
        " on every edge, which amplifies float32 rounding; our float32 run reproduces the"
        " float32 reference to 2.5e-5 eV/Å³ while the float64 value differs from both by"
        " 2.9e-4 eV/Å³ (|σ| = 0.015 eV/Å³)",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_model_matches_reference_with_reference_edges(case):
    out = run_model(case["checkpoint"], case)
    tol = case["suggested_tolerance"]
    assert abs(out["energy"][0] - case["energy"]) <= tol["energy_atol"]
    np.testing.assert_allclose(
        out["forces"], np.array(case["forces"]), rtol=0, atol=tol["forces_atol"]
    )
    if "stress" in case:
        np.testing.assert_allclose(
            out["stress"][0], np.array(case["stress"]), rtol=0, atol=tol["stress_atol"]
        )
    else:
        assert "stress" not in out


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float64_matches_reference(case):
    """float64 results agree with the (float32) reference within the case's fixed tolerance
    (:data:`FLOAT64_EXCEPTIONS` names the one case that needs more, and why)."""
    out64 = run_model(case["checkpoint"], case, torch.float64)
    tol = case["suggested_tolerance"]
    assert set(out64) == ({"energy", "forces", "stress"} & set(case))
    for key, t in (
        ("energy", tol["energy_atol"]),
        ("forces", tol["forces_atol"]),
        ("stress", tol.get("stress_atol")),
    ):
        if key not in case:
            continue
        t = FLOAT64_EXCEPTIONS.get((case["checkpoint"], case["structure"], key), (t,))[0]
        ref = np.array(case[key]).reshape(out64[key].shape)
        np.testing.assert_allclose(out64[key], ref, rtol=0, atol=t, err_msg=key)


def test_float64_exceptions_are_needed():
    """Each exception is still needed (its case fails the suggested tolerance in float64)."""
    for (checkpoint, name, key), _ in FLOAT64_EXCEPTIONS.items():
        case = next(c for c in CASES if c["checkpoint"] == checkpoint and c["structure"] == name)
        out64 = run_model(checkpoint, case, torch.float64)
        ref = np.array(case[key]).reshape(out64[key].shape)
        assert np.abs(out64[key] - ref).max() > case["suggested_tolerance"][f"{key}_atol"]


def test_intermediate_node_embeddings_match():
    """Node features after the edge-degree embedding, every block and the final norm."""
    for case in CASES:
        if "intermediates_file" not in case:
            continue
        inter = np.load(data_dir(case["checkpoint"]) / case["intermediates_file"])
        lm = loaded(case["checkpoint"])
        backbone = lm.model.backbone
        g: GraphInput = fixture_graph(case)
        seen: dict = {}

        def keep(name, which, store=seen):
            def hook(module, inputs, output=None):
                store[name] = inputs[0] if which == "input" else output

            return hook

        handles = [
            backbone.edge_degree.register_forward_hook(keep("edge_degree_embedding", "output"))
        ]
        for k, block in enumerate(backbone.blocks):
            handles.append(block.register_forward_hook(keep(f"block{k}_output", "output")))
            handles.append(block.register_forward_pre_hook(keep(f"block{k}_input", "input")))
        handles.append(backbone.norm.register_forward_hook(keep("final_norm_output", "output")))
        try:
            with torch.inference_mode():
                backbone(g)
        finally:
            for h in handles:
                h.remove()
        assert set(inter.files) <= set(seen), sorted(set(inter.files) - set(seen))
        for name in inter.files:
            ref = inter[name]
            got = seen[name].numpy()
            scale = max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(
                got, ref, rtol=0, atol=2e-5 * scale, err_msg=f"{case_id(case)} {name}"
            )


@pytest.mark.parametrize(
    "case", [c for c in CASES if not c["neighbor_selection"].get("tie_at_cut")], ids=case_id
)
def test_calculator_end_to_end(case):
    """Our own graph + the ASE calculator reproduce the reference (cases without a tie at the cut)."""
    calc = _calculator(case["checkpoint"])
    atoms = structure(case["structure"])
    atoms.calc = calc
    tol = case["suggested_tolerance"]
    assert abs(atoms.get_potential_energy() - case["energy"]) <= tol["energy_atol"]
    np.testing.assert_allclose(
        calc.results["forces"], np.array(case["forces"]), atol=tol["forces_atol"], rtol=0
    )
    # ASE applies FixAtoms to get_forces(): fixed atoms zeroed, as in the reference calculator
    np.testing.assert_allclose(
        atoms.get_forces(),
        np.array(case["forces_ase_constrained"]),
        atol=tol["forces_atol"],
        rtol=0,
    )
    if "stress" in case:
        np.testing.assert_allclose(
            atoms.get_stress(), np.array(case["stress_ase_voigt"]), atol=tol["stress_atol"], rtol=0
        )


_CALCS: dict = {}


def _calculator(name: str):
    from eqv2calc.calculator import EquiformerV2Calculator

    if name not in _CALCS:
        from eqv2_reference import checkpoint_path

        _CALCS[name] = EquiformerV2Calculator(checkpoint_path(name), device="cpu")
    return _CALCS[name]
