"""Executors: who runs the work items of a campaign.

* :class:`LocalExecutor` (the default): one :class:`~eqv2calc.campaigns.worker.CampaignWorker`
  in the driver process; all pending items go through one batched run that refills the batch
  as structures finish, each result going to the ledger the moment it is ready.
* :class:`RayExecutor`: ``workers`` long-lived Ray actors, each loading the model once. The
  driver claims chunks of items in the ledger (with a lease) and keeps two chunks queued on
  every actor so none waits for work. An actor relaxes its chunk as one batch that refills as
  structures finish, and streams each outcome back the moment it is ready (a Ray streaming
  generator); the driver writes it to the ledger at once and renews the leases of the items
  still in flight. An actor that dies (killed, out of memory, node lost) has its unfinished
  items released back to pending and re-sent to the other actors; a new actor replaces it.
  Ray is imported only here, when asked for.

Both call :func:`handle` for every outcome (write output files, then complete the item in
the ledger under its lease).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eqv2calc.campaigns.ledger import Ledger
from eqv2calc.campaigns.worker import CalculatorSpec, CampaignWorker, Outcome

__all__ = ["LocalExecutor", "RayExecutor", "RayNotInstalled", "WorkerStartError", "import_ray"]

#: What ``--executor ray`` says when Ray is missing.
RAY_HINT = "the ray executor needs Ray: pip install 'eqv2calc[ray]'"


class RayNotInstalled(ImportError):
    """Ray is not installed (the message says how to install it)."""


class WorkerStartError(RuntimeError):
    """Workers could not be started (model not loadable, resources not available...)."""


def import_ray() -> Any:
    """``import ray``, or :class:`RayNotInstalled` with the install command."""
    try:
        import ray
    except ImportError as err:
        raise RayNotInstalled(RAY_HINT) from err
    return ray


Handler = Callable[[Outcome, str], None]


@dataclass
class _Context:
    """What an executor needs from the campaign driver."""

    ledger: Ledger
    task: Any
    payloads: dict[str, dict[str, Any]]
    handle: Handler
    lease_s: float


def _atoms_of(payload: dict[str, Any]) -> int:
    atoms = payload.get("atoms")
    return len(atoms) if atoms is not None else 1


@dataclass
class LocalExecutor:
    """Run every item in this process (batched).

    Attributes:
        spec: How to build the calculator (unless ``calculator`` is given).
        calculator: A calculator already built by the caller.
        threads: Torch threads (None: unchanged).
    """

    spec: CalculatorSpec
    calculator: Any = None
    threads: int | None = None

    name = "local"

    @property
    def n_workers(self) -> int:
        return 1

    def run(self, ctx: _Context, todo: list[str]) -> None:
        worker = CampaignWorker(self.spec, ctx.task, self.threads, self.calculator)
        leases = ctx.ledger.claim(todo, worker.worker_id, ctx.lease_s)
        renewed = time.monotonic()

        def emit(outcome: Outcome) -> None:
            nonlocal renewed
            token = leases.pop(outcome.key, None)
            if token is None:
                return
            ctx.handle(outcome, token)
            if time.monotonic() - renewed > ctx.lease_s / 4:
                ctx.ledger.renew(leases, ctx.lease_s)
                renewed = time.monotonic()

        try:
            worker.run([ctx.payloads[k] for k in todo if k in leases], emit)
        finally:
            if leases:  # interrupted, or a driver bug left items without a result
                ctx.ledger.release(leases, "the run stopped before this item finished", False)


@dataclass
class RayExecutor:
    """Run items on Ray actors (see the module docstring).

    Attributes:
        spec: How each actor builds its calculator.
        workers: Number of actors (None: every CPU of the cluster / every GPU when
            ``gpus_per_worker`` > 0).
        address: ``auto`` or ``HOST:PORT`` of a running cluster; None starts a local Ray
            instance with ``num_cpus`` CPUs (default: ``workers`` x ``cpus_per_worker``).
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU).
        cpus_per_worker: CPUs each actor reserves (also its torch thread count).
        num_cpus: CPUs of a local Ray instance started here.
        max_restarts: Replacement actors started in total after actor deaths.
        start_timeout_s: Give up when the actors cannot start within this time, s.
        renew_s: How often the leases of chunks in flight are renewed, s.
    """

    spec: CalculatorSpec
    workers: int | None = None
    address: str | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: int = 1
    num_cpus: int | None = None
    max_restarts: int | None = None
    start_timeout_s: float = 300.0
    renew_s: float = 10.0

    name = "ray"

    @property
    def n_workers(self) -> int:
        return self.workers or 0

    # -- cluster ---------------------------------------------------------------------------

    def _init(self, ray: Any) -> bool:
        """Connect to / start Ray; True when this call started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        env = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
        if self.address:
            try:
                ray.init(address=self.address, runtime_env=env, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as err:
                text = " ".join(str(err).split())[:300]
                raise WorkerStartError(
                    f"cannot join the Ray cluster at --ray-address {self.address}: {text} "
                    "(start one with `ray start --head`, or leave --ray-address out to start a "
                    "local Ray instance)"
                ) from None
        else:
            n = self.num_cpus or max(1, (self.workers or os.cpu_count() or 1)) * max(
                1, self.cpus_per_worker
            )
            ray.init(
                num_cpus=n,
                runtime_env=env,
                include_dashboard=False,
                logging_level="WARNING",
            )
        return True

    def _default_workers(self, ray: Any) -> int:
        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, int(res.get("GPU", 0) / self.gpus_per_worker))
        return max(1, int(res.get("CPU", 1) // max(1, self.cpus_per_worker)))

    def _new_actor(self, ray: Any, task: Any) -> Any:
        # No per-actor runtime_env: it would keep Ray from reusing its pre-started worker
        # processes. The worker sets its OpenMP environment itself before torch loads.
        actor_class = ray.remote(max_restarts=0, max_task_retries=0)(CampaignWorker)
        return actor_class.options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker
        ).remote(self.spec, task, max(1, self.cpus_per_worker))

    def _start(self, ray: Any, task: Any, n: int) -> list[tuple[Any, str]]:
        actors = [self._new_actor(ray, task) for _ in range(n)]
        try:
            ids = ray.get([a.identity.remote() for a in actors], timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            for a in actors:
                ray.kill(a)
            raise WorkerStartError(
                f"could not start {n} Ray workers ({self.cpus_per_worker} CPU, "
                f"{self.gpus_per_worker} GPU each) within {self.start_timeout_s:.0f} s; the "
                f"cluster has {ray.cluster_resources()}; lower --workers or --gpus-per-worker"
            ) from None
        except ray.exceptions.RayActorError as err:
            for a in actors:
                ray.kill(a)
            cause = " ".join(str(getattr(err, "error_msg", err) or err).split())
            raise WorkerStartError(f"Ray workers failed to start: {cause[-400:]}") from None
        return list(zip(actors, ids))

    # -- driver loop -----------------------------------------------------------------------

    def run(self, ctx: _Context, todo: list[str]) -> None:
        ray = import_ray()
        started_here = self._init(ray)
        try:
            self._drive(ray, ctx, todo)
        finally:
            if started_here:
                ray.shutdown()

    def _drive(self, ray: Any, ctx: _Context, todo: list[str]) -> None:
        n = self.workers or self._default_workers(ray)
        self.workers = n
        slots: dict[int, list[Any]] = {}  # slot -> [actor, worker id, generation]
        for i, (actor, wid) in enumerate(self._start(ray, ctx.task, n)):
            slots[i] = [actor, wid, 0]
        restarts_left = self.max_restarts if self.max_restarts is not None else 3 * n
        queue = deque(todo)
        budget = int(getattr(ctx.task, "max_atoms_per_batch", 0) or 0)
        per_chunk = max(1, math.ceil(len(todo) / (2 * n)))
        if budget <= 0 or "atoms" not in next(iter(ctx.payloads.values()), {}):
            per_chunk = 1  # AdsorbML systems: one per call
        # stream (ObjectRefGenerator) -> (slot, generation, leases of its unfinished items)
        inflight: dict[Any, tuple[int, int, dict[str, str]]] = {}
        renewed = time.monotonic()

        def submit(slot: int) -> bool:
            actor, wid, gen = slots[slot]
            while queue:
                chunk: list[str] = []
                atoms = 0
                while queue and len(chunk) < per_chunk and (not chunk or atoms < 2 * budget):
                    key = queue.popleft()
                    chunk.append(key)
                    atoms += _atoms_of(ctx.payloads[key])
                leases = ctx.ledger.claim(chunk, wid, ctx.lease_s)
                if not leases:
                    continue
                stream = actor.stream.remote([ctx.payloads[k] for k in chunk if k in leases])
                inflight[stream] = (slot, gen, leases)
                return True
            return False

        def fill() -> None:
            for slot in list(slots):
                while sum(1 for s, _, _ in inflight.values() if s == slot) < 2:
                    if not submit(slot):
                        return

        def worker_died(slot: int, gen: int, err: Exception) -> None:
            nonlocal restarts_left
            if slot not in slots or slots[slot][2] != gen:
                return  # already replaced
            if restarts_left <= 0:
                del slots[slot]
                if not slots:
                    raise WorkerStartError(f"every Ray worker died; last: {err}") from None
                return
            restarts_left -= 1
            ((actor, wid),) = self._start(ray, ctx.task, 1)
            slots[slot] = [actor, wid, gen + 1]

        try:
            fill()
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.renew_s)
                if time.monotonic() - renewed > self.renew_s:
                    held: dict[str, str] = {}
                    for _, _, leases in inflight.values():
                        held.update(leases)
                    ctx.ledger.renew(held, ctx.lease_s)
                    renewed = time.monotonic()
                for stream in ready:
                    slot, gen, leases = inflight[stream]
                    try:
                        outcome = ray.get(next(stream))
                    except StopIteration:  # the chunk is finished
                        del inflight[stream]
                        if leases:
                            ctx.ledger.release(leases, "the worker returned no result")
                        continue
                    except ray.exceptions.RayActorError as err:
                        # The actor died (killed, out of memory, node lost): its unfinished
                        # items go back to pending and to the front of the queue.
                        del inflight[stream]
                        who = slots[slot][1] if slot in slots else "?"
                        failed = set(ctx.ledger.release(leases, f"Ray worker {who} died"))
                        queue.extendleft(reversed([k for k in leases if k not in failed]))
                        worker_died(slot, gen, err)
                        continue
                    except ray.exceptions.RayTaskError as err:
                        # An unexpected exception in a worker: retried (elsewhere, maybe)
                        # until the item's attempts run out, then failed with the reason.
                        del inflight[stream]
                        reason = " ".join(str(err).split())[-300:]
                        failed = set(ctx.ledger.release(leases, reason))
                        queue.extend(k for k in leases if k not in failed)
                        continue
                    token = leases.pop(outcome.key, None)
                    if token is not None:
                        ctx.handle(outcome, token)
                fill()
        finally:
            for actor, _, _ in slots.values():
                ray.kill(actor)
            leftover: dict[str, str] = {}
            for _, _, leases in inflight.values():
                leftover.update(leases)
            if leftover:
                ctx.ledger.release(leftover, "the driver stopped before this item finished", False)
