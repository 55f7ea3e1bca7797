"""A smooth cutoff for eqv2calc's own conservative models (not in the reference architecture).

EquiformerV2 expands edge distances in Gaussians spanning ``[0, cutoff]`` that do not vanish at
the cutoff, and its attention normalises over whatever neighbours the graph holds. Its energy
therefore jumps whenever an atom crosses the cutoff (or a capped neighbour list swaps a
neighbour). Direct force heads do not notice; an energy whose gradient is the force does: NVE
molecular dynamics then drifts by the size of those jumps.

With ``envelope="polynomial"`` every edge carries a weight ``u(d / cutoff)``, the polynomial
envelope of Klicpera, Groß & Günnemann (DimeNet, ICLR 2020) with ``p = 5``:

    u(x) = 1 − (p+1)(p+2)/2 · x^p + p(p+2) · x^(p+1) − p(p+1)/2 · x^(p+2),   0 ≤ x < 1,

which is 1 at ``x = 0`` and has ``u = u′ = u″ = 0`` at ``x = 1``. The weight enters

* the edge-degree embedding: each edge term is multiplied by ``u``;
* every attention block: ``α_ij = u_ij exp(a_ij) / Σ_k u_ik exp(a_ik)`` (the logits get
  ``log u``) and the attended value is multiplied by ``u_ij`` once more, so a neighbour that
  enters the cutoff changes neither the weights of the others nor the message of an atom that
  had no neighbours, by a jump.

The energy is then twice continuously differentiable in the positions, provided the neighbour
cap never binds (``max_neighbors`` larger than any atom's neighbour count within the cutoff).
"""

from __future__ import annotations

import torch

#: exponent p of the polynomial envelope
EXPONENT = 5


def polynomial_envelope(distance: torch.Tensor, cutoff: float, p: int = EXPONENT) -> torch.Tensor:
    """``u(d / cutoff)`` for edge lengths ``distance`` (Å), zero at and beyond the cutoff."""
    x = distance / cutoff
    u = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return torch.where(x < 1.0, u, torch.zeros_like(u))


def log_weight(weight: torch.Tensor) -> torch.Tensor:
    """``log u``, finite where ``u`` underflows to 0 (its gradient there is zero, not NaN)."""
    tiny = torch.finfo(weight.dtype).tiny
    return torch.log(weight.clamp_min(tiny))
