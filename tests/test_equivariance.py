"""Symmetry tests: energy invariant, forces co-rotate, under rotation/translation/permutation.

Tolerances (measured, see below) come from the S2 activation and grid MLP: functions on the
sphere are sampled on a finite (18 × 18) grid, so those point-wise non-linearities are
equivariant only up to aliasing. In float64 that leaves ~3e-5–5e-5 eV/Å in forces and
~2e-6–2e-5 eV in energy on these fixture structures; a broken frame or Wigner matrix gives
errors of the size of the forces themselves (~0.1 eV/Å). Translation and permutation involve
no grid and hold to rounding.

The stress head of the released models is *not* rotation-equivariant by construction (it
applies a biased MLP with SiLU to each component of its l = 2 part); we reproduce the
reference there, so only its isotropic part (pressure) is checked for invariance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eqv2_reference import checkpoint_path, structure
from scipy.spatial.transform import Rotation

from eqv2calc.calculator import EquiformerV2Calculator
from eqv2calc.model.activation import S2Activation, SeparableS2Activation
from eqv2calc.model.backbone import GraphInput
from eqv2calc.model.layer_norm import make_norm
from eqv2calc.model.potential import HeadSpec
from eqv2calc.model.s2_grid import SphereGrid
from eqv2calc.model.so3 import CoefficientLayout, EdgeRotation, edge_rotation_blocks
from eqv2calc.testing import (
    TOLERANCE,
    assert_equivariant,
    assert_potential_equivariant,
    random_rotation,
    tiny_config,
    tiny_graph,
    tiny_model,
    wigner_d,
)

STRUCTURES = ["bulk_mgo_strained", "slab_cu111_co", "molecule_ethanol_nopbc"]


@pytest.fixture(scope="module", params=["float32", "float64"])
def calc(request):
    return EquiformerV2Calculator(
        checkpoint_path("eqV2_small_omat_hydra"), device="cpu", dtype=request.param
    )


def _rotated(atoms, R):
    out = atoms.copy()
    out.positions = atoms.positions @ R.T
    out.cell = atoms.cell.array @ R.T
    return out


@pytest.mark.parametrize("name", STRUCTURES)
def test_rotation(calc, name):
    atoms = structure(name)
    R = Rotation.random(random_state=7).as_matrix()
    r0, r1 = calc.predict_batch([atoms, _rotated(atoms, R)])
    fmax = np.abs(r0["forces"]).max()
    assert abs(r1["energy"] - r0["energy"]) < 1e-4
    np.testing.assert_allclose(r1["forces"], r0["forces"] @ R.T, rtol=0, atol=1e-3 * max(fmax, 0.1))
    pressure = lambda s: s[:3].sum()  # noqa: E731
    assert abs(pressure(r1["stress"]) - pressure(r0["stress"])) < 1e-4


@pytest.mark.parametrize("name", STRUCTURES)
def test_translation_and_wrapping(calc, name):
    atoms = structure(name)
    shifted = atoms.copy()
    shifted.positions += np.array([0.37, -1.21, 2.05])
    if atoms.pbc.any():
        shifted.wrap()
    r0, r1 = calc.predict_batch([atoms, shifted])
    assert abs(r1["energy"] - r0["energy"]) < 1e-5
    np.testing.assert_allclose(r1["forces"], r0["forces"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(r1["stress"], r0["stress"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", STRUCTURES)
def test_permutation(calc, name):
    atoms = structure(name)
    perm = np.random.default_rng(3).permutation(len(atoms))
    r0, r1 = calc.predict_batch([atoms, atoms[perm]])
    assert abs(r1["energy"] - r0["energy"]) < 1e-5
    np.testing.assert_allclose(r1["forces"], r0["forces"][perm], rtol=0, atol=1e-5)


def test_edge_frame_puts_edge_on_polar_axis():
    vec = torch.randn(50, 3, dtype=torch.float64)
    d1 = edge_rotation_blocks(vec, 1)[1]
    unit = vec / vec.norm(dim=1, keepdim=True)
    target = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(50, 3)
    torch.testing.assert_close(torch.einsum("eij,ej->ei", d1, unit), target, rtol=0, atol=1e-12)


def test_rotate_back_inverts_rotate_for_kept_orders():
    layout = CoefficientLayout(4, 4)  # no truncation: rotate_back must be the exact inverse
    vec = torch.randn(20, 3, dtype=torch.float64)
    rot = EdgeRotation(vec, layout)
    x = torch.randn(20, 25, 3, dtype=torch.float64)
    torch.testing.assert_close(rot.rotate_back(rot.rotate(x)), x)


# ------------------------------------------------------------------------------------------
# per module, float32 and float64 (eqv2calc.testing: e3nn's per-dtype tolerances)
# ------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64]
FINE = 64  # S² grid fine enough that point-wise activations alias below 1e-9


def _features(lmax: int, channels: int, dtype, n: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(lmax * 100 + channels)
    return torch.randn(n, (lmax + 1) ** 2, channels, generator=gen, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm_type", ["layer_norm", "layer_norm_sh", "rms_norm_sh"])
def test_norms_are_equivariant(norm_type, dtype):
    norm = make_norm(norm_type, 3, 6).to(dtype)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    assert_equivariant(norm, _features(3, 6, dtype), 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_s2_activations_are_equivariant_on_a_fine_grid(dtype):
    grid = SphereGrid(3, 3, FINE, edge_frame=False).to(dtype)
    x = _features(3, 5, dtype)
    assert_equivariant(S2Activation(grid), x, 3)
    scalars = torch.randn(7, 5, dtype=dtype)
    assert_equivariant(lambda v: SeparableS2Activation(grid)(scalars, v), x, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "options",
    [
        {"use_gate_act": True, "use_grid_mlp": False},
        {"use_grid_mlp": True, "use_sep_s2_act": True},
        {"use_grid_mlp": True, "use_sep_s2_act": False},
        {"use_grid_mlp": False, "use_sep_s2_act": True},
        {"use_grid_mlp": False, "use_sep_s2_act": False},
    ],
    ids=["gate", "grid_mlp_sep", "grid_mlp", "sep_s2", "s2"],
)
def test_feed_forward_networks_are_equivariant(options, dtype):
    model = tiny_model(tiny_config(lmax=3, mmax=2, grid_resolution=FINE, **options))
    ffn = model.backbone.blocks[0].ffn.to(dtype)
    assert_equivariant(ffn, _features(3, 8, dtype), 3)


def _edges(dtype):
    gen = torch.Generator().manual_seed(5)
    edge_index = torch.tensor([[1, 2, 3, 0, 4, 5, 6, 2], [0, 0, 1, 2, 2, 3, 3, 6]])
    vec = torch.randn(edge_index.shape[1], 3, generator=gen, dtype=torch.float64).to(dtype)
    return edge_index, vec


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "options",
    [
        {"use_gate_act": True, "use_grid_mlp": False},
        {"use_sep_s2_act": True},
        {"use_sep_s2_act": False, "use_m_share_rad": True},
        {"share_atom_edge_embedding": True, "use_attn_renorm": False},
    ],
    ids=["gate", "sep_s2", "s2_m_share_rad", "shared_elements"],
)
def test_attention_is_equivariant(options, dtype):
    """Rotating node features by D(R) and edge vectors by R rotates the output by D(R)."""
    config = tiny_config(lmax=3, mmax=2, grid_resolution=FINE, **options)
    backbone = tiny_model(config, dtype=dtype).backbone
    attention = backbone.blocks[0].attention
    edge_index, vec = _edges(dtype)
    z = torch.tensor([1, 6, 8, 7, 1, 6, 8])
    x = _features(3, 8, dtype)

    def run(features, vectors):
        basis = backbone.distance_basis(vectors.norm(dim=1))
        if backbone.shared_elements:
            basis = backbone.shared_edge_invariants(basis, z, edge_index)
        return attention(features, z, basis, edge_index, EdgeRotation(vectors, backbone.layout))

    r = random_rotation(dtype, torch.Generator().manual_seed(2))
    with torch.no_grad():
        d = wigner_d(3, r)
        expected = torch.einsum("ij,njc->nic", d, run(x, vec))
        got = run(torch.einsum("ij,njc->nic", d, x), vec @ r.T)
    error = float((got - expected).abs().max()) / float(expected.abs().max())
    assert error <= TOLERANCE[dtype], error


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("forces", [{"denoising_block": False}, {"denoising_block": True}])
def test_heads_energy_invariant_and_forces_equivariant(forces, dtype):
    heads = {
        "energy": HeadSpec("energy", {"reduce": "mean"}),
        "forces": HeadSpec("forces", forces),
        "stress": HeadSpec("rank2", {"decompose": True}),
    }
    config = tiny_config(grid_resolution=FINE, dens_inputs=forces["denoising_block"])
    model = tiny_model(config, heads, dtype=dtype)
    assert_potential_equivariant(model, tiny_graph(dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decomposed_stress_pressure_is_invariant(dtype):
    """The isotropic part of a decomposed stress head (its trace) is rotation-invariant."""
    heads = {
        "energy": HeadSpec("energy"),
        "forces": HeadSpec("forces"),
        "stress": HeadSpec("rank2", {"decompose": True, "use_source_target_embedding": True}),
    }
    model = tiny_model(tiny_config(grid_resolution=FINE), heads, dtype=dtype)
    graph = tiny_graph(dtype=dtype)
    r = random_rotation(dtype, torch.Generator().manual_seed(4))
    turned = GraphInput(
        graph.atomic_numbers, graph.edge_index, graph.edge_vec @ r.T, graph.batch, 2
    )
    with torch.no_grad():
        p0 = torch.diagonal(model(graph)["stress"], dim1=1, dim2=2).sum(1)
        p1 = torch.diagonal(model(turned)["stress"], dim1=1, dim2=2).sum(1)
    assert float((p1 - p0).abs().max()) <= TOLERANCE[dtype] * float(p0.abs().max())
