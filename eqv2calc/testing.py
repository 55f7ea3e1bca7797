"""Test helpers for eqv2calc and code built on it: equivariance checks and tiny models.

* :func:`assert_equivariant` checks that a function of spherical-harmonic node features (a norm,
  an activation, a feed-forward network...) commutes with rotations, with e3nn's per-dtype
  tolerances by default.
* :func:`assert_potential_equivariant` checks a whole potential: energy invariant, forces
  co-rotating, under random rotations of the edge vectors.
* :func:`tiny_config`, :func:`random_config`, :func:`tiny_model` and :func:`tiny_graph` build
  small random-weight models and inputs, across the whole option surface, in a few ms.
* :class:`CountingBatchCalculator` (from :mod:`eqv2calc.drivers.testing`) gives any ASE
  calculator a counted ``predict_batch``.

>>> model = tiny_model(tiny_config(use_gate_act=True), dtype=torch.float64)
>>> assert_potential_equivariant(model, tiny_graph(dtype=torch.float64), tolerance=1e-9)
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from e3nn import o3

from eqv2calc.drivers.testing import CountingBatchCalculator
from eqv2calc.model.backbone import GraphInput
from eqv2calc.model.config import EquiformerV2Config
from eqv2calc.model.potential import EquiformerV2Potential, HeadSpec

__all__ = [
    "TOLERANCE",
    "CountingBatchCalculator",
    "assert_equivariant",
    "assert_potential_equivariant",
    "random_config",
    "random_rotation",
    "tiny_config",
    "tiny_graph",
    "tiny_model",
    "wigner_d",
]

#: default relative tolerance of equivariance checks per dtype (e3nn's FLOAT_TOLERANCE)
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-9}


def random_rotation(
    dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniformly random proper rotation matrix ``[3, 3]``."""
    q = torch.randn(4, dtype=torch.float64, generator=generator)
    return o3.quaternion_to_matrix(q / q.norm()).to(dtype)


def wigner_d(lmax: int, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal Wigner matrix ``[(lmax+1)², (lmax+1)²]`` of ``rotation`` in e3nn's real
    basis (degree-major coefficients, ``l = 1`` block acting on ``(x, y, z)``).

    Fitted in float64 from ``Y_l(R r) = D_l Y_l(r)`` on random points (exact to rounding;
    e3nn's own ``D_from_matrix`` goes through float32 constants).
    """
    r = rotation.to(torch.float64)
    points = torch.randn(
        4 * lmax + 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    size = (lmax + 1) ** 2
    d = torch.zeros(size, size, dtype=torch.float64)
    for l in range(lmax + 1):
        y = o3.spherical_harmonics(l, points, normalize=True)
        y_rot = o3.spherical_harmonics(l, points @ r.T, normalize=True)
        d[l * l : (l + 1) ** 2, l * l : (l + 1) ** 2] = torch.linalg.lstsq(y, y_rot).solution.T
    return d.to(rotation.dtype)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    scale = max(float(expected.abs().max()), 1e-30)
    return float((got - expected).abs().max()) / scale


def assert_equivariant(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    lmax: int,
    *,
    rotations: int = 3,
    tolerance: float | None = None,
    seed: int = 0,
) -> float:
    """Assert ``fn(D x) == D fn(x)`` for random rotations, with ``D`` the Wigner matrix.

    ``x``: node features ``[N, (lmax+1)², C]`` (degree-major); ``fn`` must return features of
    the same layout (any channel count). The error is the largest deviation relative to the
    largest output value; ``tolerance`` defaults to :data:`TOLERANCE` for ``x``'s dtype.
    Returns the largest relative error seen.
    """
    tol = TOLERANCE[x.dtype] if tolerance is None else tolerance
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = fn(x)
        worst = 0.0
        for _ in range(rotations):
            d = wigner_d(lmax, random_rotation(x.dtype, generator))
            error = _relative_error(
                fn(torch.einsum("ij,njc->nic", d, x)), torch.einsum("ij,njc->nic", d, out)
            )
            worst = max(worst, error)
    assert worst <= tol, f"equivariance error {worst:.3g} (relative) > tolerance {tol:.3g}"
    return worst


def assert_potential_equivariant(
    model: EquiformerV2Potential,
    graph: GraphInput,
    *,
    rotations: int = 3,
    tolerance: float | None = None,
    seed: int = 0,
) -> float:
    """Energy invariant and forces co-rotating when every edge vector is rotated.

    Relative errors (to the largest energy / force magnitude); ``tolerance`` defaults to
    :data:`TOLERANCE` for the graph's dtype. Stress is not checked: the reference's rank-2
    heads apply biased MLPs to tensor components, which is not rotation-equivariant.
    Returns the largest relative error seen.
    """
    tol = TOLERANCE[graph.edge_vec.dtype] if tolerance is None else tolerance
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model(graph)
        worst = 0.0
        for _ in range(rotations):
            r = random_rotation(graph.edge_vec.dtype, generator)
            turned = GraphInput(
                graph.atomic_numbers,
                graph.edge_index,
                graph.edge_vec @ r.T,
                graph.batch,
                graph.num_graphs,
            )
            got = model(turned)
            worst = max(
                worst,
                _relative_error(got["energy"], out["energy"]),
                _relative_error(got["forces"], out["forces"] @ r.T),
            )
    assert worst <= tol, f"equivariance error {worst:.3g} (relative) > tolerance {tol:.3g}"
    return worst


def tiny_config(**overrides) -> EquiformerV2Config:
    """A 1-layer, 8-channel, lmax 2 configuration (overrides: any EquiformerV2Config field)."""
    options = dict(
        num_layers=1,
        sphere_channels=8,
        attn_hidden_channels=8,
        num_heads=2,
        attn_alpha_channels=4,
        attn_value_channels=4,
        ffn_hidden_channels=8,
        edge_channels=8,
        lmax=2,
        mmax=1,
        max_neighbors=12,
        cutoff=4.0,
        num_elements=20,
        norm_type="layer_norm_sh",
        use_grid_mlp=True,
        avg_num_nodes=5.0,
        avg_degree=6.0,
    )
    options.update(overrides)
    return EquiformerV2Config(**options)


def random_config(seed: int) -> tuple[EquiformerV2Config, dict[str, HeadSpec]]:
    """A random small configuration and head set drawn across the whole option surface.

    Sizes, lmax/mmax, grids (given or omitted), every norm and activation, shared or
    per-module element embeddings, use_m_share_rad, DeNS inputs, and rank-2 heads with every
    option. Deterministic in ``seed``.
    """
    rng = random.Random(seed)
    lmax = rng.randint(1, 4)
    mmax = rng.randint(0, lmax)
    activation = rng.choice(["grid_mlp", "grid_mlp_sep", "gate", "sep_s2", "s2"])
    elements = rng.choice(["none", "per_module", "shared"])
    dens = rng.random() < 0.3
    config = tiny_config(
        num_layers=rng.randint(1, 2),
        sphere_channels=rng.choice([4, 8]),
        attn_hidden_channels=rng.choice([4, 8]),
        num_heads=rng.choice([1, 2]),
        attn_alpha_channels=rng.choice([2, 4]),
        attn_value_channels=rng.choice([2, 4]),
        ffn_hidden_channels=rng.choice([4, 8]),
        edge_channels=rng.choice([4, 8]),
        lmax=lmax,
        mmax=mmax,
        grid_resolution=rng.choice([None, 2 * (lmax + 1), 2 * (lmax + 2)]),
        norm_type=rng.choice(["layer_norm", "layer_norm_sh", "rms_norm_sh"]),
        use_grid_mlp=activation.startswith("grid_mlp"),
        use_sep_s2_act=activation in ("grid_mlp_sep", "sep_s2"),
        use_gate_act=activation == "gate",
        use_atom_edge_embedding=elements != "none",
        share_atom_edge_embedding=elements == "shared",
        use_m_share_rad=rng.random() < 0.3,
        use_attn_renorm=rng.random() < 0.7,
        max_neighbors=rng.choice([6, 12, 30]),
        cutoff=rng.choice([3.0, 4.0, 5.5]),
        dens_inputs=dens,
        sigma_encoding=dens and rng.random() < 0.5,
        envelope=rng.choice(["none", "polynomial"]),
    )
    heads = {
        "energy": HeadSpec("energy", {"reduce": rng.choice(["sum", "mean"])}),
        "forces": HeadSpec("forces", {"denoising_block": dens}),
    }
    if rng.random() < 0.7:
        heads["stress"] = HeadSpec(
            "rank2",
            {
                "decompose": rng.random() < 0.5,
                "edge_level_mlp": rng.random() < 0.5,
                "use_source_target_embedding": rng.random() < 0.5,
                "extensive": rng.random() < 0.5,
                "num_mlp_layers": rng.randint(1, 3),
                "avg_num_nodes": rng.choice([1.0, 7.5]),
            },
        )
    return config, heads


def tiny_model(
    config: EquiformerV2Config | None = None,
    heads: dict[str, HeadSpec] | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> EquiformerV2Potential:
    """A random-weight potential in eval mode (every parameter drawn, so no zero biases)."""
    torch.manual_seed(seed)
    model = EquiformerV2Potential(config or tiny_config(), heads)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
    return model.to(dtype).eval()


def tiny_graph(
    num_structures: int = 2,
    *,
    cutoff: float = 4.0,
    max_neighbors: int | None = 12,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> GraphInput:
    """Random small periodic and molecular structures (H..Ne, Cu) as one batched graph."""
    from ase import Atoms

    from eqv2calc.graph import batch_graphs, graph_from_atoms

    rng = np.random.default_rng(seed)
    structures = []
    for i in range(num_structures):
        n = int(rng.integers(3, 7))
        numbers = rng.choice([1, 6, 7, 8, 10, 29 % 20], size=n)
        if i % 2 == 0:  # periodic: atoms at least 1 Å apart in a 4-5 Å triclinic cell
            cell = np.diag(rng.uniform(4.0, 5.0, 3)) + rng.uniform(-0.5, 0.5, (3, 3))
            atoms = Atoms(numbers=numbers, cell=cell, pbc=True)
        else:
            atoms = Atoms(numbers=numbers, pbc=False)
        positions = []
        while len(positions) < n:
            candidate = rng.uniform(0, 3.5, 3)
            if all(np.linalg.norm(candidate - p) > 1.0 for p in positions):
                positions.append(candidate)
        atoms.positions = np.array(positions)
        structures.append(atoms)
    batched = batch_graphs(
        [
            graph_from_atoms(a, cutoff=cutoff, max_neighbors=max_neighbors, strict=True)
            for a in structures
        ]
    )
    return GraphInput(
        atomic_numbers=torch.cat([torch.as_tensor(a.numbers) for a in structures]),
        edge_index=torch.as_tensor(batched.edge_index),
        edge_vec=torch.as_tensor(batched.edge_vec).to(dtype),
        batch=torch.as_tensor(batched.batch),
        num_graphs=num_structures,
    )
