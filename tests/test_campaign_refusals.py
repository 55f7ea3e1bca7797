"""Campaigns: identical inputs under two names, shard summaries and their merge, settings
mismatches naming only what differs, merge destinations that would overwrite a ledger, and
the model checkpoint's SHA-256 in the ledger (EMT and the bundled checkpoints, local
executor)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from ase.build import bulk, fcc100
from ase.io import read, write
from click.testing import CliRunner

from eqv2calc.campaigns import EvalTask, Ledger, RelaxTask, SettingsMismatchError
from eqv2calc.campaigns.hashing import item_fingerprint, item_key, structure_hash
from eqv2calc.campaigns.report import merge_ledgers
from eqv2calc.campaigns.worker import CalculatorSpec
from eqv2calc.cli import main
from eqv2calc.io import load_structures

RELAX = ["--model", "emt", "--fmax", "0.05", "--no-progress"]
MODELS = Path(__file__).resolve().parents[1] / "eqv2calc" / "registry" / "models"


def _cu(seed: int):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.08, seed=seed)
    return atoms


def _slab(vacuum: float = 7.0):
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=vacuum)
    slab.info.pop("adsorbate_info", None)
    return slab


def _rows(path: Path) -> dict[str, dict]:
    with Ledger(path) as led:
        return {r["label"]: r for r in led.rows()}


def _adsorbml(slabs: Path, out: Path, *extra: str) -> list[str]:
    return [
        "adsorbml",
        "--slab",
        str(slabs),
        "--model",
        "emt",
        "--num-random",
        "0",
        "--fmax",
        "0.1",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _no_traceback(res) -> None:
    assert "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)


# -- 1. identical inputs under two names -----------------------------------------------------


def test_identical_slabs_are_two_systems_each_in_its_own_folder(tmp_path):
    slabs = tmp_path / "slabs"
    slabs.mkdir()
    write(slabs / "a.extxyz", _slab())
    write(slabs / "b.extxyz", _slab())  # the same structure under another name
    out = tmp_path / "ads"
    runner = CliRunner()
    res = runner.invoke(main, _adsorbml(slabs, out, "--adsorbate", "O", "--executor", "local"))
    assert res.exit_code == 0, res.output
    assert "= 2 systems" in res.output and "2 done and 0 failed" in res.output
    rows = _rows(out / "campaign.sqlite")
    assert set(rows) == {"a__O", "b__O"}
    assert all(r["state"] == "done" for r in rows.values())
    for slab in ("a", "b"):
        label = f"{slab}__O"
        # the ledger, the output folder and the per-system result name the same slab
        assert Path(rows[label]["result"]["output_dir"]) == (out / label).resolve()
        assert rows[label]["result"]["system"] == slab
        per_system = json.loads((out / label / "summary.json").read_text())
        assert per_system["systems"][0]["system"] == slab
    summary = json.loads((out / "campaign_summary.json").read_text())
    assert sorted(s["system"] for s in summary["systems"]) == ["a__O", "b__O"]
    assert summary["totals"]["done"] == 2
    res = runner.invoke(main, _adsorbml(slabs, out, "--adsorbate", "O", "--executor", "local"))
    assert res.exit_code == 0 and "2 already finished" in res.output


def test_identical_structures_relax_like_the_plain_command(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "a.extxyz", _cu(0))
    write(inputs / "b.extxyz", _cu(0))
    write(inputs / "c.extxyz", _cu(1))
    runner = CliRunner()
    plain, camp = tmp_path / "plain", tmp_path / "camp"
    res = runner.invoke(main, ["relax", str(inputs), *RELAX, "--output-dir", str(plain)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main, ["relax", str(inputs), *RELAX, "--executor", "local", "--output-dir", str(camp)]
    )
    assert res.exit_code == 0, res.output
    assert "3 done" in res.output
    relaxed = sorted(p.name for p in plain.glob("*_relaxed.extxyz"))
    assert relaxed == ["a_relaxed.extxyz", "b_relaxed.extxyz", "c_relaxed.extxyz"]
    assert sorted(p.name for p in camp.glob("*_relaxed.extxyz")) == relaxed
    rows = _rows(camp / "campaign.sqlite")
    assert set(rows) == {"a", "b", "c"}
    for label in ("a", "b"):
        assert rows[label]["result"]["output"] == str((camp / f"{label}_relaxed.extxyz").resolve())
        e = read(camp / f"{label}_relaxed.extxyz").get_potential_energy()
        assert abs(e - read(plain / f"{label}_relaxed.extxyz").get_potential_energy()) < 1e-9
    summary = json.loads((camp / "relax_summary.json").read_text())
    assert set(summary["structures"]) == {"a", "b", "c"}

    # eval: one frame per input, as outside campaigns
    res = runner.invoke(
        main,
        [
            "eval",
            str(inputs),
            "--model",
            "emt",
            "--executor",
            "local",
            "-o",
            str(tmp_path / "e.extxyz"),
        ],
    )
    assert res.exit_code == 0, res.output
    frames = read(tmp_path / "e.extxyz", ":")
    assert [f.info["label"] for f in frames] == ["a", "b", "c"]


def test_a_ledger_of_the_older_key_scheme_continues(tmp_path):
    """Items recorded under the old keys (input hash and settings only) are taken over
    by label, except for a structure two inputs share (the old version ran it once under
    one of the names, so its row cannot be told apart)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "a.extxyz", _cu(0))
    write(inputs / "b.extxyz", _cu(0))
    write(inputs / "c.extxyz", _cu(1))
    runner = CliRunner()
    out = tmp_path / "camp"
    args = ["relax", str(inputs), *RELAX, "--executor", "local", "--output-dir", str(out)]
    assert runner.invoke(main, args).exit_code == 0
    # rewrite the ledger as the older eqv2calc keyed it: input hash and settings alone
    with Ledger(out / "campaign.sqlite") as led:
        fp = item_fingerprint(led.settings)
    entries, _ = load_structures([str(inputs)])
    legacy = {e.label: item_key(structure_hash(e.atoms), fp) for e in entries}
    db = sqlite3.connect(out / "campaign.sqlite")
    db.execute("DELETE FROM items WHERE label = 'b'")  # run once, under a's name
    for label in ("a", "c"):
        db.execute("UPDATE items SET key = ? WHERE label = ?", (legacy[label], label))
    db.commit()
    db.close()
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    # c continues; a and b share a structure: both run under their own keys
    assert "2 done and 0 failed in this run" in res.output and "1 already finished" in res.output
    with Ledger(out / "campaign.sqlite") as led:
        rows = led.rows()
    assert [r["label"] for r in rows if r["key"] == legacy["a"]] == ["a"]  # stale, left as is
    assert legacy["c"] not in {r["key"] for r in rows}  # c's row was taken over...
    assert [r["state"] for r in rows if r["label"] == "c"] == ["done"]  # ... not run again
    assert sorted(r["label"] for r in rows if r["key"] != legacy["a"]) == ["a", "b", "c"]


def test_two_inputs_with_one_name_are_refused():
    entries = [
        type("E", (), {"atoms": _cu(0), "label": "x", "source": "d1/x.xyz", "index": None}),
        type("E", (), {"atoms": _cu(1), "label": "x", "source": "d2/x.xyz", "index": None}),
    ]
    task = EvalTask(model="emt")
    with pytest.raises(ValueError, match="both named 'x'"):
        task.items(entries, item_fingerprint(task.settings()))


# -- 2. shard summaries and the merged summary; 3. settings mismatch ------------------------


def test_shard_summaries_are_partial_and_merge_writes_the_whole_summary(tmp_path):
    slabs = tmp_path / "slabs"
    slabs.mkdir()
    write(slabs / "a.extxyz", _slab(7.0))
    write(slabs / "b.extxyz", _slab(7.5))
    out = tmp_path / "sh"
    runner = CliRunner()
    args = _adsorbml(slabs, out, "--adsorbate", "O", "--adsorbate", "H")
    shard_labels = []
    for i in range(2):
        res = runner.invoke(main, [*args, "--shard", f"{i}/2"])
        assert res.exit_code == 0, res.output
        assert f"shard {i} of 2 only" in res.output
        labels = set(_rows(out / f"campaign.shard-{i}-of-2.sqlite"))
        shard_labels.append(labels)
        summary = json.loads((out / f"campaign_summary.shard-{i}-of-2.json").read_text())
        assert "shard" in summary["partial"]
        assert {s["system"] for s in summary["systems"]} == labels
        table = (out / f"campaign_summary.shard-{i}-of-2.txt").read_text()
        assert table.startswith("partial summary: shard")
    assert shard_labels[0] and shard_labels[1]  # the inputs split over both shards
    assert shard_labels[0] | shard_labels[1] == {"a__O", "b__O", "a__H", "b__H"}
    assert not (out / "campaign_summary.json").exists()  # no shard claims to be the whole

    # 3. another seed on the same folder: only the setting that differs is named
    res = runner.invoke(main, [*args, "--shard", "0/2", "--seed", "1"])
    assert res.exit_code == 1
    _no_traceback(res)
    assert "seed: was 0, now 1" in res.output
    assert "config" not in res.output and "num_random" not in res.output

    res = runner.invoke(main, ["campaign", "merge", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "campaign_summary.json").read_text())
    assert "partial" not in summary
    assert {s["system"] for s in summary["systems"]} == shard_labels[0] | shard_labels[1]
    assert summary["totals"] == {**summary["totals"], "systems": 4, "done": 4}
    assert "partial" not in (out / "campaign_summary.txt").read_text()
    assert (out / "campaign_summary.png").is_file()


def test_settings_mismatch_lists_only_the_differing_keys(tmp_path):
    from eqv2calc.adsorbml.pipeline import AdsorbMLConfig
    from eqv2calc.campaigns import AdsorbMLTask

    def settings(**kw):
        return AdsorbMLTask(out_dir=".", model="emt", config=AdsorbMLConfig(**kw)).settings()

    Ledger(tmp_path / "c.sqlite", "adsorbml", settings(seed=0)).close()
    with pytest.raises(SettingsMismatchError) as err:
        Ledger(tmp_path / "c.sqlite", "adsorbml", settings(seed=5))
    text = str(err.value)
    assert "(seed: was 0, now 5)" in text
    assert "{" not in text  # no settings dict printed


# -- 4. merge destinations --------------------------------------------------------------------


def _relax_shards(tmp_path: Path) -> Path:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        write(inputs / f"s{i}.extxyz", _cu(i))
    out = tmp_path / "out"
    runner = CliRunner()
    for i in range(2):
        res = runner.invoke(
            main, ["relax", str(inputs), *RELAX, "--shard", f"{i}/2", "--output-dir", str(out)]
        )
        assert res.exit_code == 0, res.output
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_merge_never_writes_into_a_ledger_it_reads(tmp_path):
    out = _relax_shards(tmp_path)
    shard0 = out / "campaign.shard-0-of-2.sqlite"
    shard1 = out / "campaign.shard-1-of-2.sqlite"
    before = {f: (_digest(f), set(_rows(f))) for f in (shard0, shard1)}
    runner = CliRunner()
    for into in (shard0, shard1, out / "campaign.shard-5-of-9.sqlite"):
        res = runner.invoke(main, ["campaign", "merge", str(out), "--into", str(into)])
        assert res.exit_code == 1, res.output
        _no_traceback(res)
        assert "shard's ledger" in res.output and str(into) in res.output
    assert not (out / "campaign.shard-5-of-9.sqlite").exists()
    # a source given by its file name, whatever it is called
    mine = tmp_path / "mine.sqlite"
    shutil.copy(shard0, mine)
    res = runner.invoke(main, ["campaign", "merge", str(mine), str(shard1), "--into", str(mine)])
    assert res.exit_code == 1 and "one of the ledgers being merged" in res.output
    # an existing file that is no campaign ledger
    notes = out / "notes.txt"
    notes.write_text("my notes\n")
    other = out / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    other_digest = _digest(other)
    for into, why in ((notes, "not a campaign ledger"), (other, "not a campaign ledger")):
        res = runner.invoke(main, ["campaign", "merge", str(out), "--into", str(into)])
        assert res.exit_code == 1, res.output
        _no_traceback(res)
        assert why in res.output and str(into) in res.output
    assert notes.read_text() == "my notes\n" and _digest(other) == other_digest
    for f, (digest, labels) in before.items():  # the shards are untouched
        assert _digest(f) == digest and set(_rows(f)) == labels
    with pytest.raises(Exception, match="shard's ledger"):
        merge_ledgers([out], shard0)

    # the default destination, created and then extended
    for _ in range(2):
        res = runner.invoke(main, ["campaign", "merge", str(out)])
        assert res.exit_code == 0, res.output
        assert set(_rows(out / "campaign.sqlite")) == {f"s{i}" for i in range(4)}
    res = runner.invoke(main, ["campaign", "merge", str(out), "--into", str(tmp_path / "m.sqlite")])
    assert res.exit_code == 0, res.output
    assert len(_rows(tmp_path / "m.sqlite")) == 4


# -- 5. the model checkpoint's SHA-256 --------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_sha256_enters_the_settings(tmp_path):
    ckpt = tmp_path / "m.pt"
    shutil.copy(MODELS / "eqv2calc-demo-emt.pt", ckpt)
    assert CalculatorSpec(model=str(ckpt)).checkpoint_sha256() == _sha(ckpt)
    bundled = _sha(MODELS / "eqv2calc-emt-conservative.pt")  # the bundled default
    assert CalculatorSpec(model=None).checkpoint_sha256() == bundled
    assert CalculatorSpec(model="emt").checkpoint_sha256() is None
    assert CalculatorSpec(factory="x:y").checkpoint_sha256() is None
    relax = RelaxTask(out_dir=".", model="m.pt", model_sha256="ab")
    assert relax.settings()["model_sha256"] == "ab"
    assert "model_sha256" not in RelaxTask(out_dir=".", model="emt").settings()
    assert EvalTask(model="m.pt", model_sha256="ab").settings()["model_sha256"] == "ab"
    # the hash is compared by the ledger, not part of item keys
    assert item_fingerprint(relax.settings()) == item_fingerprint(
        RelaxTask(out_dir=".", model="m.pt").settings()
    )


def test_a_checkpoint_the_driver_cannot_see_is_not_hashed(tmp_path, monkeypatch):
    """A path that exists only on the workers, or a registry model not in the driver's cache
    (offline), is neither an error nor downloaded on the driver: no hash, one note."""
    import eqv2calc.registry as registry

    def no_download(*args, **kwargs):
        raise AssertionError("the driver downloaded a checkpoint to hash it")

    monkeypatch.setattr(registry, "fetch", no_download)
    monkeypatch.setenv("EQV2CALC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EQV2CALC_OFFLINE", "1")
    for model in (str(tmp_path / "only-on-workers.pt"), "eqV2_31M_omat"):
        notes: list[str] = []
        assert CalculatorSpec(model=model).checkpoint_sha256(note=notes.append) is None
        assert len(notes) == 1 and "\n" not in notes[0], notes
        assert "not checked on resume" in notes[0] and model in notes[0]
    monkeypatch.delenv("EQV2CALC_OFFLINE")  # online, still never downloaded to hash
    assert CalculatorSpec(model="eqV2_31M_omat").checkpoint_sha256(note=lambda m: None) is None


def test_relax_campaign_with_a_checkpoint_only_on_the_workers(tmp_path):
    """The driver records no hash and says so; the workers (here a factory) do the work."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "a.extxyz", _cu(0))
    spec = CalculatorSpec(model=str(tmp_path / "nowhere" / "m.pt"))
    notes: list[str] = []
    sha = spec.checkpoint_sha256(note=notes.append)
    assert sha is None and len(notes) == 1
    task = RelaxTask(out_dir=str(tmp_path), model=spec.label, model_sha256=sha)
    assert "model_sha256" not in task.settings()


def _legacy_and_new_ledgers(tmp_path, legacy_state, new_state, legacy_finished, new_finished):
    """An old-version ledger (items a, b under legacy keys) and a new-version shard ledger
    (a under its new key, with its legacy key recorded), both written through the API."""
    from eqv2calc.campaigns.ledger import ItemSpec

    settings = {"kind": "eval", "model": "emt", "dtype": "float32"}
    fp = item_fingerprint(settings)
    h = {"a": structure_hash(_cu(0)), "b": structure_hash(_cu(1))}
    new = {k: item_key(f"{v}:{k}", fp) for k, v in h.items()}
    old = {k: item_key(v, fp) for k, v in h.items()}

    def finish(led, key, state, when):
        if state == "pending":
            return
        token = led.claim([key], "w", 60.0)[key]
        if state == "done":
            assert led.complete(key, token, {"energy_eV": when})
        else:
            assert led.fail(key, token, f"boom {when}")
        led._db.execute("UPDATE items SET finished = ? WHERE key = ?", (when, key))

    legacy_path = tmp_path / "old" / "campaign.sqlite"
    with Ledger(legacy_path, "eval", settings) as led:  # as the older eqv2calc keyed items
        led.add_items([ItemSpec(key=old[k], label=k) for k in ("a", "b")])
        finish(led, old["a"], legacy_state, legacy_finished)
        finish(led, old["b"], "done", 1.0)
    shard = tmp_path / "new" / "campaign.shard-0-of-2.sqlite"
    with Ledger(shard, "eval", settings) as led:
        led.add_items([ItemSpec(key=new["a"], label="a", legacy_key=old["a"])])
        finish(led, new["a"], new_state, new_finished)
    return legacy_path, shard, new, old


@pytest.mark.parametrize(
    "legacy_state, new_state, legacy_t, new_t, winner",
    [
        ("done", "done", 10.0, 20.0, "new"),  # both done: the newer result
        ("done", "done", 30.0, 20.0, "legacy"),
        ("done", "failed", 10.0, 20.0, "legacy"),  # done over failed
        ("failed", "done", 10.0, 20.0, "new"),
        ("pending", "failed", 10.0, 20.0, "new"),  # failed over pending
        ("done", "pending", 10.0, 20.0, "legacy"),
    ],
)
def test_merge_and_status_take_a_legacy_keyed_row_as_its_item(
    tmp_path, legacy_state, new_state, legacy_t, new_t, winner
):
    """A ledger merged by an older eqv2calc (legacy keys) and a shard re-run by this one
    (new keys) hold the same items once: merge writes only the new key, status counts once."""
    from eqv2calc.campaigns.report import campaign_status

    legacy_path, shard, new, old = _legacy_and_new_ledgers(
        tmp_path, legacy_state, new_state, legacy_t, new_t
    )
    status = campaign_status([legacy_path, shard])
    assert status["total"] == 2, status["counts"]
    want = legacy_state if winner == "legacy" else new_state
    want_t = legacy_t if winner == "legacy" else new_t
    for dest in (tmp_path / "merged.sqlite", legacy_path):  # a new file; the old merged one
        sources = [shard] if dest == legacy_path else [legacy_path, shard]
        counts = merge_ledgers(sources, dest)
        assert sum(counts.values()) == 2, counts
        rows = _rows(dest)
        assert {r["key"] for r in rows.values()} == {new["a"], old["b"]}
        assert rows["a"]["state"] == want
        if want != "pending":
            assert rows["a"]["finished"] == want_t
        assert rows["a"]["legacy_key"] == old["a"]  # kept for later merges
        assert rows["b"]["state"] == "done"
    # merging the shard again changes nothing
    assert sum(merge_ledgers([shard], tmp_path / "merged.sqlite").values()) == 2
    assert campaign_status([tmp_path / "merged.sqlite", shard])["total"] == 2


def test_ledgers_with_and_without_the_checkpoint_hash(tmp_path):
    base = {"kind": "eval", "model": "m.pt", "dtype": "float32"}
    old = tmp_path / "old" / "campaign.sqlite"
    Ledger(old, "eval", base).close()  # written before the hash was recorded
    with Ledger(old, "eval", {**base, "model_sha256": "aa"}) as led:  # accepted...
        assert led.settings["model_sha256"] == "aa"
    with pytest.raises(SettingsMismatchError, match=r"model checkpoint \(sha256\): was 'aa'"):
        Ledger(old, "eval", {**base, "model_sha256": "bb"})  # ... and recorded from then on
    # merge: a ledger without the hash joins either; two different hashes do not
    a = tmp_path / "m" / "campaign.shard-0-of-2.sqlite"
    b = tmp_path / "m" / "campaign.shard-1-of-2.sqlite"
    Ledger(a, "eval", base).close()
    Ledger(b, "eval", {**base, "model_sha256": "aa"}).close()
    merge_ledgers([a, b], tmp_path / "m" / "campaign.sqlite")
    with Ledger(tmp_path / "m" / "campaign.sqlite") as led:
        assert led.settings["model_sha256"] == "aa"
    c = tmp_path / "n" / "c.sqlite"
    Ledger(c, "eval", {**base, "model_sha256": "bb"}).close()
    with pytest.raises(Exception, match=r"model checkpoint \(sha256\)"):
        merge_ledgers([b, c], tmp_path / "n" / "merged.sqlite")
    assert not (tmp_path / "n" / "merged.sqlite").exists()


def test_a_replaced_checkpoint_is_refused_on_resume(tmp_path):
    ckpt = tmp_path / "m.pt"
    shutil.copy(MODELS / "eqv2calc-demo-emt.pt", ckpt)
    write(tmp_path / "cu.extxyz", bulk("Cu", "fcc", a=3.6))
    out = tmp_path / "ev"
    args = [
        "eval",
        str(tmp_path / "cu.extxyz"),
        "--model",
        str(ckpt),
        "--executor",
        "local",
        "--output-dir",
        str(out),
        "-o",
        "r.extxyz",
    ]
    runner = CliRunner()
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    ledger = out / "campaign.sqlite"
    with Ledger(ledger) as led:
        assert led.settings["model_sha256"] == _sha(ckpt)

    # a ledger of an older eqv2calc (no hash recorded) is continued, and records it
    db = sqlite3.connect(ledger)
    settings = json.loads(db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    settings.pop("model_sha256")
    from eqv2calc.campaigns.hashing import canonical_json, settings_fingerprint

    db.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (canonical_json(settings),))
    db.execute(
        "UPDATE meta SET value = ? WHERE key = 'fingerprint'", (settings_fingerprint(settings),)
    )
    db.commit()
    db.close()
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "1 already finished" in res.output
    with Ledger(ledger) as led:
        assert led.settings["model_sha256"] == _sha(ckpt)

    # the same path, another checkpoint: refused, naming it; nothing recorded
    shutil.copy(MODELS / "eqv2calc-emt-conservative.pt", ckpt)
    before = _rows(ledger)
    res = runner.invoke(main, args)
    assert res.exit_code == 1, res.output
    _no_traceback(res)
    assert "model checkpoint (sha256): was" in res.output
    assert _sha(ckpt) in res.output
    assert _rows(ledger) == before
