"""VASP input folders for the top-k configurations, with the OC20 settings.

OC20's adslab and slab calculations (fairchem ``fairchem.data.oc.utils.vasp_flags.VASP_FLAGS``
and ``vasp.py``): RPBE (``GGA = RP`` with PBE PAW potentials), ``ENCUT = 350``,
``EDIFFG = -0.03`` (eV/Å), ``IBRION = 2``, ``ISIF = 0``, ``ISYM = 0``, ``SYMPREC = 1e-10``,
``LREAL = Auto``, ``LAECHG`` / ``LWAVE`` off; a relaxation runs up to ``NSW = 2000`` ionic steps
(``NELM = 60``), a single point ``NSW = 0`` with ``NELM = 300``. k-points as OC20's
``calculate_surface_k_points``: a Monkhorst-Pack grid ``(max(1, round(40 / |a|∞)),
max(1, round(40 / |b|∞)), 1)``, with ``|v|∞`` the largest Cartesian component of the cell
vector (Å). As OC20 does, a left-handed cell has its a and b vectors swapped first.

Files are written by ASE's VASP input writer (:class:`ase.calculators.vasp.Vasp`:
``write_incar``, ``write_kpoints``, ``write_sort_file``, and :func:`ase.io.vasp.write_vasp` for
the POSCAR with ASE's species ordering and selective dynamics for fixed atoms). The POTCAR is
not written (its files are licensed): ``POTCAR.README`` in each folder lists the species in
POSCAR order and how to build it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "OC20_VASP_FLAGS",
    "VASP_MODES",
    "oc20_kpoints",
    "oc20_vasp_flags",
    "write_top_k_vasp",
    "write_vasp_inputs",
]

#: OC20's flags common to single points and relaxations (ASE ``Vasp`` keywords).
OC20_VASP_FLAGS: dict[str, Any] = {
    "xc": "rpbe",  # GGA = RP, PBE PAW potentials
    "encut": 350.0,
    "ediffg": -0.03,
    "ibrion": 2,
    "isif": 0,
    "isym": 0,
    "symprec": 1e-10,
    "lreal": "Auto",
    "laechg": False,
    "lwave": False,
}

#: Per-mode flags: ``sp`` single point, ``rx`` relaxation.
VASP_MODES: dict[str, dict[str, int]] = {
    "sp": {"nsw": 0, "nelm": 300},
    "rx": {"nsw": 2000, "nelm": 60},
}

_POTCAR_NOTE = """POTCAR is not written here: VASP's PAW potentials are licensed files.

Concatenate, in this order (the species order of POSCAR):
  {species}
OC20 used the PBE PAW set (potpaw_PBE) with ASE's "minimal" setups
(https://wiki.fysik.dtu.dk/ase/ase/calculators/vasp.html#pp-setups), e.g.
  cat {example} > POTCAR
or let ASE write it: set VASP_PP_PATH and call
  ase.calculators.vasp.Vasp(xc="rpbe", setups="minimal").write_input(ase.io.read("POSCAR"))
INCAR: {mode_text}. KPOINTS: {kpts} Monkhorst-Pack
(OC20's rule: round(40 / a_max), round(40 / b_max), 1, with a_max, b_max the largest
absolute Cartesian components of cell vectors a and b, Å).
ase-sort.dat maps POSCAR order to the order of the structure in summary.json / topk/.
Energies and forces from this folder are RPBE total energies (eV), not adsorption energies.
"""


def oc20_kpoints(atoms: Atoms) -> tuple[int, int, int]:
    """OC20's surface k-point grid: ``(max(1, round(40 / |a|∞)), max(1, round(40 / |b|∞)), 1)``
    with ``|v|∞`` the largest absolute Cartesian component of the cell vector (Å)."""
    cell = np.asarray(atoms.cell)
    a0 = float(np.linalg.norm(cell[0], ord=np.inf))
    b0 = float(np.linalg.norm(cell[1], ord=np.inf))
    if a0 <= 0 or b0 <= 0:
        raise ValueError(
            f"cell vectors a and b must be non-zero for k-points (cell {cell.tolist()})"
        )
    return (max(1, int(round(40.0 / a0))), max(1, int(round(40.0 / b0))), 1)


def oc20_vasp_flags(mode: str, atoms: Atoms | None = None) -> dict[str, Any]:
    """ASE ``Vasp`` keywords for an OC20 ``mode`` ("sp" or "rx"), with k-points when ``atoms``
    is given."""
    if mode not in VASP_MODES:
        raise ValueError(f"unknown VASP mode {mode!r}; use sp (single point) or rx (relaxation)")
    flags = {**OC20_VASP_FLAGS, **VASP_MODES[mode]}
    if atoms is not None:
        flags["kpts"] = oc20_kpoints(atoms)
    return flags


def _right_handed(atoms: Atoms) -> Atoms:
    """OC20's clean-up: swap a and b when a × b points against c (VASP wants right-handed)."""
    out = atoms.copy()
    cell = np.asarray(out.cell)
    if np.dot(np.cross(cell[0], cell[1]), cell[2]) < 0:
        out.set_cell(cell[[1, 0, 2], :], scale_atoms=False)
    return out


def write_vasp_inputs(
    atoms: Atoms,
    directory: str | os.PathLike,
    mode: str = "sp",
    *,
    extra_flags: Mapping[str, Any] | None = None,
    comment: str | None = None,
) -> Path:
    """Write POSCAR, INCAR, KPOINTS, ase-sort.dat and POTCAR.README for one structure.

    Args:
        atoms: the adslab or slab (FixAtoms constraints become selective dynamics).
        directory: the folder (created).
        mode: "sp" (NSW 0, NELM 300) or "rx" (NSW 2000, NELM 60).
        extra_flags: further ASE ``Vasp`` keywords (e.g. ``{"ncore": 4}``), override OC20's.
        comment: what the structure is (first line of POTCAR.README).

    Returns:
        The folder.
    """
    from ase.calculators.vasp import Vasp
    from ase.io.vasp import write_vasp

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    work = _right_handed(atoms)
    work.calc = None
    flags = oc20_vasp_flags(mode, work)
    flags.update(dict(extra_flags or {}))
    calc = Vasp(directory=str(folder), setups="minimal", **flags)
    # ASE's initialize() also looks up the POTCAR files, which we do not write: skip that part
    calc._build_pp_list = lambda *args, **kwargs: []  # noqa: SLF001
    calc.initialize(work)
    write_vasp(
        str(folder / "POSCAR"),
        calc.atoms_sorted,
        symbol_count=calc.symbol_count,
        direct=True,
    )
    calc.write_incar(work, directory=str(folder))
    calc.write_kpoints(atoms=work, directory=str(folder))
    calc.write_sort_file(directory=str(folder))
    species = [s for s, _ in calc.symbol_count]
    mode_text = (
        "single point (NSW = 0, NELM = 300)"
        if mode == "sp"
        else "relaxation (NSW = 2000, NELM = 60)"
    )
    note = _POTCAR_NOTE.format(
        species=" ".join(species),
        example=" ".join(f"$VASP_PP_PATH/potpaw_PBE/{s}/POTCAR" for s in species),
        mode_text=mode_text,
        kpts=" x ".join(str(k) for k in flags["kpts"]),
    )
    head = f"{comment}\n\n" if comment else ""
    (folder / "POTCAR.README").write_text(head + note)
    return folder


def write_top_k_vasp(outcome: Any, out_dir: str | os.PathLike, mode: str = "sp") -> dict[str, Any]:
    """VASP folders for one system's top-k ML-relaxed configurations and its clean slab.

    Layout: ``<out_dir>/vasp/<system>/rank<r>_pid<p>/`` per configuration (``mode`` "sp" or
    "rx") and ``<out_dir>/vasp/<system>/slab/`` for the ML-relaxed clean slab (a relaxation in
    "rx" mode, else a single point), each with POSCAR, INCAR, KPOINTS, ase-sort.dat and
    POTCAR.README. Returns ``{"slab": folder, "top_k": [folder per rank]}`` (strings).
    """
    base = Path(out_dir) / "vasp" / outcome.name
    folders = []
    for rank, pid in enumerate(outcome.top_k, start=1):
        rec = outcome.record(pid)
        label = f"{outcome.name} rank {rank} pid {pid} {rec.site_type} (ML-relaxed)"
        folders.append(
            str(write_vasp_inputs(rec.atoms, base / f"rank{rank}_pid{pid}", mode, comment=label))
        )
    slab = write_vasp_inputs(
        outcome.slab_ml, base / "slab", mode, comment=f"{outcome.name} clean slab (ML-relaxed)"
    )
    return {"slab": str(slab), "top_k": folders}
