"""Labelled structures for training: reading, graph pre-computation, splitting and batching.

Every structure's radius graph is built once (with the model's cutoff and neighbour cap) and
kept as tensors; a batch is a plain concatenation. Models with gradient forces
(``forces_kind == "gradient"``) differentiate the energy with respect to positions and a strain,
so batches also carry positions, cells and lattice offsets (:attr:`Batch.structure`). Units: energy eV, forces eV/Å, stress eV/Å³ (ASE sign
convention: positive = tensile), lengths Å.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms
from ase.stress import voigt_6_to_full_3x3_stress

from eqv2calc.graph import graph_from_atoms
from eqv2calc.io import StructureReadError, read_structure_file
from eqv2calc.model.backbone import GraphInput
from eqv2calc.model.conservative import StructureInput


class TrainingDataError(ValueError):
    """A training structure that cannot be used; the message names file, structure and problem."""


@dataclass
class LabelledStructure:
    """One structure with its graph and labels, as tensors.

    Attributes:
        numbers: ``[N]`` long atomic numbers.
        edge_index: ``[2, E]`` long (row 0 source j, row 1 target i).
        edge_vec: ``[E, 3]`` float64 edge vectors (Å).
        energy: total energy (eV).
        forces: ``[N, 3]`` float64 (eV/Å).
        stress: ``[3, 3]`` float64 (eV/Å³) or None.
        force_weights: ``[N]`` float64 per-atom weights of the force loss.
        label: ``"file:index"`` for messages.
        positions: ``[N, 3]`` float64 (Å); cell: ``[3, 3]`` float64 (Å); cell_offsets:
            ``[E, 3]`` long lattice offsets of the edges (for gradient forces and stress).
    """

    numbers: torch.Tensor
    edge_index: torch.Tensor
    edge_vec: torch.Tensor
    energy: float
    forces: torch.Tensor
    stress: torch.Tensor | None
    force_weights: torch.Tensor
    label: str
    positions: torch.Tensor | None = None
    cell: torch.Tensor | None = None
    cell_offsets: torch.Tensor | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])


@dataclass
class Batch:
    """Model input plus targets of several structures (tensors on the training device).

    ``stress`` is ``[B, 3, 3]`` with zeros where ``has_stress`` is False.
    """

    graph: GraphInput
    energy: torch.Tensor  # [B] eV
    num_atoms: torch.Tensor  # [B]
    forces: torch.Tensor  # [N, 3] eV/Å
    force_weights: torch.Tensor  # [N]
    stress: torch.Tensor  # [B, 3, 3] eV/Å³
    has_stress: torch.Tensor  # [B] bool
    structure: StructureInput | None = None  # positions/cells/offsets (float64), gradient models


def read_structures(path: str | os.PathLike) -> list[Atoms]:
    """All structures of an extxyz/ASE-readable file or an ASE database (``.db``/``.json`` db)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such training data file")
    try:
        if path.suffix in (".db", ".aselmdb"):
            import ase.db

            with ase.db.connect(str(path)) as db:
                return [row.toatoms(add_additional_information=True) for row in db.select()]
    except Exception as exc:  # ASE raises many kinds; report them as one readable line
        raise StructureReadError(
            f"{path}: cannot read structures ({type(exc).__name__}: {exc})"
        ) from None
    return read_structure_file(path, index=":", what="training data file")


def _lookup(atoms: Atoms, key: str, per_atom: bool):
    results = getattr(atoms.calc, "results", None) or {}
    if key in results:
        return results[key]
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key]
    if not per_atom and key in atoms.info:
        return atoms.info[key]
    extra = atoms.info.get("key_value_pairs") or {}
    return extra.get(key) if not per_atom else None


def _fixed_mask(atoms: Atoms) -> np.ndarray:
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.index] = True
    return mask


def labelled_structure(
    atoms: Atoms,
    label: str,
    *,
    cutoff: float,
    max_neighbors: int | None,
    strict: bool,
    max_atomic_number: int,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    force_weights_key: str = "force_weights",
    fixed_atom_force_weight: float = 1.0,
) -> LabelledStructure:
    """Check one structure's labels and build its graph (cutoff in Å).

    Raises:
        TrainingDataError: missing or malformed energy/forces/stress, non-finite values, or an
            element the model does not cover; the message names ``label`` and the problem.
    """
    n = len(atoms)
    formula = atoms.get_chemical_formula()
    where = f"{label} ({formula})"
    if n == 0:
        raise TrainingDataError(f"{where}: the structure has no atoms")
    numbers = atoms.numbers
    bad = np.flatnonzero((numbers < 1) | (numbers > max_atomic_number))
    if bad.size:
        i = int(bad[0])
        raise TrainingDataError(
            f"{where}: atom {i} is {atoms.get_chemical_symbols()[i]} (Z={numbers[i]}); the model covers Z = 1..{max_atomic_number}"
        )
    energy = _lookup(atoms, energy_key, per_atom=False)
    if energy is None:
        raise TrainingDataError(
            f"{where}: no energy (looked for {energy_key!r} in calculator results and atoms.info)"
        )
    try:
        energy = float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError):
        raise TrainingDataError(f"{where}: energy {energy!r} is not a number") from None
    forces = _lookup(atoms, forces_key, per_atom=True)
    if forces is None:
        raise TrainingDataError(
            f"{where}: no forces (looked for {forces_key!r} in calculator results and atoms.arrays)"
        )
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (n, 3):
        raise TrainingDataError(f"{where}: forces have shape {forces.shape}, expected ({n}, 3)")
    stress = _lookup(atoms, stress_key, per_atom=False)
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):
            stress = voigt_6_to_full_3x3_stress(stress)
        elif stress.shape == (9,):
            stress = stress.reshape(3, 3)
        if stress.shape != (3, 3):
            raise TrainingDataError(
                f"{where}: stress has shape {stress.shape}, expected (6,) Voigt or (3, 3)"
            )
    for name, value in (("energy", energy), ("forces", forces), ("stress", stress)):
        if value is not None and not np.all(np.isfinite(value)):
            raise TrainingDataError(f"{where}: {name} contains NaN or inf")

    weights = np.ones(n)
    if force_weights_key in atoms.arrays:
        weights = np.asarray(atoms.arrays[force_weights_key], dtype=np.float64).reshape(n)
    weights = np.where(_fixed_mask(atoms), weights * fixed_atom_force_weight, weights)

    try:
        graph = graph_from_atoms(atoms, cutoff=cutoff, max_neighbors=max_neighbors, strict=strict)
    except ValueError as exc:
        raise TrainingDataError(f"{where}: cannot build its graph: {exc}") from None
    return LabelledStructure(
        numbers=torch.as_tensor(numbers, dtype=torch.long),
        edge_index=torch.as_tensor(graph.edge_index, dtype=torch.long),
        edge_vec=torch.as_tensor(graph.edge_vec, dtype=torch.float64),
        energy=energy,
        forces=torch.as_tensor(forces),
        stress=torch.as_tensor(stress) if stress is not None else None,
        force_weights=torch.as_tensor(weights),
        label=label,
        positions=torch.as_tensor(atoms.get_positions(), dtype=torch.float64),
        cell=torch.as_tensor(atoms.cell.array, dtype=torch.float64),
        cell_offsets=torch.as_tensor(graph.cell_offsets, dtype=torch.long),
    )


def load_dataset(path: str | os.PathLike, **kwargs) -> list[LabelledStructure]:
    """Read ``path`` and build every structure's graph (keyword arguments: see :func:`labelled_structure`)."""
    frames = read_structures(path)
    if not frames:
        raise TrainingDataError(f"{path}: the file holds no structures")
    name = Path(path).name
    return [labelled_structure(atoms, f"{name}:{i}", **kwargs) for i, atoms in enumerate(frames)]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Random train/validation split (seeded); at least one structure each when n ≥ 2."""
    if val_fraction <= 0 or n < 2:
        return list(range(n)), []
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def collate(
    items: Sequence[LabelledStructure],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Batch:
    """Concatenate structures into one :class:`Batch` (atom indices shifted per structure)."""
    counts = [s.num_atoms for s in items]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    edge_index = torch.cat([s.edge_index + off for s, off in zip(items, offsets)], dim=1)
    batch = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts))
    stress = torch.stack(
        [
            s.stress if s.stress is not None else torch.zeros(3, 3, dtype=torch.float64)
            for s in items
        ]
    )
    graph = GraphInput(
        atomic_numbers=torch.cat([s.numbers for s in items]).to(device),
        edge_index=edge_index.to(device),
        edge_vec=torch.cat([s.edge_vec for s in items]).to(device=device, dtype=dtype),
        batch=batch.to(device),
        num_graphs=len(items),
    )
    return Batch(
        graph=graph,
        energy=torch.tensor([s.energy for s in items], dtype=dtype, device=device),
        num_atoms=torch.tensor(counts, dtype=dtype, device=device),
        forces=torch.cat([s.forces for s in items]).to(device=device, dtype=dtype),
        force_weights=torch.cat([s.force_weights for s in items]).to(device=device, dtype=dtype),
        stress=stress.to(device=device, dtype=dtype),
        has_stress=torch.tensor([s.stress is not None for s in items], device=device),
        structure=_structure(items, graph, device),
    )


def _structure(
    items: Sequence[LabelledStructure], graph: GraphInput, device: torch.device | str
) -> StructureInput | None:
    """Positions, cells and lattice offsets of a batch (None if an item lacks them)."""
    if any(s.positions is None or s.cell_offsets is None for s in items):
        return None
    edges = torch.tensor([s.edge_index.shape[1] for s in items])
    return StructureInput(
        atomic_numbers=graph.atomic_numbers,
        positions=torch.cat([s.positions for s in items]).to(device),
        cells=torch.stack([s.cell for s in items]).to(device),
        edge_index=graph.edge_index,
        cell_offsets=torch.cat([s.cell_offsets for s in items]).to(device),
        batch=graph.batch,
        edge_batch=torch.repeat_interleave(torch.arange(len(items)), edges).to(device),
        num_graphs=len(items),
    )


def iterate_batches(
    items: Sequence[LabelledStructure],
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Iterator[Batch]:
    """Batches of ``batch_size`` structures; shuffled reproducibly when ``shuffle_seed`` is given."""
    order = list(range(len(items)))
    if shuffle_seed is not None:
        order = torch.randperm(
            len(items), generator=torch.Generator().manual_seed(shuffle_seed)
        ).tolist()
    for start in range(0, len(order), batch_size):
        yield collate([items[i] for i in order[start : start + batch_size]], device, dtype)


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
