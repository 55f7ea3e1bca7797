"""Running a campaign: lock the ledger, record the items, run what is left, report.

:func:`run_campaign` is the one entry point the CLI (and Python users) call. Running it twice
with the same task and items continues where the first run stopped: done and failed items are
skipped, items left running by a killed driver go back to pending (the ledger lock proves that
driver is gone) and relaxations continue from their trajectories. A second driver on the same
ledger is refused (:class:`~eqv2calc.campaigns.lock.CampaignLocked`); a campaign with other
settings on the same folder is refused
(:class:`~eqv2calc.campaigns.ledger.SettingsMismatchError`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqv2calc.campaigns.executors import LocalExecutor, RayExecutor, _Context
from eqv2calc.campaigns.hashing import shard_of
from eqv2calc.campaigns.ledger import (
    LEDGER_NAME,
    ItemSpec,
    Ledger,
    SettingsMismatchError,
    ledger_name,
    settings_compatible,
    settings_diff,
)
from eqv2calc.campaigns.lock import CampaignLocked, LedgerLock
from eqv2calc.campaigns.worker import Outcome

__all__ = ["CampaignReport", "check_folder_settings", "parse_shard", "run_campaign"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (ValueError with the expected form)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"--shard expects I/N such as 0/4 (0-based I), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N (I is 0-based)")
    return i, n


def check_folder_settings(out: Path, own: Path, kind: str, settings: dict[str, Any]) -> None:
    """Refuse a campaign whose settings differ from any other ledger in ``out``.

    Shard ledgers and a merged ``campaign.sqlite`` share a folder; a shard run with other
    settings there would split the inputs into another campaign and lose items, so every
    ledger of the folder (besides ``own``, which :class:`Ledger` checks itself) must hold
    the same kind and settings fingerprint.

    Raises:
        SettingsMismatchError: Naming the other ledger file and what differs.
    """
    others = sorted(out.glob("campaign.shard-*-of-*.sqlite"))
    if (out / LEDGER_NAME).is_file():
        others.insert(0, out / LEDGER_NAME)
    for f in others:
        if f.resolve() == own.resolve():
            continue
        with Ledger(f) as led:
            if led.kind == kind and settings_compatible(led.settings, settings):
                continue
            what = (
                f"a {led.kind} campaign"
                if led.kind != kind
                else f"other settings ({settings_diff(led.settings, settings)})"
            )
        raise SettingsMismatchError(
            f"{out}: {f.name} holds {what}; shards and merged ledgers in one folder must come "
            "from the same command: rerun with its options, or use another output folder"
        )


@contextlib.contextmanager
def _driver_lock(out: Path, ledger_path: Path, kind: str, sharded: bool) -> Iterator[None]:
    """One driver per ledger. Unsharded: the output-folder lock every eqv2calc command takes
    (:func:`eqv2calc.io.lock_directory`); shards, which may share a folder: a lock on the
    shard's ledger file."""
    try:
        from eqv2calc.io import OutputDirLocked, lock_directory
    except ImportError:  # an eqv2calc.io without folder locks
        sharded = True
    if sharded:
        with LedgerLock(ledger_path):
            yield
        return

    try:
        ctx = lock_directory(out, f"{kind} campaign")
        ctx.__enter__()
    except OutputDirLocked as err:
        raise CampaignLocked(
            f"{err}; a campaign continues when you rerun the same command after it stopped"
        ) from None
    try:
        yield
    finally:
        ctx.__exit__(None, None, None)


@dataclass
class CampaignReport:
    """What a campaign run did.

    Attributes:
        ledger_path: The ledger file.
        counts: Items per state after the run (whole ledger).
        done: Items completed by this run.
        failed: Items that failed in this run.
        skipped: Items given but already done or failed before this run.
        not_in_shard: Items given that belong to other shards.
        recovered: Items found running (left by a killed driver) and put back to pending.
        elapsed_s: Wall time of the run, s.
        notes: One-line remarks (duplicate inputs...).
        lost_leases: Results not recorded because their lease had been taken over.
    """

    ledger_path: Path
    counts: dict[str, int] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    skipped: int = 0
    not_in_shard: int = 0
    recovered: int = 0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    lost_leases: int = 0

    @property
    def items_per_s(self) -> float:
        """Items finished (done or failed) by this run per second of wall time."""
        n = self.done + self.failed
        return n / self.elapsed_s if self.elapsed_s > 0 else 0.0


def run_campaign(
    task: Any,
    specs: Sequence[ItemSpec],
    payloads: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    executor: LocalExecutor | RayExecutor,
    *,
    shard: tuple[int, int] | None = None,
    lease_s: float = 600.0,
    retry_failed: bool = False,
    notes: Sequence[str] = (),
    on_outcome: Callable[[dict[str, Any], Outcome, dict[str, Any]], None] | None = None,
) -> CampaignReport:
    """Run (or continue) a campaign in ``out_dir``.

    Args:
        task: A task from :mod:`eqv2calc.campaigns.tasks`.
        specs: Item records (from ``task.items(...)``), one per payload, same order.
        payloads: What workers need per item (from ``task.items(...)``).
        out_dir: Output folder; the ledger is ``campaign.sqlite`` there
            (``campaign.shard-I-of-N.sqlite`` with ``shard``).
        executor: :class:`LocalExecutor` or :class:`RayExecutor`.
        shard: ``(I, N)``: run only the items whose input hash (``ItemSpec.shard_key``, not
            the settings) falls in shard I of N.
        lease_s: Lease length of claimed items, s (renewed while they run).
        retry_failed: Put failed items back to pending first.
        notes: Remarks to carry into the report.
        on_outcome: Called as ``on_outcome(payload, outcome, record)`` after each item is
            recorded (e.g. to print a line).

    Returns:
        The :class:`CampaignReport`.

    Raises:
        CampaignLocked: Another driver runs on this ledger.
        SettingsMismatchError: The folder holds a campaign (this ledger, another shard's or a
            merged one) with other settings.
    """
    t0 = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ledger_name(shard)
    report = CampaignReport(ledger_path=path, notes=list(notes))
    pairs = list(zip(specs, payloads))
    if shard is not None:
        mine = [(s, p) for s, p in pairs if shard_of(s.shard_key or s.key, shard[1]) == shard[0]]
        report.not_in_shard = len(pairs) - len(mine)
        pairs = mine
    with _driver_lock(out, path, task.kind, shard is not None):
        check_folder_settings(out, path, task.kind, task.settings())
        ledger = Ledger(path, task.kind, task.settings())
        try:
            report.recovered = ledger.recover()
            if retry_failed:
                ledger.retry_failed()
            ledger.add_items(s for s, _ in pairs)
            keys = [s.key for s, _ in pairs]
            states = ledger.states(keys)
            todo = [k for k in keys if states.get(k) == "pending"]
            report.skipped = len(keys) - len(todo)
            by_key = {s.key: p for s, p in pairs}

            def handle(outcome: Outcome, token: str) -> None:
                payload = by_key[outcome.key]
                ok, error = outcome.ok, outcome.error
                try:
                    record = task.record(payload, outcome)
                except Exception as err:
                    record, ok = dict(outcome.result), False
                    error = f"cannot write the output of {payload['label']}: {err}"
                if ok:
                    accepted = ledger.complete(outcome.key, token, record, outcome.provenance)
                else:
                    accepted = ledger.fail(
                        outcome.key, token, error or "failed", record, outcome.provenance
                    )
                if not accepted:
                    report.lost_leases += 1
                    return
                if ok:
                    report.done += 1
                else:
                    report.failed += 1
                if on_outcome is not None:
                    on_outcome(payload, outcome, record)

            run_id = ledger.start_run(executor.name, executor.n_workers)
            try:
                if todo:
                    executor.run(_Context(ledger, task, by_key, handle, lease_s), todo)
            finally:
                ledger.finish_run(run_id, report.done, report.failed)
            report.counts = ledger.counts()
        finally:
            ledger.close()
    report.elapsed_s = time.monotonic() - t0
    return report
