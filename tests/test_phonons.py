"""Phonons through phonopy: EMT as the model must reproduce phonopy driven by EMT exactly."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from click.testing import CliRunner

from eqv2calc.cli import main

phonopy = pytest.importorskip("phonopy")

from eqv2calc.drivers.phonons import (  # noqa: E402
    PhononSettings,
    PhonopyMissingError,
    run_phonons,
    supercell_forces,
)

SETTINGS = PhononSettings(supercell=(2, 2, 2), mesh=(8, 8, 8), t_max=600.0, t_step=100.0)


def reference_emt_phonons(atoms, settings: PhononSettings):
    """phonopy driven by hand with ASE's EMT: the independent reference."""
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(),
    )
    ph = phonopy.Phonopy(
        unit, supercell_matrix=np.diag(settings.supercell), primitive_matrix="auto"
    )
    ph.generate_displacements(distance=settings.delta)
    forces = []
    for cell in ph.supercells_with_displacements:
        from ase import Atoms

        sc = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
        sc.calc = EMT()
        forces.append(sc.get_forces())
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    ph.run_mesh(list(settings.mesh), is_gamma_center=True)
    ph.run_thermal_properties(t_min=settings.t_min, t_max=settings.t_max, t_step=settings.t_step)
    return ph


@pytest.fixture(scope="module")
def copper():
    return bulk("Cu", "fcc", a=3.59)


def test_emt_as_the_model_matches_phonopy_with_emt(copper, tmp_path):
    result = run_phonons(copper, EMT(), SETTINGS, out_dir=tmp_path)
    reference = reference_emt_phonons(copper, SETTINGS)
    np.testing.assert_allclose(
        result.phonopy.force_constants, reference.force_constants, rtol=0, atol=1e-12
    )
    ours = result.phonopy.mesh.frequencies
    np.testing.assert_allclose(ours, reference.mesh.frequencies, rtol=0, atol=1e-10)
    theirs = reference.thermal_properties
    for key in ("free_energy", "entropy", "heat_capacity"):
        expected = getattr(theirs, key)
        np.testing.assert_allclose(result.thermal[key], expected, rtol=1e-12, atol=1e-12)
    # a real crystal: no imaginary modes, acoustic branches vanish at Γ, X above 5 THz
    assert result.min_frequency > -1e-3
    assert np.abs(result.special_frequencies["G"]).max() < 1e-3
    assert min(result.special_frequencies["X"]) > 5.0
    for name in ("params", "band", "dos", "thermal", "plot", "summary"):
        assert result.files[name].is_file() and result.files[name].stat().st_size > 0
    summary = json.loads(result.files["summary"].read_text())
    assert summary["num_displacements"] == result.num_displacements == 1
    reloaded = phonopy.load(str(result.files["params"]))  # phonopy reads what we wrote
    np.testing.assert_allclose(reloaded.forces, result.phonopy.forces, rtol=1e-12, atol=1e-12)


def test_displaced_supercells_in_one_batched_call(copper):
    """eqv2calc calculators get all supercells in one predict_batch call: same forces."""

    class Recorder:
        def __init__(self):
            self.calls = []
            self.emt = EMT()

        def predict_batch(self, structures):
            self.calls.append(len(structures))
            out = []
            for atoms in structures:
                atoms = atoms.copy()
                atoms.calc = self.emt
                out.append({"forces": atoms.get_forces()})
            return out

    cells = [copper * (2, 2, 2) for _ in range(5)]
    for k, cell in enumerate(cells):
        cell.positions[k] += 0.01
    recorder = Recorder()
    batched = supercell_forces(recorder, cells, batch_size=None)
    assert recorder.calls == [5]
    supercell_forces(recorder, cells, batch_size=2)
    assert recorder.calls == [5, 2, 2, 1]
    plain = supercell_forces(EMT(), [c.copy() for c in cells], batch_size=None)
    for a, b in zip(batched, plain):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_cli_with_emt_and_with_the_bundled_model(copper, tmp_path):
    path = tmp_path / "Cu.extxyz"
    write(path, copper)
    args = ["phonons", str(path), "--supercell", "2", "2", "2", "--mesh", "6", "6", "6"]
    result = CliRunner().invoke(main, [*args, "--model", "emt", "--out", str(tmp_path / "emt")])
    assert result.exit_code == 0, result.output
    assert "X:" in result.output and (tmp_path / "emt" / "phonons.png").is_file()
    result = CliRunner().invoke(main, [*args, "--json", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["num_displacements"] == 1 and "X" in summary["special_point_frequencies_THz"]


def test_cli_rejects_a_molecule(tmp_path):
    from ase.build import molecule

    path = tmp_path / "h2o.xyz"
    write(path, molecule("H2O"))
    result = CliRunner().invoke(main, ["phonons", str(path), "--model", "emt"])
    assert result.exit_code == 1 and "3D-periodic" in result.output


def test_missing_phonopy_gives_the_install_hint(copper, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "phonopy", None)  # import phonopy raises ImportError
    with pytest.raises(PhonopyMissingError, match=r"pip install 'eqv2calc\[phonons\]'"):
        run_phonons(copper, EMT(), SETTINGS)
    path = tmp_path / "Cu.extxyz"
    write(path, copper)
    result = CliRunner().invoke(main, ["phonons", str(path), "--model", "emt"])
    assert result.exit_code == 1 and "eqv2calc[phonons]" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("where", ["position", "cell"])
def test_non_finite_input_is_refused_before_phonopy(copper, where, tmp_path):
    """phonopy crashed the process (segfault) on a NaN position or cell entry."""
    from eqv2calc.checks import StructureError

    bad = copper.copy()
    if where == "position":
        bad.positions[0, 0] = np.nan
    else:
        cell = bad.cell.array.copy()
        cell[0, 0] = np.nan
        bad.set_cell(cell)
    with pytest.raises(StructureError, match="non-finite"):
        run_phonons(bad, EMT(), SETTINGS)
    path = tmp_path / "bad.extxyz"
    write(path, bad)
    result = CliRunner().invoke(main, ["phonons", str(path), "--model", "emt"])
    assert result.exit_code == 1 and "non-finite" in result.output
    assert "Traceback" not in result.output
