"""Device-resident batched engine: relaxations and MD of many structures as tensors.

Every structure of a batch lives in a few tensors (positions, cells, atomic numbers, structure
index, fixed-atom mask) on the model's device; optimizers (FIRE, LBFGS, with the Frechet cell
filter) and integrators (velocity Verlet, Langevin) update all structures at once with
per-structure step sizes, histories and convergence masks. The only host synchronisation per
step is the convergence check (plus the graph build's tensor sizes). Converged structures leave
the batch and waiting ones enter under an atom budget (in-flight refill).

Modules: :mod:`.state` (batched structures), :mod:`.evaluate` (energies/forces/stress from
tensors: an eqv2calc model or any ASE calculator), :mod:`.optimizers` (FIRE, LBFGS),
:mod:`.cellfilter` (Frechet cell filter), :mod:`.relax` (the relaxation loop), :mod:`.md`
(batched MD), :mod:`.precision` (float32/float64/TF32/bf16 modes).
"""

from __future__ import annotations

from eqv2calc.engine.relax import EngineSettings, relax_engine

__all__ = ["EngineSettings", "relax_engine"]
