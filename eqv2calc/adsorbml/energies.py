"""Adsorption energies and gas-phase references.

For a calculator that predicts total energies,
``E_ads = E_adslab − E_slab − Σ_atoms E_ref[element]`` (eV), with per-element references
built, as in OC20, from the gas-phase molecules H2, H2O, CO and N2:

* E_ref[H] = E(H2) / 2
* E_ref[O] = E(H2O) − E(H2)
* E_ref[C] = E(CO) − E(H2O) + E(H2)
* E_ref[N] = E(N2) / 2

The references come either from the OC20 table (:data:`OC20_GAS_REFS`: the RPBE/VASP values
of the OC20 data set, Chanussot et al., ACS Catal. 11, 6059 (2021), as used by fairchem's
adsorption-energy tutorials) or are computed on the fly with the same calculator (relaxed
molecules), which is what a stand-in such as EMT needs. Calculators whose
``energy_kind`` attribute is ``"adsorption"`` (OC20 checkpoints) predict E_ads directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "GAS_MOLECULES",
    "OC20_GAS_REFS",
    "OC20_GAS_REFS_SOURCE",
    "GasReferences",
    "adsorbate_reference_energy",
    "adsorption_energy",
    "compute_gas_references",
    "energy_kind",
    "gas_molecule",
    "oc20_gas_references",
    "parse_gas_ref",
]

#: OC20 per-element gas references (eV), from H2O, H2, CO and N2 with RPBE (VASP).
OC20_GAS_REFS: dict[str, float] = {"H": -3.477, "O": -7.204, "C": -7.282, "N": -8.083}
OC20_GAS_REFS_SOURCE = (
    "OC20 per-element references from H2O/H2/CO/N2 (RPBE, VASP; Chanussot et al., ACS Catal. 2021)"
)

#: Molecules each element's reference needs.
_NEEDS: dict[str, tuple[str, ...]] = {
    "H": ("H2",),
    "O": ("H2O", "H2"),
    "C": ("CO", "H2O", "H2"),
    "N": ("N2",),
}
GAS_MOLECULES: tuple[str, ...] = ("H2", "H2O", "CO", "N2")


def energy_kind(calc: Any) -> str:
    """``"adsorption"`` for calculators predicting adsorption energies (OC20-style), else
    ``"total"`` (read from ``calc.energy_kind``; calculators without it are total-energy)."""
    kind = str(getattr(calc, "energy_kind", "total") or "total").lower()
    return "adsorption" if kind == "adsorption" else "total"


@dataclass
class GasReferences:
    """Per-element reference energies (eV/atom) and where they came from."""

    refs: dict[str, float]
    source: str
    molecules: dict[str, float] = field(default_factory=dict)  # eV, when computed
    calls: int = 0  # calculator evaluations spent on them

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_element_eV": {k: float(v) for k, v in sorted(self.refs.items())},
            "source": self.source,
            "molecule_energies_eV": {k: float(v) for k, v in sorted(self.molecules.items())},
            "calls": self.calls,
        }


def oc20_gas_references(overrides: Mapping[str, float] | None = None) -> GasReferences:
    """The OC20 table, with optional per-element overrides (eV)."""
    refs = dict(OC20_GAS_REFS)
    source = OC20_GAS_REFS_SOURCE
    if overrides:
        refs.update(overrides)
        source += "; overridden by user: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    return GasReferences(refs=refs, source=source)


def gas_molecule(name: str, box: float = 15.0) -> Atoms:
    """Gas-phase molecule ``name`` (H2, H2O, CO, N2) centred in a cubic box of ``box`` Å,
    not periodic."""
    from ase.build import molecule

    if name not in GAS_MOLECULES:
        raise ValueError(f"unknown gas molecule {name!r}; known: {', '.join(GAS_MOLECULES)}")
    atoms = molecule(name)
    atoms.cell = [box, box, box]
    atoms.center()
    atoms.pbc = False
    return atoms


def compute_gas_references(
    calc: Any,
    elements: Iterable[str],
    *,
    relax: bool = True,
    fmax: float = 0.01,
    steps: int = 200,
    label: str = "",
    overrides: Mapping[str, float] | None = None,
) -> GasReferences:
    """Per-element references (eV) for ``elements`` from molecules evaluated with ``calc``.

    Each molecule needed is relaxed (BFGS-like, to ``fmax`` eV/Å) unless ``relax`` is False.
    Elements in ``overrides`` use the given value and need no molecule.

    Raises:
        ValueError: for an element with no gas reference scheme (not H, C, N or O) and no
            override.
    """
    from eqv2calc.drivers import relax as relax_one

    overrides = dict(overrides or {})
    wanted = sorted(set(elements))
    missing = [e for e in wanted if e not in _NEEDS and e not in overrides]
    if missing:
        raise ValueError(
            f"no gas-phase reference scheme for element(s) {', '.join(missing)}; pass "
            f"--gas-ref {missing[0]}=VALUE (eV/atom)"
        )
    needed: list[str] = []
    for e in wanted:
        if e in overrides:
            continue
        for m in _NEEDS[e]:
            if m not in needed:
                needed.append(m)
    energies: dict[str, float] = {}
    calls = 0
    for name in needed:
        mol = gas_molecule(name)
        if relax:
            res = relax_one(mol, calc, optimizer="BFGS", fmax=fmax, steps=steps, label=name)
            if res.error:
                raise RuntimeError(f"gas reference {name}: {res.error}")
            energies[name] = float(res.final_energy)
            calls += res.steps + 1
        else:
            mol.calc = calc
            energies[name] = float(mol.get_potential_energy())
            calls += 1
    refs: dict[str, float] = {}
    for e in wanted:
        if e in overrides:
            refs[e] = float(overrides[e])
        elif e == "H":
            refs[e] = energies["H2"] / 2.0
        elif e == "O":
            refs[e] = energies["H2O"] - energies["H2"]
        elif e == "C":
            refs[e] = energies["CO"] - energies["H2O"] + energies["H2"]
        elif e == "N":
            refs[e] = energies["N2"] / 2.0
    how = "relaxed" if relax else "unrelaxed"
    source = (
        f"computed with {label or type(calc).__name__} from {how} "
        f"{'/'.join(needed) or 'no'} molecules (E_H=E(H2)/2, E_O=E(H2O)-E(H2), "
        "E_C=E(CO)-E(H2O)+E(H2), E_N=E(N2)/2)"
    )
    if overrides:
        source += "; overridden by user: " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    return GasReferences(refs=refs, source=source, molecules=energies, calls=calls)


def adsorbate_reference_energy(symbols: Iterable[str], refs: Mapping[str, float]) -> float:
    """Σ over the adsorbate's atoms of the per-element references (eV)."""
    total = 0.0
    for s in symbols:
        if s not in refs:
            raise ValueError(
                f"no gas-phase reference energy for element {s}; pass --gas-ref {s}=VALUE"
            )
        total += float(refs[s])
    return total


def adsorption_energy(
    e_adslab: float, e_slab: float, adsorbate_symbols: Iterable[str], refs: Mapping[str, float]
) -> float:
    """``E_adslab − E_slab − Σ E_ref`` in eV."""
    return float(e_adslab) - float(e_slab) - adsorbate_reference_energy(adsorbate_symbols, refs)


def parse_gas_ref(text: str) -> tuple[str, float]:
    """Parse ``"O=-7.204"`` into ``("O", -7.204)`` (element symbol, eV/atom)."""
    from ase.data import chemical_symbols

    if "=" not in text:
        raise ValueError(f"--gas-ref {text!r}: expected ELEMENT=VALUE, e.g. O=-7.204")
    el, val = text.split("=", 1)
    el = el.strip()
    if el not in chemical_symbols[1:]:
        raise ValueError(f"--gas-ref {text!r}: {el!r} is not an element symbol")
    try:
        value = float(val)
    except ValueError:
        raise ValueError(f"--gas-ref {text!r}: {val!r} is not a number (eV)") from None
    if not np.isfinite(value):
        raise ValueError(f"--gas-ref {text!r}: value must be finite")
    return el, value
