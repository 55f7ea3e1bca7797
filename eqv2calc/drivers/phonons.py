"""Harmonic phonons with phonopy and any ASE calculator (displaced supercells in batches).

phonopy (optional extra ``eqv2calc[phonons]``) builds the supercell and the symmetry-reduced
set of displaced supercells; their forces come from the calculator, all displacements in one
batched call (or calls of ``batch_size`` supercells) when it has ``predict_batch`` (eqv2calc),
one by one otherwise (EMT, any ASE calculator). phonopy then makes the force constants, the
band structure along the primitive cell's standard path (ASE's ``bandpath``), the total DOS
on a q-mesh and the harmonic thermal properties.

Direct-force models give force constants that are not exactly symmetric (Φ_ij ≠ Φ_jiᵀ);
:attr:`PhononResult.force_constant_asymmetry` = ‖Φ − Φᵀ‖/‖Φ‖ reports it (0 up to rounding for
gradient models and EMT).

Units: displacement Å, frequencies THz, temperatures K, free energy kJ/mol, entropy and heat
capacity J/K/mol (phonopy's units, per mole of primitive cells).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from eqv2calc.checks import MIN_DISTANCE, check_structure
from eqv2calc.plotting import pyplot

__all__ = ["PhononResult", "PhononSettings", "PhonopyMissingError", "run_phonons"]

INSTALL_HINT = "phonons need phonopy: pip install 'eqv2calc[phonons]' (or pip install phonopy)"


class PhonopyMissingError(ImportError):
    """phonopy is not installed (the message says how to install it)."""


def _phonopy():
    try:
        import phonopy
    except ImportError as err:
        raise PhonopyMissingError(f"{INSTALL_HINT} ({err})") from None
    return phonopy


@dataclass
class PhononSettings:
    """How to compute the phonons.

    Attributes:
        supercell: repetitions of the input cell along a, b, c (3 integers).
        delta: displacement of the finite differences, Å (phonopy's default 0.01).
        primitive: ``"auto"`` (phonopy finds the primitive cell) or ``None`` (the input cell).
        mesh: Γ-centred q-point mesh for the DOS and thermal properties (3 integers).
        band_points: q-points per band-path segment.
        t_min, t_max, t_step: temperatures of the thermal properties, K.
        batch_size: most displaced supercells per batched call (None: all at once).
        symprec: symmetry tolerance, Å.
    """

    supercell: tuple[int, int, int] = (3, 3, 3)
    delta: float = 0.01
    primitive: str | None = "auto"
    mesh: tuple[int, int, int] = (20, 20, 20)
    band_points: int = 51
    t_min: float = 0.0
    t_max: float = 1000.0
    t_step: float = 10.0
    batch_size: int | None = None
    symprec: float = 1e-5

    def validate(self) -> None:
        """Raise ValueError naming every bad setting."""
        problems = []
        if len(self.supercell) != 3 or any(int(n) < 1 for n in self.supercell):
            problems.append(f"supercell must be 3 positive integers, got {self.supercell}")
        if not self.delta > 0:
            problems.append(f"delta must be a positive displacement in Å, got {self.delta}")
        if len(self.mesh) != 3 or any(int(n) < 1 for n in self.mesh):
            problems.append(f"mesh must be 3 positive integers, got {self.mesh}")
        if self.band_points < 2:
            problems.append(f"band_points must be >= 2, got {self.band_points}")
        if not 0 <= self.t_min <= self.t_max or self.t_step <= 0:
            problems.append(
                f"temperatures need 0 <= t_min <= t_max and t_step > 0, got "
                f"{self.t_min}, {self.t_max}, {self.t_step}"
            )
        if self.primitive not in ("auto", None):
            problems.append(f"primitive must be 'auto' or None, got {self.primitive!r}")
        if problems:
            raise ValueError("invalid phonon settings: " + "; ".join(problems))


@dataclass
class PhononResult:
    """What a phonon run produced (phonopy's units: THz, kJ/mol, J/K/mol).

    Attributes:
        phonopy: the ``phonopy.Phonopy`` object (force constants, band structure, DOS, ...).
        num_displacements: displaced supercells evaluated.
        supercell_atoms: atoms per supercell.
        band_labels: labels of the band-path ticks (``"G"`` is Γ, ``"K|U"`` a jump).
        band_distances, band_frequencies: per path segment, ``(n,)`` and ``(n, 3·n_prim)``.
        special_frequencies: label → sorted frequencies (THz) at each special point.
        dos_frequencies, dos: total DOS (states/THz per primitive cell).
        thermal: ``temperatures`` K, ``free_energy`` kJ/mol, ``entropy`` and ``heat_capacity``
            J/K/mol.
        min_frequency: lowest frequency on the mesh and the band path (THz; negative =
            imaginary modes).
        force_constant_asymmetry: ‖Φ − Φᵀ‖/‖Φ‖ of the supercell force constants.
        seconds_forces: wall time of the force evaluations; seconds: total.
        files: written output files.
    """

    phonopy: object
    num_displacements: int
    supercell_atoms: int
    band_labels: list[str]
    band_distances: list[np.ndarray]
    band_frequencies: list[np.ndarray]
    special_frequencies: dict[str, list[float]]
    dos_frequencies: np.ndarray
    dos: np.ndarray
    thermal: dict[str, np.ndarray]
    min_frequency: float
    force_constant_asymmetry: float
    seconds_forces: float
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-friendly digest (no arrays larger than the thermal table every 100 K)."""
        t = self.thermal["temperatures"]
        every = [i for i, value in enumerate(t) if abs(value / 100.0 - round(value / 100.0)) < 1e-9]
        return {
            "num_displacements": self.num_displacements,
            "supercell_atoms": self.supercell_atoms,
            "special_point_frequencies_THz": self.special_frequencies,
            "min_frequency_THz": self.min_frequency,
            "force_constant_asymmetry": self.force_constant_asymmetry,
            "thermal_properties": {
                "temperature_K": [float(t[i]) for i in every],
                "free_energy_kJ_per_mol": [float(self.thermal["free_energy"][i]) for i in every],
                "entropy_J_per_K_mol": [float(self.thermal["entropy"][i]) for i in every],
                "heat_capacity_J_per_K_mol": [
                    float(self.thermal["heat_capacity"][i]) for i in every
                ],
            },
            "seconds_forces": self.seconds_forces,
            "seconds": self.seconds,
            "files": {k: str(v) for k, v in self.files.items()},
        }


def _to_phonopy_atoms(atoms: Atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(wrap=False),
        masses=atoms.get_masses(),
    )


def _to_ase(cell) -> Atoms:
    return Atoms(
        symbols=cell.symbols,
        cell=cell.cell,
        scaled_positions=cell.scaled_positions,
        masses=cell.masses,
        pbc=True,
    )


def supercell_forces(calc, supercells: list[Atoms], batch_size: int | None) -> list[np.ndarray]:
    """Forces (eV/Å) of the displaced supercells: batched with ``predict_batch`` if present."""
    if hasattr(calc, "predict_batch"):
        size = len(supercells) if batch_size is None else max(1, int(batch_size))
        out: list[np.ndarray] = []
        for start in range(0, len(supercells), size):
            out += [r["forces"] for r in calc.predict_batch(supercells[start : start + size])]
        return out
    out = []
    for atoms in supercells:
        atoms.calc = calc
        out.append(np.array(atoms.get_forces()))
    return out


def _band_path(primitive: Atoms, npoints: int):
    """q-point segments (reduced coordinates of the primitive reciprocal cell) and labels."""
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

    path = primitive.cell.bandpath(npoints=0)
    special = path.special_points
    segments, labels, ticks = [], [], []
    for branch in path.path.split(","):
        names = _split_labels(branch)
        segments.append([list(special[name]) for name in names])
        labels += names
        if ticks:  # a jump between branches: one tick "K|U"
            ticks[-1] += "|" + names[0]
            names = names[1:]
        ticks += names
    qpoints, connections = get_band_qpoints_and_path_connections(segments, npoints=npoints)
    return qpoints, labels, connections, ticks


def _split_labels(branch: str) -> list[str]:
    """``"GXW1K"`` → ``["G", "X", "W1", "K"]`` (ASE labels: a letter, then digits)."""
    out: list[str] = []
    for char in branch:
        if char.isdigit() and out:
            out[-1] += char
        else:
            out.append(char)
    return out


def run_phonons(
    atoms: Atoms,
    calc,
    settings: PhononSettings | None = None,
    out_dir: str | Path | None = None,
) -> PhononResult:
    """Phonons of ``atoms`` (a 3D-periodic cell, ideally relaxed) with ``calc``.

    Args:
        atoms: the unit cell (Å).
        calc: any ASE calculator; eqv2calc calculators evaluate displacements in batches.
        settings: :class:`PhononSettings` (defaults when None).
        out_dir: when given, writes ``phonopy_params.yaml`` (structure, displacements, forces:
            phonopy can reload it), ``band.yaml``, ``total_dos.dat``,
            ``thermal_properties.yaml``, ``phonons.png`` (band structure + DOS) and
            ``phonons_summary.json`` there.

    Raises:
        PhonopyMissingError: phonopy is not installed.
        ValueError: bad settings or a structure that is not 3D-periodic.
        StructureError: non-finite positions or cell, overlapping atoms (a ValueError).
    """
    phonopy = _phonopy()
    settings = settings or PhononSettings()
    settings.validate()
    # finite positions and cell, no overlaps: phonopy itself crashes the process on NaN
    check_structure(atoms, min_distance=getattr(calc, "min_distance", MIN_DISTANCE))
    if not np.all(atoms.pbc) or abs(atoms.get_volume()) < 1e-6:
        raise ValueError(
            "phonons need a 3D-periodic cell (pbc = True along a, b, c, non-zero volume)"
        )
    t0 = time.perf_counter()
    ph = phonopy.Phonopy(
        _to_phonopy_atoms(atoms),
        supercell_matrix=np.diag([int(n) for n in settings.supercell]),
        primitive_matrix=settings.primitive,
        symprec=settings.symprec,
    )
    ph.generate_displacements(distance=settings.delta)
    supercells = [_to_ase(cell) for cell in ph.supercells_with_displacements]
    t1 = time.perf_counter()
    forces = supercell_forces(calc, supercells, settings.batch_size)
    seconds_forces = time.perf_counter() - t1
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    fc = np.asarray(ph.force_constants)  # [n, n, 3, 3] (full) or [n_prim, n, 3, 3]
    if fc.shape[0] == fc.shape[1]:
        fct = fc.transpose(1, 0, 3, 2)
        norm = np.linalg.norm(fc)
        fc_asymmetry = float(np.linalg.norm(fc - fct) / norm) if norm > 0 else 0.0
    else:  # compact force constants: symmetric partner not stored
        fc_asymmetry = float("nan")

    primitive = _to_ase(ph.primitive)
    qpoints, labels, connections, ticks = _band_path(primitive, settings.band_points)
    ph.run_band_structure(qpoints, path_connections=connections, labels=labels)
    band = ph.band_structure
    special = {}
    for segment_q, segment_f in zip(band.qpoints, band.frequencies):
        for end in (0, -1):
            q = np.asarray(segment_q[end])
            for name, point in primitive.cell.bandpath(npoints=0).special_points.items():
                if np.allclose(q, point, atol=1e-8):
                    special[name] = sorted(float(f) for f in segment_f[end])

    ph.run_mesh([int(n) for n in settings.mesh], is_gamma_center=True)
    mesh_freq = ph.mesh.frequencies
    ph.run_total_dos()
    dos = ph.total_dos
    ph.run_thermal_properties(t_min=settings.t_min, t_max=settings.t_max, t_step=settings.t_step)
    tp = ph.thermal_properties

    result = PhononResult(
        phonopy=ph,
        num_displacements=len(supercells),
        supercell_atoms=len(ph.supercell),
        band_labels=ticks,
        band_distances=[np.asarray(d) for d in band.distances],
        band_frequencies=[np.asarray(f) for f in band.frequencies],
        special_frequencies=special,
        dos_frequencies=np.asarray(dos.frequency_points),
        dos=np.asarray(dos.dos),
        thermal={
            "temperatures": np.asarray(tp.temperatures),
            "free_energy": np.asarray(tp.free_energy),
            "entropy": np.asarray(tp.entropy),
            "heat_capacity": np.asarray(tp.heat_capacity),
        },
        min_frequency=float(min(np.min(mesh_freq), min(np.min(f) for f in band.frequencies))),
        force_constant_asymmetry=fc_asymmetry,
        seconds_forces=seconds_forces,
        seconds=0.0,
    )
    if out_dir is not None:
        result.files = _write_outputs(result, Path(out_dir), settings)
    result.seconds = time.perf_counter() - t0
    if out_dir is not None:
        _write_summary(result, settings)
    return result


def _write_outputs(result: PhononResult, out: Path, settings: PhononSettings) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    ph = result.phonopy
    files = {
        "params": out / "phonopy_params.yaml",
        "band": out / "band.yaml",
        "dos": out / "total_dos.dat",
        "thermal": out / "thermal_properties.yaml",
        "plot": out / "phonons.png",
        "summary": out / "phonons_summary.json",
    }
    ph.save(str(files["params"]), settings={"force_constants": False})
    ph.write_yaml_band_structure(filename=str(files["band"]))
    ph.write_total_dos(filename=str(files["dos"]))
    ph.write_yaml_thermal_properties(filename=str(files["thermal"]))
    plot_band_and_dos(result, files["plot"])
    return files


def _write_summary(result: PhononResult, settings: PhononSettings) -> None:
    data = {"settings": asdict(settings), **result.summary()}
    path = result.files["summary"]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def plot_band_and_dos(result: PhononResult, path: Path) -> None:
    """Band structure (left) and total DOS (right), frequencies in THz, as a PNG.

    Raises:
        MatplotlibMissingError: matplotlib is not installed.
    """
    plt = pyplot("the phonon band structure")

    fig, (ax_band, ax_dos) = plt.subplots(
        1, 2, figsize=(8, 4.5), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    for distances, freqs in zip(result.band_distances, result.band_frequencies):
        ax_band.plot(distances, freqs, color="C0", lw=1.2)
    ticks = [float(result.band_distances[0][0])] + [float(d[-1]) for d in result.band_distances]
    ax_band.set_xticks(ticks)
    ax_band.set_xticklabels([label.replace("G", "Γ") for label in result.band_labels])
    for t in ticks:
        ax_band.axvline(t, color="0.8", lw=0.6)
    ax_band.axhline(0.0, color="0.5", lw=0.6)
    ax_band.set_xlim(ticks[0], ticks[-1])
    ax_band.set_ylabel("frequency (THz)")
    ax_dos.plot(result.dos, result.dos_frequencies, color="C1")
    ax_dos.set_xlabel("DOS (1/THz)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
