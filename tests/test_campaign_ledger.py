"""The campaign ledger, content hashes, shards, merge and status (no executor involved)."""

from __future__ import annotations

import time

import pytest
from ase.build import bulk
from ase.constraints import FixAtoms

from eqv2calc.campaigns import ItemSpec, Ledger, LedgerError, SettingsMismatchError
from eqv2calc.campaigns.hashing import item_key, settings_fingerprint, shard_of, structure_hash
from eqv2calc.campaigns.ledger import ledger_name
from eqv2calc.campaigns.lock import CampaignLocked, LedgerLock
from eqv2calc.campaigns.report import campaign_status, format_status, merge_ledgers

SETTINGS = {"kind": "relax", "fmax": 0.05, "model": "emt"}


def _items(n: int, prefix: str = "s") -> list[ItemSpec]:
    fp = settings_fingerprint(SETTINGS)
    return [ItemSpec(key=item_key(f"{prefix}{i}", fp), label=f"{prefix}{i}") for i in range(n)]


def test_claim_complete_exactly_once(tmp_path):
    led = Ledger(tmp_path / "c.sqlite", "relax", SETTINGS)
    items = _items(3)
    assert led.add_items(items) == 3
    assert led.add_items(items) == 0  # known items are not added twice
    keys = [i.key for i in items]
    leases = led.claim(keys, "w1", 60)
    assert set(leases) == set(keys)
    assert led.claim(keys, "w2", 60) == {}  # leased items cannot be claimed again
    assert led.complete(keys[0], leases[keys[0]], {"e": 1.0}, {"host": "h"})
    assert not led.complete(keys[0], leases[keys[0]], {"e": 2.0})  # second completion ignored
    assert not led.complete(keys[1], "not-the-token", {"e": 3.0})
    assert led.fail(keys[2], leases[keys[2]], "boom")
    rows = {r["key"]: r for r in led.rows()}
    assert rows[keys[0]]["result"] == {"e": 1.0} and rows[keys[0]]["provenance"] == {"host": "h"}
    assert rows[keys[2]]["error"] == "boom"
    assert led.counts() == {"pending": 0, "running": 1, "done": 1, "failed": 1}
    assert led.claim([keys[0]], "w3", 60) == {}  # done is final


def test_expired_lease_is_taken_over_and_old_holder_rejected(tmp_path):
    led = Ledger(tmp_path / "c.sqlite", "relax", SETTINGS)
    (item,) = _items(1)
    led.add_items([item])
    old = led.claim([item.key], "w1", 0.01)[item.key]
    assert led.renew({item.key: old}, 0.01) == 1
    time.sleep(0.05)
    new = led.claim([item.key], "w2", 60)[item.key]
    assert led.renew({item.key: old}, 60) == 0  # the old holder lost it
    assert not led.complete(item.key, old, {"by": "w1"})
    assert led.complete(item.key, new, {"by": "w2"})
    (row,) = led.rows()
    assert row["result"] == {"by": "w2"} and row["attempts"] == 1 and row["worker"] == "w2"


def test_release_retries_then_fails(tmp_path):
    led = Ledger(tmp_path / "c.sqlite", "relax", SETTINGS, max_attempts=2)
    (item,) = _items(1)
    led.add_items([item])
    lease = led.claim([item.key], "w1", 60)
    assert led.release(lease, "worker died") == []
    assert led.counts()["pending"] == 1
    lease = led.claim([item.key], "w2", 60)
    assert led.release(lease, "worker died") == [item.key]
    (row,) = led.rows()
    assert row["state"] == "failed" and "worker died" in row["error"] and row["attempts"] == 2
    assert led.retry_failed() == 1 and led.counts()["pending"] == 1


def test_recover_puts_running_back(tmp_path):
    led = Ledger(tmp_path / "c.sqlite", "relax", SETTINGS)
    items = _items(2)
    led.add_items(items)
    led.claim([items[0].key], "w1", 3600)
    led.close()
    led = Ledger(tmp_path / "c.sqlite", "relax", SETTINGS)  # a new driver
    assert led.recover() == 1
    assert led.counts()["pending"] == 2


def test_other_settings_refused_with_the_difference(tmp_path):
    Ledger(tmp_path / "c.sqlite", "relax", SETTINGS).close()
    with pytest.raises(SettingsMismatchError, match=r"fmax: was 0\.05, now 0\.02"):
        Ledger(tmp_path / "c.sqlite", "relax", {**SETTINGS, "fmax": 0.02})
    with pytest.raises(SettingsMismatchError, match="relax campaign, not a eval"):
        Ledger(tmp_path / "c.sqlite", "eval", SETTINGS)
    Ledger(tmp_path / "c.sqlite", "relax", dict(reversed(list(SETTINGS.items())))).close()
    with pytest.raises(LedgerError, match="no campaign ledger"):
        Ledger(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not a database" * 100)
    with pytest.raises(LedgerError, match="junk.sqlite"):
        Ledger(tmp_path / "junk.sqlite", "relax", SETTINGS)


def test_structure_hash_sees_what_matters():
    a = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    assert structure_hash(a) == structure_hash(a.copy())
    b = a.copy()
    b.positions[1, 0] += 1e-9
    assert structure_hash(b) != structure_hash(a)
    c = a.copy()
    c.set_constraint(FixAtoms(indices=[0]))
    assert structure_hash(c) != structure_hash(a)
    d = a.copy()
    d.set_tags([0, 1])
    assert structure_hash(d) != structure_hash(a)
    assert item_key("x", "fp1") != item_key("x", "fp2")


def test_shards_partition_every_item_once():
    keys = [i.key for i in _items(200)]
    for n in (1, 2, 3, 7):
        parts = [{k for k in keys if shard_of(k, n) == i} for i in range(n)]
        assert sum(len(p) for p in parts) == len(keys)
        assert set().union(*parts) == set(keys)
        assert [shard_of(k, n) for k in keys] == [shard_of(k, n) for k in keys]
    sizes = [sum(1 for k in keys if shard_of(k, 2) == i) for i in range(2)]
    assert min(sizes) > 60  # a hash split, not everything in one shard
    with pytest.raises(ValueError):
        shard_of(keys[0], 0)
    assert ledger_name((1, 4)) == "campaign.shard-1-of-4.sqlite"


def test_merge_and_status(tmp_path):
    items = _items(6)
    for i in range(2):
        with Ledger(tmp_path / ledger_name((i, 3)), "relax", SETTINGS) as led:
            mine = [it for it in items if shard_of(it.key, 3) == i]
            led.add_items(mine)
            run = led.start_run("local", 1)
            leases = led.claim([it.key for it in mine], "w", 60)
            for j, (k, tok) in enumerate(leases.items()):
                if j == 0 and i == 1:
                    led.fail(k, tok, "bad structure")
                else:
                    led.complete(k, tok, {"k": k}, {"worker": f"w{i}", "wall_s": 1.0})
            led.finish_run(run, len(leases), 0)
    status = campaign_status([tmp_path])
    assert status["shards_missing"] == {"3": [2]}
    n_items = sum(1 for it in items if shard_of(it.key, 3) < 2)
    assert status["total"] == n_items
    assert status["counts"]["failed"] == 1 and status["failures"][0]["error"] == "bad structure"
    assert status["throughput"]["items_per_s"] is not None
    text = format_status(status)
    assert "bad structure" in text and "shards of 3 not found: 2" in text
    counts = merge_ledgers([tmp_path], tmp_path / "campaign.sqlite")
    assert counts["done"] + counts["failed"] == n_items and counts["failed"] == 1
    # merging again changes nothing; a ledger with other settings is refused
    assert merge_ledgers([tmp_path], tmp_path / "campaign.sqlite") == counts
    Ledger(tmp_path / "other" / "campaign.sqlite", "relax", {**SETTINGS, "fmax": 1}).close()
    with pytest.raises(LedgerError, match="other settings"):
        merge_ledgers([tmp_path / "other"], tmp_path / "campaign.sqlite")


def test_ledger_lock_refuses_a_second_holder(tmp_path):
    path = tmp_path / "campaign.shard-0-of-2.sqlite"
    with LedgerLock(path):
        with pytest.raises(CampaignLocked, match=r"another eqv2calc campaign driver.*pid"):
            LedgerLock(path).acquire()
    with LedgerLock(path):  # released on exit
        pass


def test_driver_stops_do_not_count_as_attempts(tmp_path):
    led = Ledger(tmp_path / "c.sqlite", "relax", SETTINGS, max_attempts=1)
    (item,) = _items(1)
    led.add_items([item])
    for _ in range(3):
        assert led.release(led.claim([item.key], "w", 60), "Ctrl-C", count=False) == []
        led.claim([item.key], "w", 60)
        assert led.recover() == 1  # a killed driver
    (row,) = led.rows()
    assert row["state"] == "pending" and row["attempts"] == 0


def _shard_ledgers(folder, settings_per_shard):
    """One finished shard ledger per settings dict (shard i of len(settings_per_shard))."""
    n = len(settings_per_shard)
    for i, settings in enumerate(settings_per_shard):
        fp = settings_fingerprint(settings)
        with Ledger(folder / ledger_name((i, n)), "relax", settings) as led:
            led.add_items([ItemSpec(key=item_key(f"s{i}", fp), label=f"s{i}")])
            for k, tok in led.claim([item_key(f"s{i}", fp)], "w", 60).items():
                led.complete(k, tok, {"k": k})


def test_status_of_inconsistent_ledgers_fails_naming_them(tmp_path):
    from click.testing import CliRunner

    from eqv2calc.cli import main

    _shard_ledgers(tmp_path, [SETTINGS, {**SETTINGS, "fmax": 0.02}])
    status = campaign_status([tmp_path])
    assert not status["same_settings"] and len(status["settings_groups"]) == 2
    res = CliRunner().invoke(main, ["campaign", "status", str(tmp_path)])
    assert res.exit_code == 1 and "different settings" in res.output
    assert "campaign.shard-0-of-2.sqlite" in res.output
    assert "campaign.shard-1-of-2.sqlite" in res.output
    assert "Traceback" not in res.output
    # consistent shards: exit 0
    good = tmp_path / "good"
    good.mkdir()
    _shard_ledgers(good, [SETTINGS, SETTINGS])
    res = CliRunner().invoke(main, ["campaign", "status", str(good)])
    assert res.exit_code == 0, res.output


def test_failed_merge_writes_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from eqv2calc.campaigns import report
    from eqv2calc.cli import main

    # shards with other settings: refused, and no campaign.sqlite left behind
    _shard_ledgers(tmp_path, [SETTINGS, {**SETTINGS, "fmax": 0.02}])
    res = CliRunner().invoke(main, ["campaign", "merge", str(tmp_path)])
    assert res.exit_code == 1 and "other settings" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "campaign.shard-0-of-2.sqlite",
        "campaign.shard-1-of-2.sqlite",
    ]

    # a merge that fails after writing leaves an existing destination as it was
    good = tmp_path / "good"
    good.mkdir()
    _shard_ledgers(good, [SETTINGS, SETTINGS])
    dest = good / "campaign.sqlite"
    with Ledger(good / ledger_name((0, 2))) as led:
        Ledger(dest, led.kind, led.settings).close()  # an empty merged ledger
    real = report._merge_into

    def merge_then_fail(*args, **kw):
        real(*args, **kw)
        raise LedgerError("disk full")

    monkeypatch.setattr(report, "_merge_into", merge_then_fail)
    with pytest.raises(LedgerError, match="disk full"):
        merge_ledgers([good], dest)
    with Ledger(dest) as led:
        assert led.counts()["done"] == 0
    assert sorted(p.name for p in good.iterdir() if "shard" not in p.name) == ["campaign.sqlite"]
    monkeypatch.setattr(report, "_merge_into", real)
    assert merge_ledgers([good], dest)["done"] == 2
