"""Training with gradient (conservative) forces: predictions, and the distillation stage.

A model with ``forces_kind == "gradient"`` is trained through its forces and stress as energy
derivatives (:func:`eqv2calc.model.conservative.gradient_outputs` with ``create_graph=True``:
the force loss back-propagates through a second derivative). Its direct force and stress heads
stay in the checkpoint (the released layouts need them) but are neither used nor trained.

Distillation (``run.distill_epochs``): before training on the labels, the gradient model learns
the *initial* model's own predictions (its energy and its direct-head forces and stress) on the
training structures. This turns a direct checkpoint into a conservative one that reproduces
what it predicted, without any new labels; the following epochs then fit the labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from eqv2calc.model.conservative import gradient_outputs
from eqv2calc.training.data import Batch, LabelledStructure, iterate_batches

__all__ = ["distillation_items", "predict"]


def predict(model: torch.nn.Module, batch: Batch, *, create_graph: bool) -> dict[str, torch.Tensor]:
    """The model's energies (eV), forces (eV/Å) and stress (eV/Å³) for a training batch.

    Direct models run their heads; gradient models differentiate the energy (stress only when
    some structure of the batch has a stress label). ``create_graph`` keeps the derivatives
    differentiable, as a force loss needs.
    """
    if getattr(model, "forces_kind", "direct") != "gradient":
        return model(batch.graph)
    if batch.structure is None:
        raise ValueError(
            "gradient forces need positions, cells and lattice offsets in the batch "
            "(LabelledStructure.positions/cell/cell_offsets)"
        )
    out = gradient_outputs(
        model, batch.structure, stress=bool(batch.has_stress.any()), create_graph=create_graph
    )
    out.pop("virial", None)
    if not create_graph:
        out = {k: v.detach() for k, v in out.items()}
    return out


def distillation_items(
    model: torch.nn.Module,
    items: Sequence[LabelledStructure],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> list[LabelledStructure]:
    """``items`` relabelled with ``model``'s own predictions (energy, forces, stress).

    Stress targets are kept only for structures that had a stress label. The model is
    evaluated in eval mode, float32, on ``device``, as it is (direct heads for a direct model).
    """
    was_training = model.training
    model.eval()
    out: list[LabelledStructure] = []
    for batch in iterate_batches(items, batch_size, device=device):
        with torch.no_grad():
            pred = predict(model, batch, create_graph=False)
        energy = pred["energy"].double().cpu()
        forces = pred["forces"].double().cpu()
        stress = pred["stress"].double().cpu() if "stress" in pred else None
        start = 0
        for b, item in enumerate(items[len(out) : len(out) + batch.graph.num_graphs]):
            n = item.num_atoms
            out.append(
                dataclasses.replace(
                    item,
                    energy=float(energy[b]),
                    forces=forces[start : start + n].clone(),
                    stress=stress[b].clone()
                    if (stress is not None and item.stress is not None)
                    else item.stress,
                )
            )
            start += n
    model.train(was_training)
    return out
