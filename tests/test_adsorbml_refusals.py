"""AdsorbML refusals and warnings: resume across a replaced checkpoint or another dtype, a
damaged database, slabs tagged upside down, unconverged top-k, OC20 gas references with EMT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import read, write
from click.testing import CliRunner

from eqv2calc.adsorbml import AdsorbMLConfig, get_adsorbate, run_adsorbml
from eqv2calc.adsorbml.pipeline import DB_NAME
from eqv2calc.adsorbml.report import format_table
from eqv2calc.adsorbml.slabs import SlabInputError, prepare_slab, read_slab
from eqv2calc.adsorbml.store import DamagedStoreError, ResultStore, ResumeMismatchError
from eqv2calc.cli import main
from eqv2calc.registry.download import sha256_of

MODELS = Path(__file__).resolve().parents[1] / "eqv2calc" / "registry" / "models"
CONSERVATIVE = MODELS / "eqv2calc-emt-conservative.pt"
DEMO = MODELS / "eqv2calc-demo-emt.pt"


def _cfg(**kw):
    base = dict(num_random=0, seed=0, fmax=0.05, steps=30, top_k=3, progress=False)
    base.update(kw)
    return AdsorbMLConfig(**base)


def _slab():
    return prepare_slab(fcc100("Cu", size=(2, 2, 3), vacuum=8.0), "cu100")


def _slab_file(tmp_path: Path, tags=None, fixed=None, name="cu100.extxyz") -> Path:
    atoms = fcc100("Cu", size=(2, 2, 3), vacuum=8.0)
    atoms.info.pop("adsorbate_info", None)
    if tags is not None:
        atoms.set_tags(tags(atoms.positions[:, 2]))
    if fixed is not None:
        atoms.set_constraint(FixAtoms(mask=fixed(atoms.positions[:, 2])))
    path = tmp_path / name
    write(path, atoms, format="extxyz")
    return path


def _cli(args: list[str]):
    return CliRunner().invoke(main, ["adsorbml", *args, "--no-progress"])


# ----------------------------------------------------------------------------------------------
# 1, 2: the checkpoint's hash and the dtype are resume settings
# ----------------------------------------------------------------------------------------------


def _eqv2(path: Path, dtype: str = "float32"):
    from eqv2calc.calculator import EquiformerV2Calculator

    return EquiformerV2Calculator(model=str(path), device="cpu", dtype=dtype)


def _ml_settings(out: Path) -> dict:
    return ResultStore(out / DB_NAME).db.metadata["cu100::ml"]


def test_replaced_checkpoint_and_other_dtype_are_refused(tmp_path):
    model = tmp_path / "m.pt"
    shutil.copyfile(CONSERVATIVE, model)
    out = tmp_path / "out"
    cfg = _cfg(steps=2, relax_slab=False)
    (a,) = run_adsorbml(_slab(), get_adsorbate("O"), _eqv2(model), out, cfg, write_outputs=False)
    assert a.new_ml_relaxations == 3
    stored = _ml_settings(out)
    assert stored["model_sha256"] == sha256_of(CONSERVATIVE)
    assert stored["dtype"] == "float32"
    # the same file again: resumed, nothing recomputed
    (b,) = run_adsorbml(_slab(), get_adsorbate("O"), _eqv2(model), out, cfg, write_outputs=False)
    assert b.new_ml_relaxations == 0
    # another precision, same file and label
    with pytest.raises(ResumeMismatchError, match=r"dtype: was 'float32', now 'float64'"):
        run_adsorbml(
            _slab(), get_adsorbate("O"), _eqv2(model, "float64"), out, cfg, write_outputs=False
        )
    # another checkpoint copied over the same path
    shutil.copyfile(DEMO, model)
    old, new = sha256_of(CONSERVATIVE)[:12], sha256_of(DEMO)[:12]
    with pytest.raises(ResumeMismatchError) as err:
        run_adsorbml(_slab(), get_adsorbate("O"), _eqv2(model), out, cfg, write_outputs=False)
    assert f"model checkpoint (sha256): was {old}…, now {new}…" in str(err.value)
    assert str(out / DB_NAME) in str(err.value)


def test_replaced_checkpoint_refused_by_the_cli(tmp_path):
    slab = _slab_file(tmp_path)
    model = tmp_path / "m.pt"
    shutil.copyfile(CONSERVATIVE, model)
    out = tmp_path / "stale"
    args = ["--slab", str(slab), "-a", "O", "--num-random", "0", "--steps", "2"]
    args += ["--no-slab-relax", "--model", str(model), "--out", str(out)]
    first = _cli(args)
    assert first.exit_code == 0, first.output
    again = _cli([*args, "--dtype", "float64"])
    assert again.exit_code == 1, again.output
    assert "dtype: was 'float32', now 'float64'" in again.output
    shutil.copyfile(DEMO, model)
    res = _cli(args)
    assert res.exit_code == 1, res.output
    assert "model checkpoint (sha256): was" in res.output
    assert "this run: 0 new" not in res.output and "Traceback" not in res.output


def test_old_database_without_hash_or_dtype_is_resumed_on_the_label(tmp_path):
    """A database from before the hash was recorded: accepted on the model label, as before,
    and the current hash is not written into it (it would claim the old results used it)."""
    model = tmp_path / "m.pt"
    shutil.copyfile(CONSERVATIVE, model)
    out = tmp_path / "out"
    cfg = _cfg(steps=2, relax_slab=False)
    run_adsorbml(_slab(), get_adsorbate("O"), _eqv2(model), out, cfg, write_outputs=False)
    store = ResultStore(out / DB_NAME)
    meta = dict(store.db.metadata)
    for key in ("model_sha256", "dtype"):
        del meta["cu100::ml"][key]
    store.db.metadata = meta
    shutil.copyfile(DEMO, model)
    (b,) = run_adsorbml(_slab(), get_adsorbate("O"), _eqv2(model), out, cfg, write_outputs=False)
    assert b.new_ml_relaxations == 0
    assert "model_sha256" not in _ml_settings(out) and "dtype" not in _ml_settings(out)
    # the label is still compared
    other = tmp_path / "other.pt"
    shutil.copyfile(DEMO, other)
    with pytest.raises(ResumeMismatchError, match="model: was"):
        run_adsorbml(_slab(), get_adsorbate("O"), _eqv2(other), out, cfg, write_outputs=False)


def test_check_settings_new_keys(tmp_path):
    store = ResultStore(tmp_path / "a.db")
    store.check_settings("s", {"model": "m"}, "ml")  # an old database: no hash
    store.check_settings(
        "s", {"model": "m", "model_sha256": "ab" * 32}, "ml", new_keys=("model_sha256",)
    )
    assert store.db.metadata["s::ml"] == {"model": "m"}
    with pytest.raises(ResumeMismatchError):  # not a new key: a difference
        store.check_settings("s", {"model": "m", "model_sha256": "ab" * 32}, "ml")
    store.check_settings("t", {"model": "m", "model_sha256": "ab" * 32}, "ml")
    with pytest.raises(ResumeMismatchError, match=r"was abababababab…, now cdcdcdcdcdcd…"):
        store.check_settings(
            "t", {"model": "m", "model_sha256": "cd" * 32}, "ml", new_keys=("model_sha256",)
        )


def test_emt_runs_record_no_hash(tmp_path):
    run_adsorbml(_slab(), get_adsorbate("O"), EMT(), tmp_path, _cfg(steps=2), write_outputs=False)
    settings = _ml_settings(tmp_path)
    assert settings["model"] == "EMT"
    assert "model_sha256" not in settings and "dtype" not in settings


# ----------------------------------------------------------------------------------------------
# 3: a damaged database is refused, by name, and left as it is
# ----------------------------------------------------------------------------------------------


def _filled_db(path: Path) -> None:
    store = ResultStore(path)
    store.check_settings("s", {"a": 1}, "ml")
    atoms = fcc100("Cu", size=(3, 3, 4), vacuum=8.0)
    for pid in range(60):
        store.put(atoms, "ml", "s", data={"energies": list(range(50))}, pid=pid, e_ml=-1.0)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_database_is_refused_and_kept(tmp_path, damage):
    path = tmp_path / DB_NAME
    _filled_db(path)
    if damage == "truncate":
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 4)
        reason = "database disk image is malformed"
    else:
        path.write_text("garbage\n")
        reason = "file is not a database"
    before = path.read_bytes()
    with pytest.raises(DamagedStoreError) as err:
        ResultStore(path)
    text = str(err.value)
    assert text.startswith(f"{path} cannot be read ({reason})")
    assert "it was left as it is" in text and "--out" in text
    assert path.read_bytes() == before


def test_damaged_database_through_the_cli(tmp_path):
    slab = _slab_file(tmp_path)
    out = tmp_path / "out"
    args = ["--slab", str(slab), "-a", "O", "--num-random", "0", "--steps", "2"]
    args += ["--model", "emt", "--out", str(out)]
    assert _cli(args).exit_code == 0
    db = out / DB_NAME
    db.write_text("garbage\n")
    res = _cli(args)
    assert res.exit_code == 1, res.output
    assert f"error: {db} cannot be read (file is not a database): it is damaged" in res.output
    assert "unexpected" not in res.output
    assert db.read_text() == "garbage\n"


def test_empty_database_file_is_a_new_database(tmp_path):
    path = tmp_path / DB_NAME
    path.touch()
    store = ResultStore(path)
    store.check_settings("s", {"a": 1}, "ml")
    assert store.db.metadata["s::ml"] == {"a": 1}


# ----------------------------------------------------------------------------------------------
# 4: tags marking the bottom as the surface; a fixed top layer
# ----------------------------------------------------------------------------------------------


def _bottom(z):
    return (z < z.min() + 0.1).astype(int)


def _top(z):
    return (z > z.max() - 0.1).astype(int)


def test_tags_marking_the_bottom_are_refused(tmp_path):
    path = _slab_file(tmp_path, tags=_bottom, fixed=lambda z: _bottom(z) == 0)
    with pytest.raises(SlabInputError) as err:
        read_slab(path)
    text = str(err.value)
    assert text.startswith(str(path))
    assert "bottom" in text and "top face (+z)" in text and "Flip the slab" in text
    res = _cli(["--slab", str(path), "-a", "O", "--model", "emt", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    assert "the OC20 tags mark the bottom of the slab as its surface" in res.output
    assert not (tmp_path / "o").exists()


def test_tags_on_top_are_accepted_without_warning(tmp_path):
    path = _slab_file(tmp_path, tags=_top, fixed=lambda z: _top(z) == 0)
    system = read_slab(path)
    assert np.array_equal(system.atoms.get_tags(), _top(system.atoms.positions[:, 2]))
    assert not any(n.startswith("warning") for n in system.notes)


def test_fixed_top_layer_is_warned_about(tmp_path):
    path = _slab_file(tmp_path, tags=_top, fixed=lambda z: z > z.min() + 0.1)
    system = read_slab(path)
    (warning,) = [n for n in system.notes if n.startswith("warning:")]
    assert "4 of the 4 top-layer atoms" in warning and "fixed" in warning
    res = _cli(
        ["--slab", str(path), "-a", "O", "--model", "emt", "--num-random", "0", "--steps", "2"]
        + ["--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    assert "warning (cu100): 4 of the 4 top-layer atoms" in res.output


# ----------------------------------------------------------------------------------------------
# 5: unconverged top-k are marked
# ----------------------------------------------------------------------------------------------


def test_unconverged_top_k_are_marked(tmp_path):
    cfg = _cfg(steps=0)
    (o,) = run_adsorbml(_slab(), get_adsorbate("O"), EMT(), tmp_path, cfg)
    assert o.top_k and not any(o.record(p).converged for p in o.top_k)  # still ranked (AdsorbML)
    table = format_table([o])
    rows = [line for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == len(o.top_k) and all(row.rstrip().endswith("NO*") for row in rows)
    n = len(o.top_k)
    assert f"warning: *{n} of the {n} top-ranked configurations did not converge" in table
    assert "more --steps" in table
    for rank, pid in enumerate(o.top_k, start=1):
        atoms = read(tmp_path / "topk" / "cu100" / f"rank{rank}_pid{pid}.extxyz")
        assert atoms.info["ml_converged"] is False or atoms.info["ml_converged"] == "F"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["systems"][0]["ml"]["top_k_unconverged"] == o.top_k


def test_converged_top_k_have_no_warning(tmp_path):
    (o,) = run_adsorbml(_slab(), get_adsorbate("O"), EMT(), tmp_path, _cfg(steps=200))
    assert all(o.record(p).converged for p in o.top_k)
    table = format_table([o])
    assert "did not converge" not in table and "NO*" not in table
    atoms = read(tmp_path / "topk" / "cu100" / f"rank1_pid{o.top_k[0]}.extxyz")
    assert atoms.info["ml_converged"] in (True, "T")


# ----------------------------------------------------------------------------------------------
# 6: OC20's RPBE gas references with an EMT energy scale
# ----------------------------------------------------------------------------------------------


def test_oc20_gas_references_refused_for_emt(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--gas-refs oc20 cannot be used with --model EMT"):
        run_adsorbml(_slab(), get_adsorbate("O"), EMT(), out, _cfg(gas_refs="oc20"))
    assert not out.exists()  # refused before anything was written


def test_oc20_gas_references_refused_for_the_bundled_emt_models(tmp_path):
    model = tmp_path / "renamed.pt"  # recognised by its hash, not its name
    shutil.copyfile(DEMO, model)
    with pytest.raises(ValueError, match="eqv2calc-demo-emt, which imitates ASE's EMT"):
        run_adsorbml(
            _slab(), get_adsorbate("O"), _eqv2(model), tmp_path / "o", _cfg(gas_refs="oc20")
        )


def test_oc20_gas_references_refused_for_an_emt_reference(tmp_path):
    class AdsorptionEMT(EMT):
        energy_kind = "adsorption"  # no gas references at the ML level

    with pytest.raises(ValueError, match="--dft emt"):
        run_adsorbml(
            _slab(),
            get_adsorbate("O"),
            AdsorptionEMT(),
            tmp_path / "o",
            _cfg(gas_refs="oc20"),
            dft_calculator=EMT(),
            dft_label="emt",
        )


def test_oc20_gas_references_cli_and_alternatives(tmp_path):
    slab = _slab_file(tmp_path)
    args = ["--slab", str(slab), "-a", "O", "--num-random", "0", "--steps", "5"]
    args += ["--model", "emt"]
    res = _cli([*args, "--gas-refs", "oc20", "--out", str(tmp_path / "a")])
    assert res.exit_code == 1, res.output
    assert (
        "error: --gas-refs oc20 cannot be used" in res.output
        and "--gas-refs computed" in res.output
    )
    # every element overridden: the table is not used, nothing to refuse
    ok = _cli([*args, "--gas-refs", "oc20", "--gas-ref", "O=0.8", "--out", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
    assert _cli([*args, "--out", str(tmp_path / "c")]).exit_code == 0


def test_oc20_gas_references_with_an_unknown_calculator_are_noted():
    from ase.calculators.calculator import Calculator

    from eqv2calc.adsorbml.pipeline import check_gas_references

    class Foreign(Calculator):
        implemented_properties = ["energy"]

    ads = get_adsorbate("O")
    (note,) = check_gas_references(Foreign(), ads, _cfg(gas_refs="oc20"))
    assert "RPBE" in note and "Foreign" in note
    assert check_gas_references(Foreign(), ads, _cfg()) == []
    assert (
        check_gas_references(EMT(), ads, _cfg(gas_ref_overrides={"O": 0.8}, gas_refs="oc20")) == []
    )


@pytest.mark.parametrize("model", ["emt", "demo"])
def test_campaign_refuses_oc20_gas_refs_before_creating_anything(runner, tmp_path, model):
    """Several adsorbates make a campaign: the refusal must come before its ledger exists."""
    from ase.build import fcc100
    from ase.io import write

    from eqv2calc.cli import main

    write(tmp_path / "slab.extxyz", fcc100("Cu", (2, 2, 3), vacuum=8.0))
    out = tmp_path / "out"
    args = ["adsorbml", "--slab", str(tmp_path / "slab.extxyz"), "--adsorbate", "O"]
    args += ["--adsorbate", "H", "--model", model, "--gas-refs", "oc20", "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert "--gas-refs oc20 cannot be used" in result.stderr
    assert model in result.stderr.lower()
    assert not out.exists()
