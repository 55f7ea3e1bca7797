"""The worker side of a campaign: build the calculator once, run chunks of items.

:class:`CampaignWorker` is what the local executor runs in-process and what every Ray actor
wraps: it builds its calculator from a :class:`CalculatorSpec` once, then runs chunks of
work items with a task (:mod:`eqv2calc.campaigns.tasks`), returning one :class:`Outcome`
per item with its provenance (model, versions, host, device, timings).
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CalculatorSpec", "CampaignWorker", "Outcome", "versions"]


@dataclass(frozen=True)
class CalculatorSpec:
    """How a worker builds its calculator.

    Attributes:
        model: Checkpoint path, registry name, ``"emt"`` (ASE's EMT) or None (bundled
            demo model).
        device: Torch device (``auto`` picks CUDA when the worker sees a GPU).
        dtype: ``float32`` or ``float64``.
        factory: ``"module:function"`` returning a calculator (called with
            ``factory_kwargs``) instead of the above; for custom or test calculators.
        factory_kwargs: Keyword arguments of ``factory``.
        precision: ``--precision`` mode (``eqv2calc.engine.precision``) or None.
        force_precision: use ``precision`` even where its measured error is refused.
        compile: compile the model with ``torch.compile`` (opt-in).
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    factory: str | None = None
    factory_kwargs: tuple[tuple[str, Any], ...] = ()
    precision: str | None = None
    force_precision: bool = False
    compile: bool = False

    def build(self) -> Any:
        """The ASE calculator (raises ValueError with a one-line message if it cannot)."""
        if self.factory is not None:
            mod_name, _, func_name = self.factory.partition(":")
            try:
                func = getattr(importlib.import_module(mod_name), func_name)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"calculator factory {self.factory}: {err}") from err
            return func(**dict(self.factory_kwargs))
        if self.model is not None and self.model.strip().lower() == "emt":
            if self.precision not in (None, "float32", "float64") or self.compile:
                raise ValueError("--precision tf32/bf16 and --compile need an EquiformerV2 model")
            from ase.calculators.emt import EMT

            return EMT()
        from eqv2calc.calculator import EquiformerV2Calculator

        try:
            calc = EquiformerV2Calculator(model=self.model, device=self.device, dtype=self.dtype)
        except Exception as err:  # any load failure is one line naming the model
            what = self.model if self.model is not None else "the bundled default model"
            raise ValueError(f"cannot load model {what}: {' '.join(str(err).split())}") from err
        return self._apply_precision(calc)

    def _apply_precision(self, calc: Any) -> Any:
        """Set the precision mode and compilation of this spec on ``calc`` (ValueError if refused)."""
        if self.precision is not None:
            from eqv2calc.engine.precision import resolve_precision

            mode = resolve_precision(self.precision, force=self.force_precision)
            if mode.dtype != self.dtype:
                raise ValueError(f"--precision {mode.name} conflicts with --dtype {self.dtype}")
            calc.precision = mode
        if self.compile:
            try:
                calc.compile_model()
            except (RuntimeError, ImportError) as err:
                raise ValueError(f"--compile: {' '.join(str(err).split())}") from err
        return calc

    def checkpoint_sha256(self, note: Callable[[str], None] | None = None) -> str | None:
        """SHA-256 of the eqv2calc checkpoint file this spec loads (what
        ``EquiformerV2Calculator.model_sha256`` gives, without loading the model), or None
        for EMT and a factory. The campaign ledger records it, so that a checkpoint replaced
        under the same path or name is noticed on resume.

        The driver hashes only a checkpoint it can read here without downloading (a file
        that exists, a cached or bundled registry model): a path that exists only on the
        worker nodes, or a registry model not in this machine's cache, is not fetched just
        to be hashed. Then no hash is recorded (None) and ``note`` (default: a logged
        warning) gets one line saying that the checkpoint is not checked on resume.
        """
        if self.factory is not None:
            return None
        if self.model is not None and self.model.strip().lower() == "emt":
            return None
        from eqv2calc.registry import resolve_model
        from eqv2calc.registry.download import sha256_of

        what = self.model if self.model is not None else "the bundled default model"
        try:
            return sha256_of(resolve_model(self.model, download=False, progress=False))
        except Exception as err:  # not visible here: the workers load (or refuse) it
            reason = " ".join(str(err).split()).split(". ")[0].rstrip(".") or type(err).__name__
            msg = (
                f"the model checkpoint {what} is not checked on resume: this driver cannot "
                f"see it and does not download it to hash it ({reason}); the workers load it"
            )
            if note is None:
                logging.getLogger(__name__).warning(msg)
            else:
                note(msg)
            return None

    @property
    def label(self) -> str:
        """What the settings fingerprint records as the model."""
        from eqv2calc.registry import DEFAULT_MODEL_NAME

        if self.factory is not None:
            return f"{self.factory}{dict(self.factory_kwargs) or ''}"
        return self.model if self.model is not None else f"{DEFAULT_MODEL_NAME} (bundled)"


@dataclass
class Outcome:
    """The result of one work item, as a worker returns it.

    Attributes:
        key: The item key.
        ok: False when the item failed (``error`` says why).
        result: JSON-friendly result record (stored in the ledger).
        error: One-line reason of a failure.
        atoms: Result structure for the driver to write (relaxed structure, evaluated
            structure with results attached), or None.
        provenance: Model, versions, host, device, timings.
    """

    key: str
    ok: bool
    result: dict[str, Any]
    error: str | None = None
    atoms: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    """Versions of Python, eqv2calc, torch, ase and numpy installed for this process (read
    from package metadata: nothing is imported, so an EMT worker never loads torch)."""
    from importlib.metadata import PackageNotFoundError, version

    from eqv2calc.version import __version__

    out = {"eqv2calc": __version__, "python": platform.python_version()}
    for name in ("torch", "ase", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


class CampaignWorker:
    """Runs chunks of work items with one calculator built once.

    Args:
        spec: How to build the calculator.
        task: The campaign task (picklable; see :mod:`eqv2calc.campaigns.tasks`).
        threads: Torch intra-op threads (None: leave as is).
        calculator: An already built calculator to use instead of building one.
    """

    def __init__(
        self,
        spec: CalculatorSpec,
        task: Any,
        threads: int | None = None,
        calculator: Any = None,
    ):
        if threads is not None:  # before torch (and its OpenMP runtime) loads
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        self.spec = spec
        self.task = task
        self.calculator = calculator if calculator is not None else spec.build()
        if threads is not None and "torch" in sys.modules:  # a model was loaded
            sys.modules["torch"].set_num_threads(int(threads))
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._base = {
            "model": spec.label,
            "model_label": str(getattr(self.calculator, "model_label", None) or spec.label),
            "calculator": type(self.calculator).__name__,
            "device": str(getattr(self.calculator, "device", "cpu")),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker": self.worker_id,
            "versions": versions(),
        }

    def identity(self) -> str:
        """``host:pid`` of this worker."""
        return self.worker_id

    def run(
        self, payloads: list[dict[str, Any]], emit: Callable[[Outcome], None] | None = None
    ) -> list[Outcome]:
        """Run a chunk; ``emit`` is called with each outcome as soon as it is ready.

        Returns:
            The outcomes, in the order they finished.
        """
        outcomes: list[Outcome] = []
        started = time.time()

        def done(outcome: Outcome) -> None:
            now = time.time()
            outcome.provenance = {
                **self._base,
                **outcome.provenance,
                "chunk_started": started,
                "finished": now,
            }
            outcomes.append(outcome)
            if emit is not None:
                emit(outcome)

        self.task.work(self.calculator, payloads, done)
        return outcomes

    def stream(self, payloads: list[dict[str, Any]]) -> Iterator[Outcome]:
        """Like :meth:`run`, but yields each outcome as soon as it is ready (the chunk runs
        in a helper thread). A Ray actor method that is a generator streams its results to
        the driver item by item."""
        box: queue.Queue = queue.Queue()
        end = object()

        def target() -> None:
            try:
                self.run(payloads, box.put)
            except BaseException as err:  # handed to the consumer
                box.put(err)
            finally:
                box.put(end)

        thread = threading.Thread(target=target, name="campaign-chunk", daemon=True)
        thread.start()
        while True:
            item = box.get()
            if item is end:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()
