"""Batched Frechet cell filter (``ase.filters.FrechetCellFilter``, no mask, no pressure).

Coordinates per structure (rows): the atom positions in the undeformed cell, ``u = F⁻¹ x``,
then three rows ``c · log F`` with ``F`` the deformation gradient from the starting cell
(``cell = cell₀ Fᵀ``) and ``c`` the ``exp_cell_factor`` (default: number of atoms). Forces on
these coordinates: ``f F`` for atoms and, for the cell rows, the derivative of the energy
along ``log F`` computed with the Fréchet derivative of the matrix exponential
(``virial · F⁻ᵀ`` contracted with ``d exp(L)/dL``), divided by ``c``. The matrix exponential and
its Fréchet derivative come from ``torch.linalg.matrix_exp`` (block-triangular trick), so no
host round trip.
"""

from __future__ import annotations

import torch

__all__ = ["FrechetRows"]


def _expm_frechet_all(L: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 3, 3, 3]`` D[b, mu, nu] = Fréchet derivative of expm at L[b] along E_{mu nu}."""
    nb = L.shape[0]
    eye9 = torch.eye(9, dtype=L.dtype, device=L.device).reshape(9, 3, 3)
    block = torch.zeros(nb, 9, 6, 6, dtype=L.dtype, device=L.device)
    block[:, :, :3, :3] = L.unsqueeze(1)
    block[:, :, 3:, 3:] = L.unsqueeze(1)
    block[:, :, :3, 3:] = eye9.unsqueeze(0)
    return torch.linalg.matrix_exp(block)[:, :, :3, 3:].reshape(nb, 3, 3, 3, 3)


class FrechetRows:
    """Map between rows ``[R, 3]`` (atoms then 3 cell rows per structure) and geometry.

    Args:
        cells0: ``[B, 3, 3]`` starting cells (Å).
        atom_counts: ``[B]`` atoms per structure.
        exp_cell_factor: ``[B]`` scaling of the cell rows (ASE default: number of atoms).
    """

    @staticmethod
    def layout(atom_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row structure index, atom-row mask, and index of each atom's row (rows grouped by
        structure: its atoms, then its three cell rows)."""
        rows = atom_counts + 3
        nb = atom_counts.shape[0]
        row_batch = torch.repeat_interleave(torch.arange(nb, device=rows.device), rows)
        starts = torch.cumsum(rows, 0) - rows
        local = torch.arange(row_batch.shape[0], device=rows.device) - starts[row_batch]
        is_atom = local < atom_counts[row_batch]
        return row_batch, is_atom, torch.nonzero(is_atom).squeeze(1)

    @staticmethod
    def to_rows(positions, cells, cells0, log_f, factor, row_batch, is_atom, batch):
        """Rows from positions ``[N, 3]`` and the current ``log F`` ``[B, 3, 3]``."""
        f = torch.linalg.matrix_exp(log_f)
        u = torch.linalg.solve(f[batch], positions.unsqueeze(-1)).squeeze(-1)
        rows = torch.zeros(row_batch.shape[0], 3, dtype=positions.dtype, device=positions.device)
        rows[is_atom] = u
        rows[~is_atom] = (log_f * factor.view(-1, 1, 1)).reshape(-1, 3)
        return rows

    @staticmethod
    def from_rows(rows, cells0, factor, is_atom, batch):
        """(positions ``[N, 3]``, cells ``[B, 3, 3]``, F, log F) from rows."""
        log_f = rows[~is_atom].reshape(-1, 3, 3) / factor.view(-1, 1, 1)
        f = torch.linalg.matrix_exp(log_f)
        cells = cells0 @ f.transpose(1, 2)
        positions = torch.einsum("nij,nj->ni", f[batch], rows[is_atom])
        return positions, cells, f, log_f

    @staticmethod
    def forces(atom_forces, stress, cells, f, log_f, factor, is_atom, batch):
        """Row forces from atom forces ``[N, 3]`` (eV/Å) and stress ``[B, 3, 3]`` (eV/Å³)."""
        volume = torch.abs(torch.linalg.det(cells))
        virial = -volume.view(-1, 1, 1) * stress
        ucf_grad = virial @ torch.linalg.inv(f.transpose(1, 2))
        deriv = _expm_frechet_all(log_f)  # [B, mu, nu, 3, 3]
        cell_force = torch.einsum("bmnij,bij->bmn", deriv, ucf_grad)
        out = torch.zeros(is_atom.shape[0], 3, dtype=atom_forces.dtype, device=atom_forces.device)
        out[is_atom] = torch.einsum("ni,nij->nj", atom_forces, f[batch])
        out[~is_atom] = (cell_force / factor.view(-1, 1, 1)).reshape(-1, 3)
        return out
