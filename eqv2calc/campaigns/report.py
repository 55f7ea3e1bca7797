"""Reading ledgers back: status, merging shard ledgers, exports and campaign summaries.

* :func:`find_ledgers` / :func:`campaign_status`: counts per state, failures with reasons and
  throughput of one or several ledgers (``eqv2calc campaign status``).
* :func:`merge_ledgers`: combine shard ledgers (same settings) into one
  (``eqv2calc campaign merge``).
* :func:`export_eval`: the evaluated structures with their energies (eV), forces (eV/Å) and
  stress (eV/Å³) as one extxyz file, in input order.
* :func:`write_adsorbml_summary`: the campaign table and plot of the best adsorption energy
  per slab x adsorbate system, with the reference (DFT) calls saved.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eqv2calc.campaigns.hashing import IDENTITY_SETTINGS
from eqv2calc.campaigns.ledger import (
    LEDGER_NAME,
    STATES,
    Ledger,
    LedgerError,
    settings_compatible,
    settings_diff,
)
from eqv2calc.plotting import pyplot

__all__ = [
    "campaign_status",
    "export_eval",
    "find_ledgers",
    "format_status",
    "check_merge_target",
    "merge_ledgers",
    "summary_name",
    "write_adsorbml_summary",
]

_RANK = {"done": 3, "failed": 2, "running": 1, "pending": 0}
_SHARD_RE = re.compile(r"campaign\.shard-(\d+)-of-(\d+)\.sqlite$")


def find_ledgers(paths: list[str | os.PathLike]) -> list[Path]:
    """Ledger files named by ``paths``: files as given, folders searched for
    ``campaign.sqlite`` and ``campaign.shard-I-of-N.sqlite``.

    Raises:
        LedgerError: A path holds no ledger.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise LedgerError(f"{p}: no such file or folder")
        here = sorted(p.glob("campaign.shard-*-of-*.sqlite"))
        if (p / LEDGER_NAME).is_file():
            here.insert(0, p / LEDGER_NAME)
        if not here:
            raise LedgerError(f"{p}: no campaign ledger (campaign*.sqlite) in this folder")
        found.extend(here)
    return found


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _add_to_group(
    groups: list[tuple[str, dict[str, Any], list[str]]],
    kind: str,
    settings: dict[str, Any],
    name: str,
) -> None:
    """Put ledger ``name`` into the group of ledgers whose settings it may be continued or
    merged with (:func:`~eqv2calc.campaigns.ledger.settings_compatible`), or a new group."""
    for i, (k, s, names) in enumerate(groups):
        if k == kind and settings_compatible(s, settings):
            names.append(name)
            groups[i] = (k, _fuller(s, settings), names)
            return
    groups.append((kind, settings, [name]))


def _fuller(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Compatible settings ``a`` with the identity settings (checkpoint hash) that only
    ``b`` records added."""
    return {**a, **{k: v for k, v in b.items() if k in IDENTITY_SETTINGS and k not in a}}


def _aliases(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """``(legacy key, label) -> key`` for the rows that record their legacy key: a row of an
    older eqv2calc under that legacy key and label is the same item (see
    :class:`~eqv2calc.campaigns.ledger.ItemSpec`)."""
    return {
        (r["legacy_key"], r["label"]): r["key"]
        for r in rows
        if r.get("legacy_key") and r["legacy_key"] != r["key"]
    }


def _item_key(row: dict[str, Any], aliases: dict[tuple[str, str], str]) -> str:
    """The key ``row``'s item has now: its own, or for a row of an older eqv2calc (legacy
    key and label) the key of the same item in ``aliases``."""
    return aliases.get((row["key"], row["label"]), row["key"])


def _prefer(row: dict[str, Any], old: dict[str, Any]) -> bool:
    """True when ``row`` should replace ``old``, a row of the same item: the more advanced
    state wins (done > failed > running > pending); between a legacy-keyed row and a row of
    the same item under its current key that are both done, the newer result."""
    a, b = _RANK[row["state"]], _RANK[old["state"]]
    if a != b:
        return a > b
    return (
        row["state"] == "done"
        and row["key"] != old["key"]
        and (row["finished"] or 0.0) > (old["finished"] or 0.0)
    )


def campaign_status(paths: list[str | os.PathLike]) -> dict[str, Any]:
    """Status of the campaign(s) in ``paths`` (folders or ledger files).

    Returns:
        ``ledgers`` (files read), ``kind``, ``settings``, ``counts`` per state,
        ``failures`` (label, source, error), ``throughput`` (items finished per second of
        driver wall time, mean seconds per item on a worker), ``workers`` seen, ``shards``
        found and missing, ``same_settings`` and ``settings_groups`` (the ledger files per
        distinct kind and settings fingerprint; more than one group is an inconsistent folder).
    """
    files = find_ledgers(paths)
    intervals: list[tuple[float, float]] = []
    kinds, settings = set(), None
    groups: list[tuple[str, dict[str, Any], list[str]]] = []  # (kind, settings, files)
    shards: dict[int, set[int]] = {}
    items: dict[str, dict[str, Any]] = {}  # an item in several ledgers (merged) counts once
    runs: list[dict[str, Any]] = []
    all_rows: list[dict[str, Any]] = []
    for f in files:
        m = _SHARD_RE.search(f.name)
        if m:
            shards.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
        with Ledger(f) as led:
            kinds.add(led.kind)
            settings = settings or led.settings
            _add_to_group(groups, led.kind, led.settings, str(f))
            all_rows.extend(led.rows())
            runs.extend(led.runs())
    aliases = _aliases(all_rows)
    for row in all_rows:
        key = _item_key(row, aliases)
        old = items.get(key)
        if old is None or _prefer(row, old):
            items[key] = row
    counts = dict.fromkeys(STATES, 0)
    failures: list[dict[str, Any]] = []
    item_walls: list[float] = []
    workers: set[str] = set()
    for row in items.values():
        counts[row["state"]] += 1
        if row["state"] == "failed":
            failures.append({"label": row["label"], "source": row["source"], "error": row["error"]})
        prov = row["provenance"] or {}
        if prov.get("worker"):
            workers.add(str(prov["worker"]))
        if isinstance(prov.get("wall_s"), (int, float)):
            item_walls.append(float(prov["wall_s"]))
    finished = counts["done"] + counts["failed"]
    # A killed driver never recorded its end: its last finished item stands in for it.
    ends = sorted(r["finished"] for r in items.values() if r["finished"] is not None)
    starts = sorted(r["started"] for r in runs)
    for run in runs:
        end = run["finished"]
        if end is None:
            later = [t for t in starts if t > run["started"]]
            limit = later[0] if later else math.inf
            inside = [t for t in ends if run["started"] <= t < limit]
            end = inside[-1] if inside else None
        if end is not None:
            intervals.append((run["started"], end))
    busy = _union_seconds(intervals)
    missing = {n: sorted(set(range(n)) - got) for n, got in shards.items()}
    return {
        "ledgers": [str(f) for f in files],
        "kind": "/".join(sorted(kinds)),
        "settings": settings,
        "same_settings": len(groups) == 1,
        "settings_groups": [g[2] for g in groups],
        "counts": counts,
        "total": sum(counts.values()),
        "failures": failures,
        "throughput": {
            "finished_items": finished,
            "driver_wall_s": round(busy, 3),
            "items_per_s": round(finished / busy, 4) if busy > 0 else None,
            "mean_item_wall_s": round(sum(item_walls) / len(item_walls), 4) if item_walls else None,
        },
        "workers": sorted(workers),
        "shards_missing": {str(n): v for n, v in missing.items() if v},
    }


def format_status(status: dict[str, Any], max_failures: int = 20) -> str:
    """``campaign_status`` as a few lines of text."""
    c = status["counts"]
    t = status["throughput"]
    lines = [
        f"{status['kind']} campaign, {status['total']} items in {len(status['ledgers'])} "
        f"ledger(s): " + ", ".join(f"{c[s]} {s}" for s in STATES),
    ]
    if not status["same_settings"]:
        groups = " | ".join(", ".join(g) for g in status["settings_groups"])
        lines.append(f"error: these ledgers hold campaigns with different settings: {groups}")
    rate = f"{t['items_per_s']:.3g} items/s" if t["items_per_s"] else "- items/s"
    mean = f"{t['mean_item_wall_s']:.3g} s" if t["mean_item_wall_s"] is not None else "-"
    lines.append(
        f"throughput: {t['finished_items']} finished in {t['driver_wall_s']:.1f} s of driver "
        f"time ({rate}); mean {mean} per item on a worker; {len(status['workers'])} worker(s)"
    )
    for n, missing in status["shards_missing"].items():
        lines.append(f"shards of {n} not found: {', '.join(map(str, missing))}")
    for f in status["failures"][:max_failures]:
        lines.append(f"failed: {f['label']} ({f['source']}): {f['error']}")
    if len(status["failures"]) > max_failures:
        lines.append(f"... and {len(status['failures']) - max_failures} more failures")
    return "\n".join(lines)


def merge_ledgers(sources: list[str | os.PathLike], dest: str | os.PathLike) -> dict[str, int]:
    """Merge ledgers with the same settings into ``dest`` (created or extended).

    Per item the most advanced state wins (done > failed > pending); running items become
    pending (no lease survives a merge). Driver runs are copied for the throughput figures.
    ``dest`` is never one of the ledgers it reads: it must be a new file, or an existing
    merged (or unsharded) ledger of the same campaign, which is extended (its items kept).
    It is written under the lock of its folder, so not while a campaign driver runs there.

    Returns:
        Items per state in ``dest`` afterwards.

    Raises:
        LedgerError: No source; ``dest`` a shard ledger, a source given by name, or a file
            that is no campaign ledger; sources/destination with different settings; a
            campaign driver running in the folder of ``dest``.
    """
    given = Path(dest)
    dest = given.resolve()
    check_merge_target(sources, given)
    files = [f for f in find_ledgers(sources) if f.resolve() != dest]
    if not files:
        raise LedgerError("nothing to merge: no ledger besides the destination")
    with Ledger(files[0]) as first:
        kind, settings = first.kind, first.settings
    for f in files[1:] + ([dest] if dest.is_file() else []):
        with Ledger(f) as src:
            if src.kind != kind:
                raise LedgerError(
                    f"{f} holds a {src.kind} campaign, {files[0]} a {kind} campaign; "
                    "only shards of one campaign can be merged"
                )
            if not settings_compatible(settings, src.settings):
                raise LedgerError(
                    f"{f} holds a campaign with other settings than {files[0]} "
                    f"({settings_diff(settings, src.settings)}); only shards of one campaign "
                    "can be merged"
                )
            settings = _fuller(settings, src.settings)
    # Merge into a temporary copy, renamed over ``dest`` on success only: a failed merge
    # leaves ``dest`` as it was (or absent), never half-written.
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(dest.parent):
        tmp = dest.with_name(f".{dest.name}.merge-{os.getpid()}.tmp")
        _remove_db(tmp)
        try:
            if dest.is_file():
                copy = sqlite3.connect(str(tmp))
                try:
                    with Ledger(dest) as old:
                        old._db.backup(copy)
                finally:
                    copy.close()
            counts = _merge_into(tmp, files, kind, settings)
            _remove_db(dest, keep_main=True)
            os.replace(tmp, dest)
        except BaseException:
            _remove_db(tmp)
            raise
    return counts


_SQLITE_HEADER = b"SQLite format 3\x00"


def check_merge_target(sources: list[str | os.PathLike], dest: str | os.PathLike) -> None:
    """Refuse a merge destination that would overwrite something else (see
    :func:`merge_ledgers`); nothing is written.

    Raises:
        LedgerError: Naming ``dest`` and why it is refused.
    """
    dest = Path(dest)
    real = dest.resolve()
    advice = (
        "a merge never writes into a ledger it reads; name a new file, or leave --into out "
        f"to merge into {LEDGER_NAME} in the first folder"
    )
    if _SHARD_RE.search(dest.name):
        raise LedgerError(f"--into {dest}: that is the name of a shard's ledger; {advice}")
    for p in map(Path, sources):
        if p.is_file() and p.resolve() == real and dest.name != LEDGER_NAME:
            raise LedgerError(f"--into {dest} is one of the ledgers being merged; {advice}")
    if real.is_dir():
        raise LedgerError(f"--into {dest} is a folder; name the merged ledger file")
    if real.exists():
        with open(real, "rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
        problem = None
        if head != _SQLITE_HEADER:
            problem = "is not a campaign ledger"
        elif not _has_campaign_meta(real):
            problem = "is an SQLite database but not a campaign ledger"
        if problem:
            raise LedgerError(
                f"--into {dest} exists and {problem}; it is left as it is: name a new file "
                "(or an earlier merged ledger of this campaign, which is extended)"
            )


def _has_campaign_meta(path: Path) -> bool:
    """True when the SQLite file ``path`` holds campaign settings (read without writing:
    opening it as a :class:`Ledger` would add the ledger tables to any database)."""
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return row is not None


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """The output-folder lock of :func:`eqv2calc.io.lock_directory` (as LedgerError)."""
    from eqv2calc.io import OutputDirLocked, lock_directory

    try:
        ctx = lock_directory(folder, "campaign merge")
        ctx.__enter__()
    except OutputDirLocked as err:
        raise LedgerError(f"{err}; merge when it has finished") from None
    try:
        yield
    finally:
        ctx.__exit__(None, None, None)


def _remove_db(path: Path, keep_main: bool = False) -> None:
    """Delete an SQLite file with its ``-wal``/``-shm`` companions (the main file kept when
    ``keep_main``: it is about to be replaced, and a stale WAL must not apply to the new one)."""
    for p in ([] if keep_main else [path]) + [Path(f"{path}-wal"), Path(f"{path}-shm")]:
        p.unlink(missing_ok=True)


def _merge_into(
    target: Path, files: list[Path], kind: str, settings: dict[str, Any]
) -> dict[str, int]:
    """Merge the ledgers ``files`` (already checked to share ``settings``) into ``target``.

    A row that an older eqv2calc recorded under the item's legacy key (in ``target``, merged
    by it, or in a source) and a row of the same item under its current key are one item:
    only the current key is written (:func:`_item_key`, :func:`_prefer`)."""
    with Ledger(target, kind, settings) as out:
        sources = []
        for f in files:
            with Ledger(f) as src:
                sources.append((src.rows(), src.runs()))
        existing = out.rows()
        aliases = _aliases(existing + [r for rows, _ in sources for r in rows])
        have: dict[str, dict[str, Any]] = {}  # item key -> the row target holds for it
        with out.transaction() as db:
            for r in existing:
                key = _item_key(r, aliases)
                if key == r["key"]:
                    if key not in have or _prefer(r, have[key]):
                        have[key] = r
            for r in existing:  # legacy rows of target: renamed, or dropped for a better row
                key = _item_key(r, aliases)
                if key == r["key"]:
                    continue
                db.execute("DELETE FROM items WHERE key = ?", (r["key"],))
                if key not in have or _prefer(r, have[key]):
                    _write_item(db, key, r, r["state"], r["seq"])
                    have[key] = r
            for rows, runs in sources:
                for r in rows:
                    state = "pending" if r["state"] == "running" else r["state"]
                    key = _item_key(r, aliases)
                    if key in have and not _prefer({**r, "state": state}, have[key]):
                        continue
                    _write_item(db, key, r, state, None)
                    have[key] = {**r, "state": state}
                for run in runs:
                    db.execute(
                        "INSERT INTO runs (started, finished, host, pid, executor, workers, done, "
                        "failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            run["started"],
                            run["finished"],
                            run["host"],
                            run["pid"],
                            run["executor"],
                            run["workers"],
                            run["done"],
                            run["failed"],
                        ),
                    )
            # keep the legacy keys, so that a later merge with an older ledger still matches
            db.executemany(
                "INSERT OR REPLACE INTO legacy_keys (key, legacy_key) VALUES (?, ?)",
                [(key, legacy) for (legacy, _), key in aliases.items()],
            )
        return out.counts()


def _write_item(
    db: sqlite3.Connection, key: str, r: dict[str, Any], state: str, seq: int | None
) -> None:
    """Write row ``r`` as item ``key`` with ``state`` (its place: the one ``key`` has, else
    ``seq``, else after the last item)."""
    db.execute(
        "INSERT OR REPLACE INTO items (key, seq, label, source, input, state, worker, "
        "attempts, result, error, provenance, created, started, finished) VALUES (?, "
        "COALESCE((SELECT seq FROM items WHERE key = ?), ?, "
        "(SELECT COALESCE(MAX(seq), -1) + 1 FROM items)), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key,
            key,
            seq,
            r["label"],
            r["source"],
            r["input"],
            state,
            r["worker"],
            r["attempts"],
            _json(r["result"]),
            r["error"],
            _json(r["provenance"]),
            r["created"],
            r["started"],
            r["finished"],
        ),
    )


def _json(value: Any) -> str | None:
    import json

    return json.dumps(value) if value is not None else None


def export_eval(ledger: Ledger, output: str | os.PathLike) -> int:
    """Write every evaluated structure of an eval campaign to one extxyz file (input order).

    Each frame carries energy (eV), forces (eV/Å) and stress (eV/Å³, when computed) and
    ``info`` ``label`` and ``source``. Returns the number of frames written.
    """
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from eqv2calc.campaigns.tasks import text_to_atoms
    from eqv2calc.io import write_structure

    frames = []
    for row in ledger.rows("done"):
        res = row["result"] or {}
        if not row["input"] or res.get("energy_eV") is None:
            continue
        atoms = text_to_atoms(row["input"])
        atoms.calc = None
        results: dict[str, Any] = {"energy": res["energy_eV"]}
        if res.get("forces_eV_per_A") is not None:
            results["forces"] = np.asarray(res["forces_eV_per_A"], dtype=float)
        if res.get("stress_eV_per_A3") is not None:
            results["stress"] = np.asarray(res["stress_eV_per_A3"], dtype=float)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(label=row["label"], source=row["source"])
        frames.append(atoms)
    write_structure(output, frames, format="extxyz")
    return len(frames)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def adsorbml_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """One summary row per system of an AdsorbML campaign (done and failed)."""
    rows = []
    for r in ledger.rows():
        res = r["result"] or {}
        ml = res.get("ml") or {}
        best_ml = ml.get("best") or {}
        ref = res.get("reference") or {}
        best_ref = ref.get("best") or {}
        exhaustive = _num(ref.get("exhaustive_calls_estimate"))
        used = ref.get("adslab_calls")
        rows.append(
            {
                "system": r["label"],
                "slab": res.get("system"),
                "adsorbate": res.get("adsorbate"),
                "state": r["state"],
                "error": r["error"],
                "placements": (res.get("placements") or {}).get("total"),
                "unique_valid": ml.get("unique_valid"),
                "best_e_ads_ml_eV": _num(best_ml.get("e_ads_ml_eV")),
                "best_e_ads_ref_eV": _num(best_ref.get("e_ads_eV")),
                "reference_calls": used,
                "exhaustive_calls_estimate": exhaustive,
                "reference_calls_saved": (exhaustive - used)
                if (exhaustive is not None and used is not None)
                else None,
                "output_dir": res.get("output_dir"),
            }
        )
    return rows


def _cell(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def summary_name(ledger_path: str | os.PathLike) -> str:
    """The stem of the AdsorbML summary files of a ledger: ``campaign_summary`` for
    ``campaign.sqlite``, ``campaign_summary.shard-I-of-N`` for a shard's ledger (it covers
    that shard only), ``<stem>_summary`` for a merged ledger of another name."""
    name = Path(ledger_path).name
    if name == LEDGER_NAME:
        return "campaign_summary"
    m = _SHARD_RE.search(name)
    if m:
        return f"campaign_summary.shard-{m.group(1)}-of-{m.group(2)}"
    return f"{Path(name).stem}_summary"


def write_adsorbml_summary(
    ledger: Ledger, out_dir: str | os.PathLike, name: str | None = None
) -> dict[str, Path]:
    """The AdsorbML campaign summary of every system in ``ledger``: ``<name>.json``,
    ``<name>.txt`` (table) and ``<name>.png`` (best adsorption energy per system, eV), with
    ``name`` from :func:`summary_name` by default. A shard's summary says, in the JSON
    (``partial``) and on the table's first line, that it covers that shard only.

    The best energy is the reference's (DFT) when the top-k were computed, else the ML one.
    """
    import json

    from eqv2calc.io import atomic_write_text, write_json_atomic

    out = Path(out_dir)
    rows = adsorbml_rows(ledger)
    saved = [r["reference_calls_saved"] for r in rows if r["reference_calls_saved"] is not None]
    used = [r["reference_calls"] for r in rows if r["reference_calls"] is not None]
    totals = {
        "systems": len(rows),
        "done": sum(1 for r in rows if r["state"] == "done"),
        "failed": sum(1 for r in rows if r["state"] == "failed"),
        "reference_calls": sum(used) if used else None,
        "reference_calls_saved": round(sum(saved), 1) if saved else None,
    }
    name = name or summary_name(ledger.path)
    m = _SHARD_RE.search(ledger.path.name)
    partial = (
        f"shard {m.group(1)} of {m.group(2)} only ({ledger.path.name}); `eqv2calc campaign "
        "merge` on the output folder writes the summary of every system"
        if m
        else None
    )
    paths = {"json": out / f"{name}.json", "table": out / f"{name}.txt"}
    data: dict[str, Any] = {"settings": ledger.settings, "totals": totals, "systems": rows}
    if partial:
        data = {"partial": partial, **data}
    write_json_atomic(paths["json"], data)
    header = (
        f"{'system':<32} {'state':<7} {'placements':>10} {'E_ads ML':>9} {'E_ads ref':>9} "
        f"{'ref calls':>9} {'saved':>8}"
    )
    lines = ([f"partial summary: {partial}"] if partial else []) + [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['system'][:32]:<32} {r['state']:<7} {_cell(r['placements'], '10d'):>10} "
            f"{_cell(r['best_e_ads_ml_eV'], '9.3f'):>9} {_cell(r['best_e_ads_ref_eV'], '9.3f'):>9} "
            f"{_cell(r['reference_calls'], '9d'):>9} {_cell(r['reference_calls_saved'], '8.0f'):>8}"
        )
        if r["error"]:
            lines.append(f"    error: {r['error']}")
    lines.append(f"totals: {json.dumps(totals)}")
    atomic_write_text(paths["table"], "\n".join(lines) + "\n")
    plotted = [
        (r["system"], r["best_e_ads_ref_eV"], r["best_e_ads_ml_eV"], r["reference_calls_saved"])
        for r in rows
        if r["best_e_ads_ml_eV"] is not None or r["best_e_ads_ref_eV"] is not None
    ]
    if plotted:
        plt = pyplot("the campaign summary plot")
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(plotted) + 2), 3.5))
        xs = range(len(plotted))
        ml = [p[2] if p[2] is not None else math.nan for p in plotted]
        ref = [p[1] if p[1] is not None else math.nan for p in plotted]
        ax.bar([x - 0.2 for x in xs], ml, width=0.4, label="best ML")
        if any(math.isfinite(v) for v in ref):
            ax.bar([x + 0.2 for x in xs], ref, width=0.4, label="best reference")
        ax.set_xticks(list(xs), [p[0] for p in plotted], rotation=60, ha="right", fontsize=7)
        for x, p in zip(xs, plotted):  # reference calls saved against relaxing every placement
            ends = [v for v in (p[1], p[2]) if v is not None]
            end = min(ends) if min(ends) < 0 else max(ends)
            if p[3] is not None:
                ax.annotate(
                    f"{p[3]:.0f} saved",
                    (x, end),
                    xytext=(0, -3 if end < 0 else 3),
                    textcoords="offset points",
                    ha="center",
                    va="top" if end < 0 else "bottom",
                    fontsize=6,
                )
        ax.margins(y=0.15)
        ax.set_ylabel("best adsorption energy (eV)")
        title = "best adsorption energy per system; reference calls saved"
        if m:
            title += f" (shard {m.group(1)} of {m.group(2)} only)"
        ax.set_title(title, fontsize=8)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths["plot"] = out / f"{name}.png"
        tmp = out / f".{name}.png.tmp"
        fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        os.replace(tmp, paths["plot"])
    return paths
