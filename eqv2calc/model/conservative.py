"""Conservative forces and stress: energy derivatives through the EquiformerV2 backbone.

Released EquiformerV2 checkpoints predict forces and stress with their own heads ("direct"):
fast, but not the derivatives of the predicted energy. A model whose ``forces_kind`` is
``"gradient"`` instead returns

    F_i = −∂E/∂x_i                     (eV/Å)
    σ   = (1/V) · ∂E/∂ε |_(ε = 0)        (eV/Å³, ASE's sign: positive = tensile)

computed by autograd. The energy depends on positions and cell only through the edge vectors
``r_ij = x_j + n_ij·cell − x_i`` (:func:`eqv2calc.edges.edge_vectors`, periodic images included),
so the derivatives pass through the graph's edge vectors, the edge frames and the radial basis.
For the stress a symmetric strain ``ε`` (``[B, 3, 3]``, zero) displaces positions and cells,
``x → x·(1 + ε)``, ``cell → cell·(1 + ε)``, and the energy is differentiated at ``ε = 0``.
Forces and stress are exact derivatives of the energy that is reported with them, so NVE
dynamics conserves it and Hessians are symmetric.

Edge frames. Each edge is rotated onto the +y axis by Euler angles ``(α, β)``
(:func:`eqv2calc.model.so3.edge_frame_angles`); ``α`` has no derivative on that axis, and perfect
crystals in the usual orientation have edges exactly along ±y (the fcc second shell). The
gradient path therefore evaluates the model on the structure turned by a fixed, generic
rotation :data:`FRAME_ROTATION` (the same for every call, every model and training): the energy
of a gradient model is ``E(R₀·structure)``, and forces and stress are rotated back exactly by
autograd. EquiformerV2 is rotation-equivariant up to its S² grid sampling, so this changes
energies only by that sampling error (~1e-6 relative), and no lattice direction of small
indices lies near the frames' polar axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqv2calc.edges import edge_vectors
from eqv2calc.model.backbone import GraphInput

__all__ = [
    "FORCES_KINDS",
    "FRAME_ROTATION",
    "StructureInput",
    "gradient_hessian",
    "gradient_outputs",
]

#: ``forces_kind`` values: heads (``"direct"``) or energy derivatives (``"gradient"``).
FORCES_KINDS = ("direct", "gradient")


def _frame_rotation() -> torch.Tensor:
    """A fixed generic rotation (float64): axis ∝ (0.3189, 0.7761, 0.5437), angle 1.1 rad."""
    axis = torch.tensor([0.3189, 0.7761, 0.5437], dtype=torch.float64)
    axis = axis / axis.norm()
    k = torch.zeros(3, 3, dtype=torch.float64)
    k[0, 1], k[0, 2], k[1, 2] = -axis[2], axis[1], -axis[0]
    k = k - k.T
    angle = torch.tensor(1.1, dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + angle.sin() * k + (1 - angle.cos()) * (k @ k)


#: ``R₀`` ``[3, 3]`` float64: the gradient path evaluates the model on ``x·R₀ᵀ`` (see module doc).
FRAME_ROTATION = _frame_rotation()


@dataclass
class StructureInput:
    """Structures as positions, cells and edges with lattice offsets (tensors on one device).

    Attributes:
        atomic_numbers: ``[N]`` long.
        positions: ``[N, 3]`` Cartesian positions (Å), all structures concatenated.
        cells: ``[B, 3, 3]`` cells (Å), rows are lattice vectors (zero rows allowed along
            non-periodic axes: their offsets are 0).
        edge_index: ``[2, E]`` long; row 0 = source j (neighbour), row 1 = target i (centre).
        cell_offsets: ``[E, 3]`` integer lattice offsets n of the neighbour image.
        batch: ``[N]`` long, structure of every atom.
        edge_batch: ``[E]`` long, structure of every edge.
        num_graphs: number of structures B.
    """

    atomic_numbers: torch.Tensor
    positions: torch.Tensor
    cells: torch.Tensor
    edge_index: torch.Tensor
    cell_offsets: torch.Tensor
    batch: torch.Tensor
    edge_batch: torch.Tensor
    num_graphs: int

    @classmethod
    def from_batched_graph(
        cls,
        graph,
        numbers,
        positions,
        cells,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> StructureInput:
        """From a :class:`eqv2calc.graph.BatchedGraph` and the structures' arrays.

        Args:
            graph: the batched graph (edge_index, cell_offsets, batch, edge_batch).
            numbers: ``(N,)`` atomic numbers; positions: ``(N, 3)`` Å; cells: ``(B, 3, 3)`` Å.
            device: where the tensors go.
            dtype: of positions and cells. float64 (default) keeps edge vectors exact also
                for a float32 model: they are formed in float64 and cast for the model.
        """
        as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
        as_float = lambda a: torch.as_tensor(a, device=device).to(dtype)  # noqa: E731
        return cls(
            atomic_numbers=as_long(numbers),
            positions=as_float(positions),
            cells=as_float(cells),
            edge_index=as_long(graph.edge_index),
            cell_offsets=as_long(graph.cell_offsets),
            batch=as_long(graph.batch),
            edge_batch=as_long(graph.edge_batch),
            num_graphs=int(cells.shape[0]),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> StructureInput:
        """A copy on ``device`` (floating tensors cast to ``dtype`` when given)."""
        fl = lambda t: t.to(device=device, dtype=dtype or t.dtype)  # noqa: E731
        return StructureInput(
            self.atomic_numbers.to(device),
            fl(self.positions),
            fl(self.cells),
            self.edge_index.to(device),
            self.cell_offsets.to(device),
            self.batch.to(device),
            self.edge_batch.to(device),
            self.num_graphs,
        )

    def graph(self, edge_vec: torch.Tensor) -> GraphInput:
        """The model input for these edges with the given edge vectors ``[E, 3]`` (Å)."""
        return GraphInput(
            atomic_numbers=self.atomic_numbers,
            edge_index=self.edge_index,
            edge_vec=edge_vec,
            batch=self.batch,
            num_graphs=self.num_graphs,
        )


def _energy(model: torch.nn.Module, inputs: StructureInput, positions, cells) -> torch.Tensor:
    """``[B]`` energies (eV) of the structures with the given positions and cells."""
    vec = edge_vectors(positions, cells, inputs.edge_index, inputs.cell_offsets, inputs.edge_batch)
    vec = vec @ FRAME_ROTATION.to(device=vec.device, dtype=vec.dtype).T
    dtype = next(model.parameters()).dtype  # edge vectors in the positions' precision, then cast
    return model(inputs.graph(vec.to(dtype)), outputs=("energy",))["energy"]


def gradient_outputs(
    model: torch.nn.Module,
    inputs: StructureInput,
    *,
    stress: bool = True,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Energy and its derivatives: forces, and the stress of structures with a volume.

    Args:
        model: an :class:`~eqv2calc.model.potential.EquiformerV2Potential` (any ``forces_kind``;
            only its energy head is used).
        inputs: the structures. When ``inputs.positions`` requires grad it is used as is, so
            that a caller can differentiate the forces again (Hessians); otherwise a leaf copy
            is made.
        stress: also differentiate with respect to a strain.
        create_graph: keep the graph of the derivatives (training on forces, Hessians).

    Returns:
        ``"energy"`` ``[B]`` eV, ``"forces"`` ``[N, 3]`` eV/Å and, with ``stress``,
        ``"virial"`` ``[B, 3, 3]`` = ∂E/∂ε (eV) and ``"stress"`` ``[B, 3, 3]`` eV/Å³
        (NaN for structures whose cell has no volume, e.g. molecules).
    """
    positions = inputs.positions
    if not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    cells = inputs.cells
    with torch.enable_grad():
        wrt = [positions]
        if stress:
            strain = torch.zeros_like(cells, requires_grad=True)  # [B, 3, 3]
            sym = 0.5 * (strain + strain.transpose(1, 2))
            positions_s = positions + torch.einsum("ni,nij->nj", positions, sym[inputs.batch])
            cells = cells + torch.bmm(cells, sym)
            wrt.append(strain)
        else:
            positions_s = positions
        energy = _energy(model, inputs, positions_s, cells)
        grads = torch.autograd.grad(energy.sum(), wrt, create_graph=create_graph, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
    out = {"energy": energy, "forces": -grads[0]}
    if stress:
        virial = grads[1]
        volume = torch.linalg.det(inputs.cells).abs()  # [B] Å³
        has_volume = volume > 1e-6
        safe = torch.where(has_volume, volume, torch.ones_like(volume))
        out["virial"] = virial
        out["stress"] = torch.where(
            has_volume.view(-1, 1, 1), virial / safe.view(-1, 1, 1), torch.nan
        )
    return out


def gradient_hessian(model: torch.nn.Module, inputs: StructureInput) -> torch.Tensor:
    """The Hessian ``∂²E/∂x∂x`` (eV/Å²) of every structure, by autograd (second derivatives).

    Returns:
        ``[3N, 3N]`` for all atoms of the batch (row/column ``3i + k`` is atom ``i``, axis
        ``k``); blocks between different structures are zero. Computed with one backward
        pass per row (batched over rows with ``vmap`` where the operations allow it).
    """
    positions = inputs.positions.detach().requires_grad_(True)
    local = StructureInput(**{**inputs.__dict__, "positions": positions})
    with torch.enable_grad():
        forces = gradient_outputs(model, local, stress=False, create_graph=True)["forces"]
        flat = -forces.reshape(-1)  # ∂E/∂x
        n = flat.numel()
        rows = []
        for i in range(n):
            (row,) = torch.autograd.grad(
                flat[i], positions, retain_graph=i < n - 1, allow_unused=True
            )
            rows.append(torch.zeros_like(positions) if row is None else row)
    return torch.stack(rows).reshape(n, n).detach()
