"""Persistence of an AdsorbML run in an ASE database (SQLite), written as results arrive.

Every row has the keys ``kind`` and ``system``; the kinds are

* ``placement`` (key ``pid``): an initial adslab;
* ``slab_ml`` / ``slab_dft``: the relaxed (or single-point) clean slab;
* ``ml`` (key ``pid``): an ML-relaxed adslab with ``e_ml`` (eV), ``steps``, ``converged``,
  ``anomaly`` (comma-separated kinds or "none") and the reasons in ``data``;
* ``gasref`` (keys ``level`` = "ml"/"dft:<name>", ``refmode``): gas-phase references (in ``data``);
* ``dft`` (keys ``pid``, ``mode``, ``dft``): a reference calculation of a top-ranked adslab.

SQLite commits every write, so an interrupted run keeps everything finished before it; the
run settings live in the database metadata so that a second run can resume (and refuses to
mix results made with different settings). A database that cannot be read is never deleted
or written to: :class:`DamagedStoreError` names it and says how to start over.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ase import Atoms

__all__ = ["DamagedStoreError", "ResultStore", "ResumeMismatchError"]


class ResumeMismatchError(ValueError):
    """The output folder holds results made with different settings."""


class DamagedStoreError(RuntimeError):
    """The results database cannot be read (damaged, or not a database); it is left as it is."""


#: how some settings are shown in a :class:`ResumeMismatchError` (name, value formatter)
_SETTING_NAMES: dict[str, tuple[str, Any]] = {
    "model_sha256": ("model checkpoint (sha256)", lambda v: "-" if v is None else f"{v[:12]}…"),
}


def _describe(key: str, old: Any, new: Any) -> str:
    name, fmt = _SETTING_NAMES.get(key, (key, repr))
    return f"{name}: was {fmt(old)}, now {fmt(new)}"


def _clean_kvp(kvp: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in kvp.items():
        if v is None:
            continue
        if hasattr(v, "item"):  # numpy scalars
            v = v.item()
        if isinstance(v, float) and v != v:  # NaN cannot be a key value
            continue
        out[k] = v
    return out


class ResultStore:
    """Thin wrapper around an ASE SQLite database holding one AdsorbML run."""

    def __init__(self, path: str | os.PathLike):
        from ase.db import connect

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_readable()
        with self._guard():
            self.db = connect(str(self.path), type="db")

    # -- damage --------------------------------------------------------------------------
    def _damaged(self, reason: str) -> DamagedStoreError:
        return DamagedStoreError(
            f"{self.path} cannot be read ({reason}): it is damaged; it was left as it is — move "
            "it aside (or use a new --out) to start over"
        )

    def _check_readable(self) -> None:
        """Refuse an existing database file that SQLite cannot read, before anything is written
        to it (a write could damage it further). Opened read-only; never changed."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return  # a new (or empty) database
        try:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            con = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as err:
            raise self._damaged(str(err)) from None
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        except sqlite3.OperationalError as err:  # locked, I/O error, no permission: not damage
            raise DamagedStoreError(f"{self.path} cannot be read ({err})") from None
        except sqlite3.DatabaseError as err:  # not a database, malformed
            raise self._damaged(str(err)) from None
        finally:
            con.close()
        if rows != [("ok",)]:
            raise self._damaged("; ".join(str(r[0]) for r in rows[:3]))

    @contextlib.contextmanager
    def _guard(self, reading: bool = False) -> Iterator[None]:
        """Turn SQLite's (and, when ``reading``, ase.db's decoding) errors into
        :class:`DamagedStoreError` naming the file, for damage the check on opening missed."""
        try:
            yield
        except sqlite3.OperationalError as err:  # locked, read-only, I/O error
            raise DamagedStoreError(f"{self.path} cannot be used ({err})") from None
        except sqlite3.DatabaseError as err:  # malformed, not a database
            raise self._damaged(str(err)) from None
        except (ValueError, KeyError, TypeError) as err:
            # ase.db decoding rows or metadata (JSON, numpy blobs) that are not what it wrote
            if not reading:
                raise
            raise self._damaged(f"{type(err).__name__}: {err}") from None

    # -- settings ------------------------------------------------------------------------
    def check_settings(
        self,
        system: str,
        settings: dict[str, Any],
        group: str,
        *,
        new_keys: tuple[str, ...] = (),
    ) -> None:
        """Record ``settings`` for (system, group), or check them against the recorded ones.

        ``new_keys`` are settings that databases written by older versions do not record: when
        the recorded settings lack one, it is not compared (it cannot be known what the old
        results were made with) and it is not added either (that would claim it was).

        Raises:
            ResumeMismatchError: listing every setting that differs.
        """
        with self._guard(reading=True):
            meta = dict(self.db.metadata)
        key = f"{system}::{group}"
        old = meta.get(key)
        if old is None:
            meta[key] = settings
            with self._guard():
                self.db.metadata = meta
            return
        if not isinstance(old, dict):
            raise self._damaged(f"the settings recorded for {key} are not a mapping")
        diffs = [
            _describe(k, old.get(k), settings.get(k))
            for k in sorted(set(old) | set(settings))
            if old.get(k) != settings.get(k) and not (k in new_keys and k not in old)
        ]
        if diffs:
            raise ResumeMismatchError(
                f"{self.path} holds {group} results for {system} made with other settings ("
                + "; ".join(diffs)
                + "); use another --out folder or delete it to start again"
            )

    # -- rows ----------------------------------------------------------------------------
    def _rows(self, **keys: Any) -> list[Any]:
        with self._guard(reading=True):
            return list(self.db.select(**_clean_kvp(keys)))

    def get(self, kind: str, system: str, **keys: Any) -> Any | None:
        """The newest row with these keys, or None."""
        rows = self._rows(kind=kind, system=system, **keys)
        return max(rows, key=lambda r: r.id) if rows else None

    def all(self, kind: str, system: str, **keys: Any) -> list[Any]:
        """All rows of a kind for a system (newest per ``pid`` when rows have one)."""
        rows = self._rows(kind=kind, system=system, **keys)
        latest: dict[Any, Any] = {}
        for r in sorted(rows, key=lambda r: r.id):
            latest[r.get("pid", r.id)] = r
        return [latest[k] for k in sorted(latest, key=lambda x: (str(type(x)), x))]

    def put(
        self,
        atoms: Atoms,
        kind: str,
        system: str,
        data: dict[str, Any] | None = None,
        **keys: Any,
    ) -> int:
        """Write a row (replacing an older one with the same identifying keys)."""
        ident = {k: keys[k] for k in ("pid", "level", "refmode", "mode", "dft") if k in keys}
        old = self._rows(kind=kind, system=system, **ident)
        kvp = _clean_kvp({"kind": kind, "system": system, **keys})
        with self._guard(), self.db:
            if old:
                self.db.delete([r.id for r in old])
            return self.db.write(atoms, key_value_pairs=kvp, data=data or {})

    def put_many(
        self, items: list[tuple[Atoms, dict[str, Any], dict[str, Any]]], kind: str, system: str
    ) -> None:
        """Write several new rows ``(atoms, data, keys)`` in one transaction (all or none)."""
        with self._guard(), self.db:
            for atoms, data, keys in items:
                kvp = _clean_kvp({"kind": kind, "system": system, **keys})
                self.db.write(atoms, key_value_pairs=kvp, data=data or {})

    def count(self, kind: str, system: str, **keys: Any) -> int:
        with self._guard():
            return self.db.count(**_clean_kvp({"kind": kind, "system": system, **keys}))
