"""torch-sim ``ModelInterface`` for eqv2calc models (``pip install eqv2calc[torchsim]``).

>>> import torch_sim as ts
>>> from eqv2calc.integrations.torchsim import EquiformerV2Model
>>> model = EquiformerV2Model("eq2_31M_ec4_allmd.pt", device="cuda")
>>> state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
>>> out = model(state)    # energy [B] eV, forces [N, 3] eV/Å, stress [B, 3, 3] eV/Å³

The graph is built on the device by :mod:`eqv2calc.neighbors` (same edges as the ASE
calculator). Written against torch-sim-atomistic 0.3.0 (the newest release that installs on
Python 3.11 here) and checked with its ``validate_model_outputs``.
"""

from __future__ import annotations

import torch

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the torch-sim integration needs torch-sim: pip install eqv2calc[torchsim]"
    ) from err

__all__ = ["EquiformerV2Model"]


class EquiformerV2Model(ModelInterface):
    """An eqv2calc model behind torch-sim's ``ModelInterface``.

    Args:
        model: checkpoint path, registry name, None (bundled demo model), or an existing
            :class:`~eqv2calc.calculator.EquiformerV2Calculator`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        dtype: ``torch.float32`` or ``torch.float64`` (the model's and the outputs' dtype).
        compute_stress: return the stress (models with a stress head only).
        skin: neighbour-list skin in Å for reuse between calls (0: always rebuild).
    """

    def __init__(
        self,
        model=None,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        compute_stress: bool | None = None,
        skin: float = 0.0,
    ) -> None:
        super().__init__()
        from eqv2calc.calculator import EquiformerV2Calculator
        from eqv2calc.neighbors import NeighborCache

        if isinstance(model, EquiformerV2Calculator):
            self.calc = model
        else:
            self.calc = EquiformerV2Calculator(model, device=device, dtype=dtype)
        self._device = self.calc.device
        self._dtype = self.calc.dtype
        has_stress = bool(self.calc.has_stress)
        if compute_stress and not has_stress:
            raise ValueError(f"{self.calc.model_label} has no stress head; compute_stress=False")
        self._compute_stress = has_stress if compute_stress is None else bool(compute_stress)
        self._compute_forces = True
        s = self.calc.loaded.graph_settings
        self._neighbors = NeighborCache(s.cutoff, s.max_neighbors, s.strict, skin=skin)

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        """Energy ``[B]`` (eV), forces ``[N, 3]`` (eV/Å), stress ``[B, 3, 3]`` (eV/Å³)."""
        get = state.get if isinstance(state, dict) else lambda k: getattr(state, k)
        positions = get("positions")
        if isinstance(state, dict):
            cells = state["cell"]  # torch-sim state dicts carry column-vector cells
            cells = cells.transpose(-1, -2)
        else:
            cells = state.row_vector_cell
        numbers = get("atomic_numbers")
        system_idx = get("system_idx")
        if system_idx is None:
            system_idx = torch.zeros_like(numbers)
        pbc = get("pbc")
        pbc = torch.as_tensor(pbc, dtype=torch.bool, device=positions.device)
        nb = int(cells.reshape(-1, 3, 3).shape[0])
        out = self.calc.predict_state(
            positions.to(self._device),
            cells.reshape(-1, 3, 3).to(self._device),
            numbers.to(self._device),
            system_idx.to(self._device),
            pbc.to(self._device),
            nb,
            self._neighbors,
        )
        res = {
            "energy": out["energy"].to(positions.dtype),
            "forces": out["forces"].to(positions.dtype),
        }
        if self._compute_stress:
            res["stress"] = out["stress"].to(positions.dtype)
        return res
