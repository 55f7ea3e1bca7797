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
mix results made with different settings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ase import Atoms

__all__ = ["ResultStore", "ResumeMismatchError"]


class ResumeMismatchError(ValueError):
    """The output folder holds results made with different settings."""


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
        self.db = connect(str(self.path), type="db")

    # -- settings ------------------------------------------------------------------------
    def check_settings(self, system: str, settings: dict[str, Any], group: str) -> None:
        """Record ``settings`` for (system, group), or check them against the recorded ones.

        Raises:
            ResumeMismatchError: listing every setting that differs.
        """
        meta = dict(self.db.metadata)
        key = f"{system}::{group}"
        old = meta.get(key)
        if old is None:
            meta[key] = settings
            self.db.metadata = meta
            return
        diffs = [
            f"{k}: was {old.get(k)!r}, now {settings.get(k)!r}"
            for k in sorted(set(old) | set(settings))
            if old.get(k) != settings.get(k)
        ]
        if diffs:
            raise ResumeMismatchError(
                f"{self.path} holds {group} results for {system} made with other settings ("
                + "; ".join(diffs)
                + "); use another --out folder or delete it to start again"
            )

    # -- rows ----------------------------------------------------------------------------
    def _rows(self, **keys: Any) -> list[Any]:
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
        with self.db:
            if old:
                self.db.delete([r.id for r in old])
            return self.db.write(atoms, key_value_pairs=kvp, data=data or {})

    def put_many(
        self, items: list[tuple[Atoms, dict[str, Any], dict[str, Any]]], kind: str, system: str
    ) -> None:
        """Write several new rows ``(atoms, data, keys)`` in one transaction (all or none)."""
        with self.db:
            for atoms, data, keys in items:
                kvp = _clean_kvp({"kind": kind, "system": system, **keys})
                self.db.write(atoms, key_value_pairs=kvp, data=data or {})

    def count(self, kind: str, system: str, **keys: Any) -> int:
        return self.db.count(**_clean_kvp({"kind": kind, "system": system, **keys}))
