"""Many structures as one set of tensors (positions Å, cells Å, numbers, structure index)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms

__all__ = ["BatchedStructures", "fixed_mask"]


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """``(N,)`` bool, True for atoms fixed by ``FixAtoms``.

    Raises:
        ValueError: for any other constraint type (the engine honours FixAtoms only; use
            ``--engine ase`` for other constraints).
    """
    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
        else:
            raise ValueError(
                f"constraint {type(c).__name__} is not supported by the torch engine "
                "(only FixAtoms); use the ASE engine (--engine ase) for this structure"
            )
    return mask


@dataclass
class BatchedStructures:
    """Structures concatenated into tensors on one device.

    Attributes:
        positions: ``[N, 3]`` Å (float64 by default: optimizers and integrators work in float64;
            the model casts to its own dtype).
        cells: ``[B, 3, 3]`` Å, rows are lattice vectors.
        pbc: ``[B, 3]`` bool.
        numbers: ``[N]`` long atomic numbers.
        batch: ``[N]`` long structure index, non-decreasing.
        fixed: ``[N]`` bool, atoms fixed by ``FixAtoms``.
        masses: ``[N]`` atomic masses (amu).
    """

    positions: torch.Tensor
    cells: torch.Tensor
    pbc: torch.Tensor
    numbers: torch.Tensor
    batch: torch.Tensor
    fixed: torch.Tensor
    masses: torch.Tensor

    @property
    def num_graphs(self) -> int:
        """Number of structures B."""
        return int(self.cells.shape[0])

    @classmethod
    def from_atoms(
        cls,
        atoms_list: Sequence[Atoms],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> BatchedStructures:
        """Stack ``ase.Atoms`` (positions as stored, unwrapped) into tensors."""
        atoms_list = list(atoms_list)
        counts = torch.tensor([len(a) for a in atoms_list], dtype=torch.long)

        def cat(arrays, dt):
            if not arrays:
                return torch.zeros(0, device=device, dtype=dt)
            return torch.as_tensor(np.concatenate(arrays), dtype=dt, device=device)

        return cls(
            positions=cat([a.get_positions() for a in atoms_list], dtype).reshape(-1, 3),
            cells=torch.as_tensor(
                np.array([a.cell.array for a in atoms_list]).reshape(-1, 3, 3),
                dtype=dtype,
                device=device,
            ),
            pbc=torch.as_tensor(
                np.array([a.pbc for a in atoms_list]).reshape(-1, 3),
                dtype=torch.bool,
                device=device,
            ),
            numbers=cat([a.numbers for a in atoms_list], torch.long),
            batch=torch.repeat_interleave(torch.arange(len(atoms_list)), counts).to(device),
            fixed=cat([fixed_mask(a) for a in atoms_list], torch.bool),
            masses=cat([a.get_masses() for a in atoms_list], dtype),
        )

    def to_atoms(self, templates: Sequence[Atoms]) -> list[Atoms]:
        """Copies of ``templates`` with this state's positions and cells."""
        pos = self.positions.detach().double().cpu().numpy()
        cells = self.cells.detach().double().cpu().numpy()
        counts = torch.bincount(self.batch, minlength=self.num_graphs).tolist()
        out, start = [], 0
        for b, (tmpl, n) in enumerate(zip(templates, counts)):
            a = tmpl.copy()
            a.set_cell(cells[b], scale_atoms=False)
            a.set_positions(pos[start : start + n], apply_constraint=False)
            out.append(a)
            start += n
        return out
