"""Dataset statistics a model trained from scratch is set up with.

* ``avg_num_nodes`` (atoms per structure) and ``avg_degree`` (edges per atom): the backbone's
  fixed normalisation constants;
* per-element linear energy references (eV per atom of each element), fitted by least squares
  ``E ≈ Σ_Z n_Z · ref_Z`` → the model's ``element_references``;
* normalizers: energy (mean 0, std = RMS per-atom residual energy × ``avg_num_nodes``, so each
  atom's contribution is O(1)), forces (mean 0, std = RMS force component, eV/Å), and the
  isotropic / anisotropic stress parts of the decomposed stress head (eV/Å³).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from eqv2calc.model.heads import symmetric_tensor_basis
from eqv2calc.model.potential import Normalizer
from eqv2calc.training.data import LabelledStructure

NUM_REFERENCE_ELEMENTS = 119  # index = atomic number, as in the released hydra files


@dataclass
class DatasetStatistics:
    """What :func:`dataset_statistics` measured (energies eV, forces eV/Å, stress eV/Å³)."""

    num_structures: int
    avg_num_nodes: float
    avg_degree: float
    element_references: torch.Tensor  # [119] eV
    normalizers: dict[str, Normalizer]
    energy_residual_rms_per_atom: float  # eV/atom, after the element references
    num_with_stress: int


def composition_matrix(
    items: Sequence[LabelledStructure], size: int = NUM_REFERENCE_ELEMENTS
) -> np.ndarray:
    """``[B, size]`` counts of each atomic number per structure."""
    counts = np.zeros((len(items), size))
    for b, s in enumerate(items):
        counts[b] = np.bincount(s.numbers.numpy(), minlength=size)[:size]
    return counts


def fit_element_references(
    items: Sequence[LabelledStructure], energies: np.ndarray | None = None
) -> np.ndarray:
    """Least-squares per-element energies (eV), ``[119]``; elements absent from the data get 0.

    ``energies`` defaults to the structures' total energies; pass residuals to fit a correction.
    The minimum-norm solution is taken when compositions are linearly dependent.
    """
    counts = composition_matrix(items)
    y = (
        np.array([s.energy for s in items])
        if energies is None
        else np.asarray(energies, dtype=np.float64)
    )
    present = counts.sum(axis=0) > 0
    refs = np.zeros(NUM_REFERENCE_ELEMENTS)
    solution, *_ = np.linalg.lstsq(counts[:, present], y, rcond=None)
    refs[present] = solution
    return refs


def stress_parts(stress: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Isotropic ``[B]`` and anisotropic ``[B, 5]`` coefficients of symmetric ``[B, 3, 3]`` stresses.

    The inverse of the decomposed stress head's ``σ = t0·I/√3 + Σ_m t2_m·S_m``.
    """
    iso, aniso = symmetric_tensor_basis(stress.dtype)
    sym = 0.5 * (stress + stress.transpose(1, 2))
    return torch.einsum("bij,ij->b", sym, iso), torch.einsum("bij,mij->bm", sym, aniso)


def dataset_statistics(
    items: Sequence[LabelledStructure], fit_references: bool = True
) -> DatasetStatistics:
    """Measure the statistics of the training structures (see the module docstring)."""
    if not items:
        raise ValueError("no training structures to compute statistics from")
    natoms = np.array([s.num_atoms for s in items], dtype=np.float64)
    nedges = np.array([s.edge_index.shape[1] for s in items], dtype=np.float64)
    avg_num_nodes = float(natoms.mean())
    avg_degree = float(nedges.sum() / natoms.sum())
    refs = fit_element_references(items) if fit_references else np.zeros(NUM_REFERENCE_ELEMENTS)
    energies = np.array([s.energy for s in items])
    residual = energies - composition_matrix(items) @ refs
    rms_per_atom = float(np.sqrt(np.mean((residual / natoms) ** 2)))
    forces = torch.cat([s.forces for s in items])
    force_rms = float(forces.pow(2).mean().sqrt())
    normalizers = {
        "energy": Normalizer(0.0, max(rms_per_atom, 1e-3) * avg_num_nodes),
        "forces": Normalizer(0.0, max(force_rms, 1e-3)),
    }
    with_stress = [s.stress for s in items if s.stress is not None]
    if with_stress:
        iso, aniso = stress_parts(torch.stack(with_stress))
        normalizers["stress_isotropic"] = Normalizer(
            float(iso.mean()), max(float(iso.std(unbiased=False)), 1e-4)
        )
        normalizers["stress_anisotropic"] = Normalizer(
            0.0, max(float(aniso.pow(2).mean().sqrt()), 1e-4)
        )
    return DatasetStatistics(
        num_structures=len(items),
        avg_num_nodes=avg_num_nodes,
        avg_degree=avg_degree,
        element_references=torch.as_tensor(refs, dtype=torch.float32),
        normalizers=normalizers,
        energy_residual_rms_per_atom=rms_per_atom,
        num_with_stress=len(with_stress),
    )
