"""Adsorption-energy arithmetic and gas-phase references."""

from __future__ import annotations

import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.optimize import BFGS

from eqv2calc.adsorbml.energies import (
    OC20_GAS_REFS,
    adsorbate_reference_energy,
    adsorption_energy,
    compute_gas_references,
    energy_kind,
    oc20_gas_references,
    parse_gas_ref,
)


def _emt_molecule_energy(name: str) -> float:
    atoms = molecule(name)
    atoms.cell = [15, 15, 15]
    atoms.center()
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=0.005, steps=500)
    return float(atoms.get_potential_energy())


def test_eads_arithmetic_with_oc20_refs():
    e_adslab, e_slab = -250.125, -240.5
    refs = OC20_GAS_REFS
    # *OH: one O and one H reference
    expected = e_adslab - e_slab - refs["O"] - refs["H"]
    assert adsorption_energy(e_adslab, e_slab, ["O", "H"], refs) == pytest.approx(
        expected, abs=1e-12
    )
    # *CH3: C + 3 H
    assert adsorbate_reference_energy(["C", "H", "H", "H"], refs) == pytest.approx(
        refs["C"] + 3 * refs["H"]
    )
    with pytest.raises(ValueError, match="element S"):
        adsorbate_reference_energy(["S"], refs)


def test_computed_references_follow_the_oc20_scheme_with_emt():
    g = compute_gas_references(EMT(), ["H", "O", "C", "N"], fmax=0.005, steps=500)
    e = {name: _emt_molecule_energy(name) for name in ("H2", "H2O", "CO", "N2")}  # independent
    assert g.refs["H"] == pytest.approx(e["H2"] / 2, abs=2e-3)
    assert g.refs["O"] == pytest.approx(e["H2O"] - e["H2"], abs=2e-3)
    assert g.refs["C"] == pytest.approx(e["CO"] - e["H2O"] + e["H2"], abs=2e-3)
    assert g.refs["N"] == pytest.approx(e["N2"] / 2, abs=2e-3)
    assert g.calls > 4
    assert "computed with EMT" in g.source


def test_only_needed_molecules_and_overrides():
    g = compute_gas_references(EMT(), ["N"], overrides={"O": -7.0})
    assert set(g.molecules) == {"N2"}
    assert g.refs == {"N": pytest.approx(g.molecules["N2"] / 2)}
    g = compute_gas_references(EMT(), ["O", "S"], overrides={"S": -4.0, "O": -7.0})
    assert g.refs == {"O": -7.0, "S": -4.0} and g.molecules == {}
    with pytest.raises(ValueError, match="--gas-ref S=VALUE"):
        compute_gas_references(EMT(), ["S"])


def test_oc20_table_and_overrides():
    g = oc20_gas_references({"O": -7.0})
    assert g.refs["O"] == -7.0 and g.refs["H"] == OC20_GAS_REFS["H"]
    assert "OC20" in g.source and "O=-7.0" in g.source


def test_energy_kind():
    class OC20Like:
        energy_kind = "adsorption"

    assert energy_kind(OC20Like()) == "adsorption"
    assert energy_kind(EMT()) == "total"


def test_parse_gas_ref():
    assert parse_gas_ref("O=-7.204") == ("O", -7.204)
    for bad, msg in (
        ("O-7.2", "ELEMENT=VALUE"),
        ("Xx=1", "not an element"),
        ("O=abc", "not a number"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_gas_ref(bad)
