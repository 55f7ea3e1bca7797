"""The ASE calculator for EquiformerV2, plus a batched prediction entry point.

>>> from eqv2calc import EquiformerV2Calculator
>>> atoms.calc = EquiformerV2Calculator("eq2_31M_ec4_allmd.pt")   # a path or a registry name
>>> atoms.get_potential_energy()    # eV
>>> atoms.get_forces()              # eV/Å (ASE zeroes atoms fixed by constraints)

What the energy means depends on the checkpoint: OC20 models (``energy_kind == "adsorption"``)
predict adsorption energies relative to the OC20 gas-phase references; OC22, OMat24 and MPtrj
models (``"total"``) predict total DFT energies. Forces (and stress, for models with a stress
head) are predicted directly, not as energy derivatives.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from eqv2calc.checkpoint import LoadedModel, load_checkpoint
from eqv2calc.checks import MIN_DISTANCE, as_atoms, check_finite_results, check_structure
from eqv2calc.device import resolve_device
from eqv2calc.graph import BatchedGraph, batch_graphs, graph_from_atoms
from eqv2calc.model.backbone import GraphInput
from eqv2calc.model.conservative import FORCES_KINDS, StructureInput, gradient_outputs

log = logging.getLogger("eqv2calc")

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "fp32": torch.float32,
    "fp64": torch.float64,
}
_STRESS_HINT = (
    "only checkpoints with a stress head predict stress: the OMat24, MPtrj and DeNS 'hydra' "
    "models (e.g. eqV2_31M_omat_mp_salex, eqV2_dens_31M_mp); OC20/OC22 models do not"
)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype
    if str(dtype) not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[str(dtype)]


class EquiformerV2Calculator(Calculator):
    """ASE calculator backed by an EquiformerV2 checkpoint.

    Args:
        model: a checkpoint path, a registry name (see ``eqv2calc models``), or None for the
            bundled default model (a small conservative model trained on EMT, not DFT).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:i]"``.
        dtype: ``"float32"`` (as the released models were trained) or ``"float64"``.
        use_ema: evaluate the checkpoint's EMA weights instead of its raw weights.
        allow_pickle: allow checkpoints that need arbitrary unpickling (trusted files only).
        min_distance: structures with two atoms (or an atom and its own periodic image)
            closer than this (Å) are refused with a :class:`~eqv2calc.checks.StructureError`,
            as by the command line; 0 turns the distance checks off.
        deterministic: switch the process to deterministic evaluation (one CPU thread,
            deterministic kernels; see :mod:`eqv2calc.determinism`) so that repeated runs give
            bitwise identical results.
        forces: ``None`` (as the checkpoint says), ``"direct"`` (force/stress heads) or
            ``"gradient"``: forces = −∂E/∂x and stress = (1/V)·∂E/∂ε of the predicted energy,
            by autograd (conservative; any checkpoint). Stress is given for every cell of
            non-zero volume and divided by the whole cell's volume, vacuum included (ASE's
            convention, as EMT and MACE do): for a slab or a molecule in a box it is not a
            material's stress. ``eqv2calc eval`` reports stress for 3D-periodic cells only.

    Structures may be ``ase.Atoms`` or pymatgen ``Structure``/``Molecule`` objects (converted
    with :mod:`pymatgen.io.ase`; partially occupied sites are refused). Every structure passes
    the checks of :func:`eqv2calc.checks.check_structure`, and NaN/inf results raise
    :class:`~eqv2calc.checks.NonFiniteResultError` instead of being returned.

    Results: ``energy``/``free_energy`` (eV), ``forces`` (eV/Å, as predicted — ASE's
    ``get_forces`` zeroes atoms fixed by ``FixAtoms``), and ``stress`` (Voigt
    ``[xx, yy, zz, yz, xz, xy]``, eV/Å³) when the model has a stress head.
    """

    default_parameters: dict = {}

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        use_ema: bool = False,
        allow_pickle: bool = False,
        min_distance: float = MIN_DISTANCE,
        forces: str | None = None,
        deterministic: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.min_distance = float(min_distance)
        if deterministic:
            from eqv2calc.determinism import use_deterministic_mode

            use_deterministic_mode()
        from eqv2calc.registry import DEFAULT_MODEL_NAME, resolve_model

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        path = resolve_model(model)
        if model is None:
            log.info(
                "no model given: using the bundled default model %s (trained on EMT, not DFT)",
                path,
            )
        self.loaded: LoadedModel = load_checkpoint(
            path, use_ema=use_ema, device=self.device, dtype=self.dtype, allow_pickle=allow_pickle
        )
        self.model = self.loaded.model
        if forces is not None:
            if forces not in FORCES_KINDS:
                raise ValueError(f"forces must be 'direct' or 'gradient', got {forces!r}")
            self.model.forces_kind = forces
        self.model_label = str(model) if model is not None else f"{DEFAULT_MODEL_NAME} (bundled)"
        #: the checkpoint file this calculator loaded
        self.model_path = path
        self._model_sha256: str | None = None
        #: precision mode every model call runs under: an object with ``.name`` and
        #: ``.context(device)`` (:class:`eqv2calc.engine.precision.Precision`), or None
        self.precision = None

    # --- facts about the model -------------------------------------------------------------
    @property
    def model_sha256(self) -> str:
        """SHA-256 of the checkpoint file (computed once, on first use): what resumable jobs
        compare, so that a checkpoint replaced under the same name is noticed."""
        if self._model_sha256 is None:
            from eqv2calc.registry.download import sha256_of

            self._model_sha256 = sha256_of(self.model_path)
        return self._model_sha256

    @property
    def implemented_properties(self) -> list[str]:  # type: ignore[override]
        return ["energy", "free_energy", "forces"] + (["stress"] if self.has_stress else [])

    @property
    def has_stress(self) -> bool:
        """A stress head, or gradient stress (every gradient model, cells of non-zero volume)."""
        return self.model.has_stress or self.forces_kind == "gradient"

    @property
    def forces_kind(self) -> str:
        """``"direct"`` (force/stress heads) or ``"gradient"`` (−∂E/∂x, (1/V)·∂E/∂ε)."""
        return getattr(self.model, "forces_kind", "direct")

    @property
    def cutoff(self) -> float:
        """Graph cutoff radius (Å)."""
        return self.loaded.graph_settings.cutoff

    @property
    def energy_kind(self) -> str:
        """``"adsorption"`` (OC20 convention) or ``"total"`` (DFT total energy)."""
        return self.loaded.energy_kind

    @property
    def max_atomic_number(self) -> int:
        return int(self.model.config.num_elements) - 1

    # --- prediction ------------------------------------------------------------------------
    def _check(self, atoms: Atoms, label: str) -> None:
        # the same checks as the drivers and the CLI (eqv2calc.checks): one validation path
        check_structure(
            atoms,
            min_distance=self.min_distance,
            max_atomic_number=self.max_atomic_number,
            label=label,
        )

    def _batched_graph(self, atoms_list: Sequence[Atoms]) -> BatchedGraph:
        s = self.loaded.graph_settings
        graphs = []
        for k, atoms in enumerate(atoms_list):
            self._check(atoms, f"structure {k}")
            graphs.append(
                graph_from_atoms(
                    atoms, cutoff=s.cutoff, max_neighbors=s.max_neighbors, strict=s.strict
                )
            )
        return batch_graphs(graphs)

    def structure_input(self, atoms_list: Sequence[Atoms]) -> StructureInput:
        """Positions, cells (float64) and edges with lattice offsets: gradient models' input."""
        return StructureInput.from_batched_graph(
            self._batched_graph(atoms_list),
            np.concatenate([a.numbers for a in atoms_list]),
            np.concatenate([a.positions for a in atoms_list]),
            np.stack([a.cell.array for a in atoms_list]),
            device=self.device,
        )

    def graph_input(self, atoms_list: Sequence[Atoms]) -> GraphInput:
        """Batched model input (graphs built with the checkpoint's cutoff and neighbour cap)."""
        batched = self._batched_graph(atoms_list)
        numbers = np.concatenate([a.numbers for a in atoms_list])
        dev = self.device
        return GraphInput(
            atomic_numbers=torch.as_tensor(numbers, dtype=torch.long, device=dev),
            edge_index=torch.as_tensor(batched.edge_index, device=dev),
            edge_vec=torch.as_tensor(batched.edge_vec, device=dev).to(self.dtype),
            batch=torch.as_tensor(batched.batch, device=dev),
            num_graphs=len(atoms_list),
        )

    def predict_batch(self, atoms_list: Sequence[Atoms]) -> list[dict]:
        """Energies, forces (and stress) for many structures in one forward pass.

        Returns one dict per structure: ``"energy"`` (float, eV), ``"forces"`` ((N, 3), eV/Å,
        fixed atoms not zeroed) and, for stress models, ``"stress"`` ((6,) Voigt, eV/Å³).
        """
        atoms_list = [as_atoms(a, f"structure {k}") for k, a in enumerate(atoms_list)]
        if not atoms_list:
            return []
        if self.forces_kind == "gradient":  # forces and stress are energy derivatives
            with self._precision_context():
                out = gradient_outputs(self.model, self.structure_input(atoms_list))
            out = {k: v.detach() for k, v in out.items()}
        else:
            graph = self.graph_input(atoms_list)
            with torch.inference_mode(), self._precision_context():
                out = self.model(graph)
        energy = out["energy"].double().cpu().numpy()
        forces = out["forces"].double().cpu().numpy()
        stress = out["stress"].double().cpu().numpy() if "stress" in out else None
        results, start = [], 0
        for b, atoms in enumerate(atoms_list):
            n = len(atoms)
            res = {
                "energy": float(energy[b]),
                "free_energy": float(energy[b]),
                "forces": forces[start : start + n].copy(),
            }
            if stress is not None and np.isfinite(stress[b]).all():  # NaN: gradient, no volume
                s = stress[b]
                res["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            check_finite_results(res["energy"], res["forces"], res.get("stress"), f"structure {b}")
            results.append(res)
            start += n
        return results

    def predict_state(
        self,
        positions: torch.Tensor,
        cells: torch.Tensor,
        numbers: torch.Tensor,
        batch: torch.Tensor,
        pbc: torch.Tensor,
        num_graphs: int | None = None,
        neighbors=None,
    ) -> dict[str, torch.Tensor]:
        """Energies, forces (and stress) straight from device tensors, no numpy round trip.

        The graph is built on the tensors' device by :mod:`eqv2calc.neighbors` (same edges as
        :meth:`graph_input`); pass a :class:`eqv2calc.neighbors.NeighborCache` as
        ``neighbors`` to reuse neighbour candidates between steps.

        Args:
            positions: ``[N, 3]`` Å, all structures concatenated (on ``self.device``).
            cells: ``[B, 3, 3]`` Å (rows are lattice vectors).
            numbers: ``[N]`` long atomic numbers.
            batch: ``[N]`` long structure index (non-decreasing).
            pbc: ``[B, 3]`` or ``[3]`` bool.
            num_graphs: B (default ``cells.shape[0]``).
            neighbors: optional ``NeighborCache`` built with this model's graph settings.

        Returns:
            ``"energy"`` ``[B]`` eV, ``"forces"`` ``[N, 3]`` eV/Å (fixed atoms not zeroed) and,
            for stress models, ``"stress"`` ``[B, 3, 3]`` eV/Å³; in the model's dtype.
        """
        from eqv2calc.neighbors import neighbor_graph

        num_graphs = int(cells.shape[0]) if num_graphs is None else int(num_graphs)
        s = self.loaded.graph_settings
        if neighbors is not None:
            dg = neighbors(positions, cells, pbc, batch, num_graphs)
        else:
            dg = neighbor_graph(
                positions,
                cells,
                pbc,
                batch,
                num_graphs,
                cutoff=s.cutoff,
                max_neighbors=s.max_neighbors,
                strict=s.strict,
            )
        if self.forces_kind == "gradient":  # forces and stress are energy derivatives
            inputs = StructureInput(
                atomic_numbers=numbers.long(),
                positions=positions.detach().double(),
                cells=cells.detach().double(),
                edge_index=dg.edge_index,
                cell_offsets=dg.cell_offsets,
                batch=batch,
                edge_batch=dg.edge_batch,
                num_graphs=num_graphs,
            )
            with self._precision_context():
                out = gradient_outputs(self.model, inputs)
            return {k: v.detach() for k, v in out.items()}
        # edge vectors in float64 then cast, exactly as graph_input does
        vec = dg.edge_vectors(positions.double(), cells.double()).to(self.dtype)
        graph = GraphInput(
            atomic_numbers=numbers.long(),
            edge_index=dg.edge_index,
            edge_vec=vec,
            batch=batch,
            num_graphs=num_graphs,
        )
        with torch.inference_mode(), self._precision_context():
            return self.model(graph)

    def _precision_context(self):
        """The context of :attr:`precision` on this device (a no-op when None)."""
        if self.precision is None:
            return contextlib.nullcontext()
        return self.precision.context(self.device)

    def compile_model(self) -> None:
        """Compile the model in place with ``torch.compile(dynamic=True)`` (opt-in).

        The first calls of each new graph shape are slow (compilation); later calls reuse it.

        Raises:
            RuntimeError: ``torch.compile`` is not supported on this platform.
        """
        dynamo = getattr(torch, "_dynamo", None)
        supported = getattr(dynamo, "is_dynamo_supported", None)
        if supported is not None and not supported():
            raise RuntimeError(
                f"torch.compile is not supported with torch {torch.__version__} on this platform"
            )
        self.model.compile(dynamic=True)

    def get_hessian(
        self,
        atoms: Atoms | None = None,
        *,
        method: str = "auto",
        delta: float = 0.01,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Hessian ∂²E/∂x∂x, ``(3N, 3N)`` eV/Å² (row/column ``3i + a``: atom i, axis a).

        Gradient models: by autograd (exact, symmetric). Direct models: central differences
        of the forces (``delta`` Å), all ``6N`` displaced copies in one batched call (or calls
        of ``batch_size``). ``self.hessian_report`` then holds the method and the force
        asymmetry ‖H − Hᵀ‖/‖H‖ (:class:`eqv2calc.hessian.HessianResult`), also logged.
        """
        from eqv2calc.hessian import compute_hessian

        atoms = self.atoms if atoms is None else atoms
        if atoms is None:
            raise ValueError("get_hessian: no structure given and none calculated before")
        self.hessian_report = compute_hessian(
            self, atoms, method=method, delta=delta, batch_size=batch_size
        )
        log.info("%s", self.hessian_report.summary())
        return self.hessian_report.hessian

    def get_property(self, name: str, atoms: Atoms | None = None, allow_calculation: bool = True):
        if name == "stress" and not self.has_stress:
            raise PropertyNotImplementedError(
                f"stress is not available for {self.model_label}: {_STRESS_HINT}"
            )
        if atoms is not None:
            atoms = as_atoms(atoms)  # a pymatgen Structure/Molecule is accepted too
        return super().get_property(name, atoms, allow_calculation)

    def calculate(
        self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes
    ) -> None:
        if atoms is not None:
            atoms = as_atoms(atoms)
        super().calculate(atoms, properties, system_changes)
        self.results = self.predict_batch([self.atoms])[0]
