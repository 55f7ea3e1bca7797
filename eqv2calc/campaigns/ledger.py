"""The campaign ledger: one SQLite file that records every work item of a campaign.

Every item (a structure to relax or evaluate, an AdsorbML slab x adsorbate system) is a row
keyed by its name, the content hash of its input and the campaign settings
(:func:`eqv2calc.campaigns.hashing.item_key`), in one of four states::

    pending --claim--> running (worker, lease token, lease expiry) --complete--> done
                           |                                      \\--fail-----> failed
                           \\--release / lease expired--> pending (attempts + 1)

Every change is one SQLite transaction (``BEGIN IMMEDIATE``), the file is in WAL mode, so a
process killed at any moment leaves the ledger as it was after the last committed change.
Completing an item needs the lease token its claim returned: a worker whose lease was taken
over (expired and claimed again, or released after its actor died) cannot overwrite the
result, and an item that is done is never done again.

The campaign settings (a JSON dict, with the SHA-256 of the model checkpoint when it is an
eqv2calc checkpoint) and their fingerprint are stored once; opening the ledger with other
settings raises :class:`SettingsMismatchError` naming each setting that differs
(``seed: was 0, now 1``). A ledger that lacks the checkpoint hash (written by an older
eqv2calc) is continued and records the hash from then on.
Times are UNIX seconds (UTC); results and provenance are JSON.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqv2calc.campaigns.hashing import IDENTITY_SETTINGS, canonical_json, settings_fingerprint

__all__ = [
    "LEDGER_NAME",
    "STATES",
    "ItemSpec",
    "Ledger",
    "LedgerError",
    "SettingsMismatchError",
    "ledger_name",
    "settings_compatible",
    "settings_diff",
]

#: Ledger file of an unsharded campaign, inside the output folder.
LEDGER_NAME = "campaign.sqlite"
#: Item states.
STATES = ("pending", "running", "done", "failed")
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    label TEXT NOT NULL,
    source TEXT,
    input TEXT,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed')),
    worker TEXT,
    lease TEXT,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    provenance TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS items_state ON items (state, seq);
CREATE TABLE IF NOT EXISTS legacy_keys (key TEXT PRIMARY KEY, legacy_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    host TEXT,
    pid INTEGER,
    executor TEXT,
    workers INTEGER,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
"""


class LedgerError(RuntimeError):
    """The ledger file cannot be used (corrupt, wrong kind, newer schema...)."""


class SettingsMismatchError(LedgerError):
    """The output folder holds a campaign with other settings."""


def ledger_name(shard: tuple[int, int] | None = None) -> str:
    """``campaign.sqlite``, or ``campaign.shard-I-of-N.sqlite`` for shard ``(I, N)``."""
    if shard is None:
        return LEDGER_NAME
    i, n = shard
    return f"campaign.shard-{i}-of-{n}.sqlite"


@dataclass(frozen=True)
class ItemSpec:
    """A work item to record: its key, order, name, where it came from and its input.

    ``shard_key`` is the hash of the input alone (no settings), which decides the item's
    shard: shards of one input set split the same way whatever the settings. None: ``key``.
    ``legacy_key`` is the key this item had before item keys held its name (the input hash
    and settings alone): a ledger row under that key with the same label is this item,
    recorded by an older eqv2calc, and :meth:`Ledger.add_items` takes it over. ``shard_key``
    is not stored; ``legacy_key`` is (table ``legacy_keys``), so that ``campaign merge`` and
    ``status`` recognise this item's row in a ledger an older eqv2calc wrote or merged.
    """

    key: str
    label: str
    source: str | None = None
    input: str | None = None  # e.g. the structure as extxyz text
    shard_key: str | None = None
    legacy_key: str | None = None


#: How settings are named in messages (others by their key).
SETTING_NAMES = {"model_sha256": "model checkpoint (sha256)"}


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts (the AdsorbML ``config``) flattened to ``outer.inner`` keys."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _normal(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as stored (through canonical JSON: tuples become lists...)."""
    return json.loads(canonical_json(settings))


def _comparable(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict, dict]:
    """``old`` and ``new`` normalized, without an identity setting that one of them lacks.

    A ledger written before the model checkpoint's SHA-256 was recorded has no
    ``model_sha256``: it is continued (the checkpoint is then taken to be the one it was made
    with, which nothing can tell any more) and the hash is recorded from then on. Once both
    sides hold the key, a different value is refused like any other setting."""
    old, new = _normal(old), _normal(new)
    for k in IDENTITY_SETTINGS:
        if (k in old) != (k in new):
            old.pop(k, None)
            new.pop(k, None)
    return old, new


def settings_compatible(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when results made under settings ``old`` may be continued under ``new``: the
    same settings, up to an identity setting (the checkpoint hash) that one side lacks."""
    a, b = _comparable(old, new)
    return settings_fingerprint(a) == settings_fingerprint(b)


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The settings that differ, one ``name: was X, now Y`` each (nested AdsorbML options by
    their own name, ``<unset>`` for a setting one side lacks)."""
    a, b = (_flat(d) for d in _comparable(old, new))
    keys = sorted(set(a) | set(b))
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for k, leaf in zip(keys, leaves):
        was, now = a.get(k, "<unset>"), b.get(k, "<unset>")
        if was != now:
            name = leaf if leaves.count(leaf) == 1 else k
            name = SETTING_NAMES.get(name, name)
            parts.append(f"{name}: was {was!r}, now {now!r}")
    return "; ".join(parts) or "(same keys, different values)"


class Ledger:
    """A campaign ledger file (see the module docstring).

    Args:
        path: The SQLite file (created with its folder if missing).
        kind: Campaign kind (``relax``, ``eval``, ``adsorbml``); must match a stored one.
        settings: Campaign settings; stored on first use, compared afterwards. None opens an
            existing ledger read-only in spirit (for status and merge): nothing is checked.
        max_attempts: An item whose worker died this many times is marked failed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str | None = None,
        settings: dict[str, Any] | None = None,
        *,
        max_attempts: int = 3,
    ):
        self.path = Path(path)
        self.max_attempts = max_attempts
        if settings is None and not self.path.is_file():
            raise LedgerError(f"{self.path}: no campaign ledger here")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise LedgerError(f"{self.path}: not a usable campaign ledger ({err})") from err
        self.kind, self.settings, self.fingerprint = self._init_meta(kind, settings)

    # -- setup -----------------------------------------------------------------------------

    def _init_meta(
        self, kind: str | None, settings: dict[str, Any] | None
    ) -> tuple[str, dict[str, Any], str]:
        with self.transaction() as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                if settings is None or kind is None:
                    raise LedgerError(f"{self.path}: empty ledger (no campaign settings)")
                fp = settings_fingerprint(settings)
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", SCHEMA_VERSION),
                        ("kind", kind),
                        ("settings", canonical_json(settings)),
                        ("fingerprint", fp),
                        ("created", repr(time.time())),
                    ],
                )
                return kind, dict(settings), fp
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema {meta.get('schema_version')!r}, this eqv2calc "
                f"reads {SCHEMA_VERSION!r}"
            )
        stored = json.loads(meta["settings"])
        if kind is not None and meta["kind"] != kind:
            raise SettingsMismatchError(
                f"{self.path.parent} holds a {meta['kind']} campaign, not a {kind} campaign; "
                "use another output folder"
            )
        if settings is not None and meta["fingerprint"] != settings_fingerprint(settings):
            if not settings_compatible(stored, settings):
                raise SettingsMismatchError(
                    f"{self.path.parent} holds a {meta['kind']} campaign with other settings "
                    f"({settings_diff(stored, settings)}); rerun with the same options to "
                    "continue it, or use another output folder"
                )
            # Continued from a ledger without an identity setting (see _comparable): record
            # it from now on, so that a later change is noticed.
            added = {
                k: v
                for k, v in _normal(settings).items()
                if k in IDENTITY_SETTINGS and k not in stored
            }
            if added:
                stored = {**stored, **added}
                fp = settings_fingerprint(stored)
                with self.transaction() as db:
                    db.executemany(
                        "UPDATE meta SET value = ? WHERE key = ?",
                        [(canonical_json(stored), "settings"), (fp, "fingerprint")],
                    )
                return meta["kind"], stored, fp
        return meta["kind"], stored, meta["fingerprint"]

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on error)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- items -----------------------------------------------------------------------------

    def add_items(self, items: Iterable[ItemSpec]) -> int:
        """Record new items as pending (items already known are left as they are; a row of
        an older eqv2calc under an item's ``legacy_key`` and label is renamed to its key).

        Returns:
            The number of items that were new.
        """
        now = time.time()
        with self.transaction() as db:
            (seq0,) = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM items").fetchone()
            items = list(items)
            for it in items:
                if it.legacy_key and it.legacy_key != it.key:
                    db.execute(
                        "UPDATE items SET key = ? WHERE key = ? AND label = ? AND NOT EXISTS "
                        "(SELECT 1 FROM items WHERE key = ?)",
                        (it.key, it.legacy_key, it.label, it.key),
                    )
            before = db.total_changes
            for j, it in enumerate(items):
                db.execute(
                    "INSERT OR IGNORE INTO items (key, seq, label, source, input, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (it.key, seq0 + j, it.label, it.source, it.input, now),
                )
            added = db.total_changes - before
            # Remember each item's legacy key, so that merge and status can recognise its row
            # in a ledger an older eqv2calc wrote (merged) as this item.
            db.executemany(
                "INSERT OR REPLACE INTO legacy_keys (key, legacy_key) VALUES (?, ?)",
                [
                    (it.key, it.legacy_key)
                    for it in items
                    if it.legacy_key and it.legacy_key != it.key
                ],
            )
            return added

    def states(self, keys: Sequence[str] | None = None) -> dict[str, str]:
        """``key -> state`` for ``keys`` (all items when None)."""
        if keys is None:
            return dict(self._db.execute("SELECT key, state FROM items").fetchall())
        out: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            marks = ",".join("?" * len(part))
            out.update(
                self._db.execute(
                    f"SELECT key, state FROM items WHERE key IN ({marks})", part
                ).fetchall()
            )
        return out

    def claim(self, keys: Sequence[str], worker: str, lease_s: float) -> dict[str, str]:
        """Claim items for ``worker``: pending ones, and running ones whose lease expired.

        Args:
            keys: Candidate items (others are not touched).
            worker: Worker id stored with the lease (e.g. ``host:pid``).
            lease_s: Lease length, s; renew with :meth:`renew` before it runs out.

        Returns:
            ``key -> lease token`` for the items claimed (the others were done, failed, or
            leased by someone else).
        """
        now = time.time()
        claimed: dict[str, str] = {}
        with self.transaction() as db:
            for key in keys:
                token = uuid.uuid4().hex
                cur = db.execute(
                    "UPDATE items SET state = 'running', worker = ?, lease = ?, "
                    "lease_expires = ?, started = ?, "
                    "attempts = attempts + (CASE WHEN state = 'running' THEN 1 ELSE 0 END) "
                    "WHERE key = ? AND (state = 'pending' OR "
                    "(state = 'running' AND lease_expires < ?))",
                    (worker, token, now + lease_s, now, key, now),
                )
                if cur.rowcount:
                    claimed[key] = token
        return claimed

    def renew(self, leases: dict[str, str], lease_s: float) -> int:
        """Extend the leases ``key -> token`` still held; returns how many were extended."""
        until = time.time() + lease_s
        n = 0
        with self.transaction() as db:
            for key, token in leases.items():
                n += db.execute(
                    "UPDATE items SET lease_expires = ? "
                    "WHERE key = ? AND lease = ? AND state = 'running'",
                    (until, key, token),
                ).rowcount
        return n

    def complete(
        self,
        key: str,
        token: str,
        result: dict[str, Any],
        provenance: dict[str, Any] | None = None,
    ) -> bool:
        """Mark an item done with its result, if ``token`` still holds its lease.

        Returns:
            True when recorded; False when the lease was lost (the item was released, taken
            over or already finished): nothing is changed then, so an item is never done
            twice and a finished result is never overwritten.
        """
        return self._finish(key, token, "done", result, None, provenance)

    def fail(
        self,
        key: str,
        token: str,
        error: str,
        result: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> bool:
        """Mark an item failed with a one-line error (same lease rule as :meth:`complete`)."""
        return self._finish(key, token, "failed", result, error, provenance)

    def _finish(
        self,
        key: str,
        token: str,
        state: str,
        result: dict[str, Any] | None,
        error: str | None,
        provenance: dict[str, Any] | None,
    ) -> bool:
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE items SET state = ?, result = ?, error = ?, provenance = ?, "
                "finished = ?, lease = NULL, lease_expires = NULL "
                "WHERE key = ? AND lease = ? AND state = 'running'",
                (
                    state,
                    json.dumps(result) if result is not None else None,
                    error,
                    json.dumps(provenance) if provenance is not None else None,
                    time.time(),
                    key,
                    token,
                ),
            )
            return cur.rowcount == 1

    def release(self, leases: dict[str, str], reason: str, count: bool = True) -> list[str]:
        """Give leased items back: pending again.

        Args:
            leases: ``key -> token`` of the items (items whose lease was lost are skipped).
            reason: Why (kept as the error of an item that is given up on).
            count: Count this as a failed attempt (its worker died or raised); an item
                released with ``count`` ``max_attempts`` times is marked failed. False when
                the driver itself stopped (Ctrl-C): the item is not to blame.

        Returns:
            Keys of the items that were marked failed.
        """
        failed = []
        with self.transaction() as db:
            for key, token in leases.items():
                row = db.execute(
                    "SELECT attempts FROM items WHERE key = ? AND lease = ? AND state = 'running'",
                    (key, token),
                ).fetchone()
                if row is None:
                    continue
                attempts = row[0] + (1 if count else 0)
                if count and attempts >= self.max_attempts:
                    db.execute(
                        "UPDATE items SET state = 'failed', attempts = ?, lease = NULL, "
                        "lease_expires = NULL, finished = ?, error = ? WHERE key = ?",
                        (
                            attempts,
                            time.time(),
                            f"gave up after {attempts} attempts: {reason}",
                            key,
                        ),
                    )
                    failed.append(key)
                else:
                    db.execute(
                        "UPDATE items SET state = 'pending', attempts = ?, worker = NULL, "
                        "lease = NULL, lease_expires = NULL WHERE key = ?",
                        (attempts, key),
                    )
        return failed

    def recover(self) -> int:
        """Put every running item back to pending (call only while holding the folder lock:
        then no other driver is alive and every lease is stale). A killed driver does not
        count as a failed attempt of its items. Returns how many."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE items SET state = 'pending', worker = NULL, lease = NULL, "
                "lease_expires = NULL WHERE state = 'running'"
            ).rowcount

    def retry_failed(self) -> int:
        """Put every failed item back to pending (for a rerun after fixing the cause)."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE items SET state = 'pending', error = NULL, result = NULL, attempts = 0 "
                "WHERE state = 'failed'"
            ).rowcount

    # -- runs ------------------------------------------------------------------------------

    def start_run(self, executor: str, workers: int) -> int:
        """Record that a driver started; returns the run id."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (started, host, pid, executor, workers) VALUES (?, ?, ?, ?, ?)",
                (time.time(), socket.gethostname(), os.getpid(), executor, workers),
            )
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, done: int, failed: int) -> None:
        """Record that a driver finished (``done``/``failed``: items it completed)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished = ?, done = ?, failed = ? WHERE id = ?",
                (time.time(), done, failed, run_id),
            )

    # -- queries ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of items per state (every state present, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        counts.update(self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"))
        return counts

    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        """Items as dicts in input order (``result``/``provenance`` decoded from JSON;
        ``legacy_key``: the key an older eqv2calc gave the item, when recorded, else None)."""
        sql = (
            "SELECT i.key, i.seq, i.label, i.source, i.input, i.state, i.worker, i.lease, "
            "i.lease_expires, i.attempts, i.result, i.error, i.provenance, i.created, "
            "i.started, i.finished, l.legacy_key "
            "FROM items AS i LEFT JOIN legacy_keys AS l ON l.key = i.key"
        )
        args: tuple[Any, ...] = ()
        if state is not None:
            sql += " WHERE i.state = ?"
            args = (state,)
        cur = self._db.execute(sql + " ORDER BY i.seq", args)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for k in ("result", "provenance"):
                row[k] = json.loads(row[k]) if row[k] else None
            out.append(row)
        return out

    def runs(self) -> list[dict[str, Any]]:
        """Driver runs recorded (oldest first)."""
        cur = self._db.execute("SELECT * FROM runs ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, v)) for v in cur.fetchall()]
