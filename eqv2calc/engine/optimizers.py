"""Batched FIRE and LBFGS with ASE's update rules (``ase.optimize.FIRE`` / ``LBFGS``).

Both work on *rows*: ``x`` ``[R, 3]`` coordinates (atom positions, plus three cell rows per
structure under the Frechet filter) and ``f`` ``[R, 3]`` forces (minus the gradient; zero on
fixed atoms), with ``row_batch`` ``[R]`` the structure of every row. Every scalar of ASE's
optimizers (FIRE's ``dt``, ``a`` and step counter; LBFGS's history and iteration count) is a
``[B]`` tensor here, so the structures of a batch step together but independently. No step
makes a host synchronisation.

States can be narrowed to a subset of structures (``select``) and extended with new ones
(``extend``), which is how converged structures leave and waiting ones enter.

Parameters (units as ASE: Å, ASE time units for ``dt``): FIRE ``dt=0.1, maxstep=0.2,
dtmax=1.0, Nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99, a=0.1``; LBFGS ``maxstep=0.2,
memory=100, damping=1.0, alpha=70.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["FIRE", "LBFGS", "make_optimizer", "segment_sum", "segment_max_norm"]


def segment_sum(values: torch.Tensor, seg: torch.Tensor, num: int) -> torch.Tensor:
    """``[num]`` sums of ``values`` (``[R]`` or ``[R, 3]``, summed over the last axis too)."""
    if values.ndim > 1:
        values = values.sum(-1)
    return torch.zeros(num, dtype=values.dtype, device=values.device).index_add_(0, seg, values)


def segment_max_norm(vec: torch.Tensor, seg: torch.Tensor, num: int) -> torch.Tensor:
    """``[num]`` largest row norm of ``vec`` ``[R, 3]`` per segment (ASE's ``gradient_norm``)."""
    norms = torch.linalg.vector_norm(vec, dim=-1)
    out = torch.zeros(num, dtype=vec.dtype, device=vec.device)
    return out.scatter_reduce_(0, seg, norms, reduce="amax", include_self=True)


class _Batched:
    """Select/extend for dataclass states: row fields ``[R, ...]``, structure fields ``[B]``."""

    _row_fields: tuple[str, ...] = ()
    _struct_fields: tuple[str, ...] = ()

    def select(self, keep_rows: torch.Tensor, keep_structs: torch.Tensor) -> None:
        for name in self._row_fields:
            setattr(self, name, getattr(self, name)[..., keep_rows, :])
        for name in self._struct_fields:
            setattr(self, name, getattr(self, name)[..., keep_structs])

    def extend(self, n_rows: int, n_structs: int) -> None:
        for name in self._row_fields:
            t = getattr(self, name)
            pad = torch.zeros(*t.shape[:-2], n_rows, t.shape[-1], dtype=t.dtype, device=t.device)
            setattr(self, name, torch.cat([t, pad], dim=-2))
        for name in self._struct_fields:
            t = getattr(self, name)
            pad = self._struct_init(name, t, n_structs)
            setattr(self, name, torch.cat([t, pad], dim=-1))

    def _struct_init(self, name: str, like: torch.Tensor, n: int) -> torch.Tensor:
        return torch.zeros(*like.shape[:-1], n, dtype=like.dtype, device=like.device)


@dataclass
class FIRE(_Batched):
    """Batched ``ase.optimize.FIRE`` (no ``downhill_check``)."""

    dt0: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a0: float = 0.1
    vel: torch.Tensor | None = None  # [R, 3]
    dt: torch.Tensor | None = None  # [B]
    a: torch.Tensor | None = None  # [B]
    nsteps: torch.Tensor | None = None  # [B] steps since the last uphill move (ASE's Nsteps)
    started: torch.Tensor | None = None  # [B] bool: has taken a step (ASE's vel is not None)
    _row_fields = ("vel",)
    _struct_fields = ("dt", "a", "nsteps", "started")

    def init(self, n_rows: int, n_structs: int, device, dtype=torch.float64) -> None:
        """Empty state on ``device``; then :meth:`extend` adds structures."""
        self.vel = torch.zeros(0, 3, dtype=dtype, device=device)
        self.dt = torch.zeros(0, dtype=dtype, device=device)
        self.a = torch.zeros(0, dtype=dtype, device=device)
        self.nsteps = torch.zeros(0, dtype=torch.long, device=device)
        self.started = torch.zeros(0, dtype=torch.bool, device=device)
        self.extend(n_rows, n_structs)

    def _struct_init(self, name, like, n):
        if name == "dt":
            return torch.full((n,), self.dt0, dtype=like.dtype, device=like.device)
        if name == "a":
            return torch.full((n,), self.a0, dtype=like.dtype, device=like.device)
        return super()._struct_init(name, like, n)

    def step(self, x: torch.Tensor, f: torch.Tensor, row_batch: torch.Tensor) -> torch.Tensor:
        """Displacement ``[R, 3]`` for every row (ASE's ``FIRE.step``)."""
        nb = self.dt.shape[0]
        vf = segment_sum(f * self.vel, row_batch, nb)
        f2 = segment_sum(f * f, row_batch, nb)
        v2 = segment_sum(self.vel * self.vel, row_batch, nb)
        downhill = self.started & (vf > 0.0)
        uphill = self.started & ~(vf > 0.0)
        # downhill: mix the velocity towards the force
        scale = torch.sqrt(v2) / torch.sqrt(f2).clamp_min(1e-300)
        a_r = self.a[row_batch].unsqueeze(-1)
        mixed = (1.0 - a_r) * self.vel + a_r * f * scale[row_batch].unsqueeze(-1)
        vel = torch.where(downhill[row_batch].unsqueeze(-1), mixed, self.vel)
        grow = downhill & (self.nsteps > self.Nmin)
        dt = torch.where(grow, torch.clamp(self.dt * self.finc, max=self.dtmax), self.dt)
        a = torch.where(grow, self.a * self.fa, self.a)
        nsteps = torch.where(downhill, self.nsteps + 1, self.nsteps)
        # uphill: stop, restart slowly
        vel = torch.where(uphill[row_batch].unsqueeze(-1), torch.zeros_like(vel), vel)
        a = torch.where(uphill, torch.full_like(a, self.astart), a)
        dt = torch.where(uphill, dt * self.fdec, dt)
        nsteps = torch.where(uphill, torch.zeros_like(nsteps), nsteps)

        vel = vel + dt[row_batch].unsqueeze(-1) * f
        dr = dt[row_batch].unsqueeze(-1) * vel
        normdr = torch.sqrt(segment_sum(dr * dr, row_batch, nb))
        shrink = torch.where(
            normdr > self.maxstep, self.maxstep / normdr.clamp_min(1e-300), torch.ones_like(normdr)
        )
        self.vel, self.dt, self.a, self.nsteps = vel, dt, a, nsteps
        self.started = torch.ones_like(self.started)
        return dr * shrink[row_batch].unsqueeze(-1)


@dataclass
class LBFGS(_Batched):
    """Batched ``ase.optimize.LBFGS`` (no line search), one history per structure.

    The histories share one circular buffer of ``memory`` slots (all structures of a batch
    step together); a structure's valid slots are its last ``min(iteration, memory)`` ones.
    """

    maxstep: float = 0.2
    memory: int = 100
    damping: float = 1.0
    alpha: float = 70.0
    s: torch.Tensor | None = None  # [M, R, 3]
    y: torch.Tensor | None = None  # [M, R, 3]
    x0: torch.Tensor | None = None  # [R, 3] previous coordinates
    f0: torch.Tensor | None = None  # [R, 3] previous forces
    rho: torch.Tensor | None = None  # [M, B]
    iteration: torch.Tensor | None = None  # [B] long
    ptr: int = 0  # next slot to write (host integer, same for all structures)
    filled: list = field(default_factory=list)  # host copy of iteration (for loop bounds)
    _row_fields = ("s", "y", "x0", "f0")
    _struct_fields = ("rho", "iteration")

    def init(self, n_rows: int, n_structs: int, device, dtype=torch.float64) -> None:
        if self.maxstep > 1.0:
            raise ValueError(
                f"LBFGS maxstep {self.maxstep} Å is much too large (ASE refuses > 1.0 Å)"
            )
        m = self.memory
        self.s = torch.zeros(m, 0, 3, dtype=dtype, device=device)
        self.y = torch.zeros(m, 0, 3, dtype=dtype, device=device)
        self.x0 = torch.zeros(0, 3, dtype=dtype, device=device)
        self.f0 = torch.zeros(0, 3, dtype=dtype, device=device)
        self.rho = torch.zeros(m, 0, dtype=dtype, device=device)
        self.iteration = torch.zeros(0, dtype=torch.long, device=device)
        self.filled = []
        self.extend(n_rows, n_structs)

    def select(self, keep_rows, keep_structs) -> None:
        super().select(keep_rows, keep_structs)
        keep = keep_structs.tolist() if isinstance(keep_structs, torch.Tensor) else keep_structs
        if keep and isinstance(keep[0], bool):
            self.filled = [c for c, k in zip(self.filled, keep) if k]
        else:
            self.filled = [self.filled[i] for i in keep]

    def extend(self, n_rows: int, n_structs: int) -> None:
        super().extend(n_rows, n_structs)
        self.filled = list(self.filled) + [0] * n_structs

    def step(self, x: torch.Tensor, f: torch.Tensor, row_batch: torch.Tensor) -> torch.Tensor:
        """Displacement ``[R, 3]`` for every row (ASE's ``LBFGS.step``)."""
        nb = self.iteration.shape[0]
        m = self.memory
        has_prev = (self.iteration > 0)[row_batch].unsqueeze(-1)
        # update the history with the previous step (structures past their first step)
        if any(c > 0 for c in self.filled):
            slot = self.ptr
            s_new = torch.where(has_prev, x - self.x0, torch.zeros_like(x))
            y_new = torch.where(has_prev, self.f0 - f, torch.zeros_like(x))  # g - g0, g = -f
            ys = segment_sum(y_new * s_new, row_batch, nb)
            rho = torch.where(self.iteration > 0, 1.0 / ys, torch.zeros_like(ys))
            self.s[slot] = s_new
            self.y[slot] = y_new
            self.rho[slot] = rho
            self.ptr = (slot + 1) % m
        counts = [min(c, m) for c in self.filled]
        n_hist = max(counts) if counts else 0
        count_t = torch.clamp(self.iteration, max=m)
        # two-loop recursion, newest to oldest, over the valid slots of each structure
        q = -f
        alphas = []
        for back in range(n_hist):
            slot = (self.ptr - 1 - back) % m
            valid = back < count_t  # [B]
            rho = torch.where(valid, self.rho[slot], torch.zeros_like(self.rho[slot]))
            a_i = rho * segment_sum(self.s[slot] * q, row_batch, nb)
            q = q - a_i[row_batch].unsqueeze(-1) * self.y[slot]
            alphas.append((slot, rho, a_i))
        z = q / self.alpha
        for slot, rho, a_i in reversed(alphas):
            b_i = rho * segment_sum(self.y[slot] * z, row_batch, nb)
            z = z + self.s[slot] * (a_i - b_i)[row_batch].unsqueeze(-1)
        p = -z
        longest = segment_max_norm(p, row_batch, nb)
        scale = torch.where(
            longest >= self.maxstep,
            self.maxstep / longest.clamp_min(1e-300),
            torch.ones_like(longest),
        )
        dr = p * scale[row_batch].unsqueeze(-1) * self.damping
        self.x0 = x.clone()
        self.f0 = f.clone()
        self.iteration = self.iteration + 1
        self.filled = [c + 1 for c in self.filled]
        return dr


def make_optimizer(name: str, **kwargs) -> FIRE | LBFGS:
    """``"FIRE"`` or ``"LBFGS"`` with ASE's keyword names (``a`` for FIRE's initial mixing)."""
    key = name.upper()
    if key == "FIRE":
        if "a" in kwargs:
            kwargs["a0"] = kwargs.pop("a")
        allowed = {f.name for f in fields(FIRE)} - {"vel", "dt", "a", "nsteps", "started"}
        if "dt" in kwargs:
            kwargs["dt0"] = kwargs.pop("dt")
        cls = FIRE
    elif key == "LBFGS":
        allowed = {"maxstep", "memory", "damping", "alpha"}
        cls = LBFGS
    else:
        raise ValueError(f"the torch engine has FIRE and LBFGS, not {name!r}; use --engine ase")
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise ValueError(f"unknown {key} option(s) {bad}; known: {sorted(allowed)}")
    if kwargs.get("maxstep") is None:
        kwargs.pop("maxstep", None)
    return cls(**kwargs)
