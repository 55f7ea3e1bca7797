"""`eqv2calc eval` never replaces an existing results file without --overwrite."""

from __future__ import annotations

import ase.io
from ase.build import bulk

from eqv2calc.cli import main


def test_existing_output_is_kept_without_overwrite(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    keep = tmp_path / "keep.extxyz"
    keep.write_text("precious\n")
    args = ["eval", "cu.extxyz", "--model", "emt", "--no-progress", "-o", "keep.extxyz"]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    assert "keep.extxyz exists" in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert keep.read_text() == "precious\n"
    result = runner.invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 0, result.stderr
    (frame,) = ase.io.read(keep, ":")
    assert frame.get_chemical_formula() == "Cu4"


def test_overwrite_is_refused_for_a_campaign(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cu.extxyz", bulk("Cu", cubic=True))
    args = ["eval", "cu.extxyz", "--model", "emt", "--executor", "local", "--overwrite"]
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "--overwrite does not apply to a campaign" in result.stderr
