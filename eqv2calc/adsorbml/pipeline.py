"""AdsorbML orchestration: place, ML-relax, filter, deduplicate, rank, hand off to DFT.

:func:`run_adsorbml` runs the whole workflow for one or more clean slabs and one adsorbate with
any ASE calculator as the ML model, writing every result to ``<out_dir>/adsorbml.db`` as soon as
it exists; calling it again with the same settings resumes and skips what is done.
Energies in eV, forces in eV/Å, lengths in Å.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from eqv2calc.adsorbml.adsorbates import Adsorbate
from eqv2calc.adsorbml.anomalies import ALL_KINDS, ANOMALY_KINDS, detect_anomalies
from eqv2calc.adsorbml.cost import CostAccount, SCFModel, account, dense_estimate
from eqv2calc.adsorbml.dedup import deduplicate
from eqv2calc.adsorbml.energies import (
    GasReferences,
    adsorption_energy,
    compute_gas_references,
    energy_kind,
    oc20_gas_references,
)
from eqv2calc.adsorbml.placement import generate_placements
from eqv2calc.adsorbml.reference import DFT_MODES, run_reference
from eqv2calc.adsorbml.slabs import SlabSystem
from eqv2calc.adsorbml.store import ResultStore
from eqv2calc.io import calculator_label

__all__ = [
    "AdsorbMLConfig",
    "DFTRecord",
    "MLRecord",
    "SystemOutcome",
    "check_gas_references",
    "run_adsorbml",
    "run_system",
]

DB_NAME = "adsorbml.db"


@dataclass
class AdsorbMLConfig:
    """Settings of an AdsorbML run (defaults follow AdsorbML where it defines them).

    Placement: ``num_random`` random sites besides the heuristic ones, ``seed``, ``max_tilt``
    (degrees), ``min_distance_scale`` (× covalent radii sum), ``site_separation`` (Å between
    random sites). ML relaxation: ``optimizer``, ``fmax`` (eV/Å), ``steps``,
    ``max_atoms_per_batch``, ``relax_slab``. Filtering: ``desorption_multiplier``,
    ``surface_change_multiplier``, ``discard_migrated`` (drop configurations whose binding
    atom moved to another site type; by default they are reported and kept),
    ``discard_unconverged`` (drop ML relaxations that ran out of steps: their end point is not
    a minimum; by default they are kept, as in AdsorbML);
    dedup ``dedup_position_tol`` (Å), ``dedup_energy_tol`` (eV).
    Energies: ``gas_refs`` "computed" (with the same calculator) or "oc20"; per-element
    ``gas_ref_overrides`` (eV). Reference: ``top_k``, ``dft_mode`` "sp"/"rx", ``dft_fmax``,
    ``dft_steps``, ``dft_optimizer``. Cost: ``scf_first`` / ``scf_later`` (SCF steps of the first
    / each later ionic step, :class:`~eqv2calc.adsorbml.cost.SCFModel`). Outputs: ``write_vasp``
    (VASP input folders for the top-k, :mod:`~eqv2calc.adsorbml.vasp_inputs`, in ``dft_mode``).
    """

    num_random: int = 100
    seed: int = 0
    max_tilt: float = 20.0
    min_distance_scale: float = 0.9
    site_separation: float = 0.5
    heuristic_sites: bool = True
    optimizer: str = "LBFGS"
    fmax: float = 0.02
    steps: int = 300
    max_atoms_per_batch: int | None = None
    relax_slab: bool = True
    desorption_multiplier: float = 1.5
    surface_change_multiplier: float = 1.5
    dedup_position_tol: float = 0.25
    dedup_energy_tol: float = 0.02
    gas_refs: str = "computed"
    gas_ref_overrides: dict[str, float] = field(default_factory=dict)
    top_k: int = 5
    dft_mode: str = "sp"
    dft_fmax: float = 0.05
    dft_steps: int = 300
    dft_optimizer: str = "BFGS"
    progress: bool = True
    discard_migrated: bool = False
    discard_unconverged: bool = False
    write_vasp: bool = False
    scf_first: float = 25.0
    scf_later: float = 8.0

    @property
    def discarded_kinds(self) -> tuple[str, ...]:
        """Flag kinds that make a configuration invalid."""
        return ANOMALY_KINDS + (("migrated",) if self.discard_migrated else ())

    @property
    def scf_model(self) -> SCFModel:
        return SCFModel(self.scf_first, self.scf_later)

    def placement_settings(self) -> dict[str, Any]:
        return {
            "num_random": self.num_random,
            "seed": self.seed,
            "max_tilt": self.max_tilt,
            "min_distance_scale": self.min_distance_scale,
            "site_separation": self.site_separation,
            "heuristic_sites": self.heuristic_sites,
        }

    def ml_settings(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "fmax": self.fmax,
            "steps": self.steps,
            "relax_slab": self.relax_slab,
            "desorption_multiplier": self.desorption_multiplier,
            "surface_change_multiplier": self.surface_change_multiplier,
        }


@dataclass
class MLRecord:
    """One ML-relaxed placement."""

    pid: int
    site_type: str
    status: str  # "ok" or "failed"
    e_ml: float  # eV, the calculator's energy
    e_ads: float | None  # eV
    steps: int
    converged: bool
    anomalies: list[str]
    reasons: list[str]
    error: str | None
    atoms: Atoms
    initial: Atoms
    final_site: str | None = None
    discarded_kinds: tuple[str, ...] = ANOMALY_KINDS
    require_converged: bool = False

    @property
    def valid(self) -> bool:
        bad = set(self.anomalies) & set(self.discarded_kinds)
        unconverged = self.require_converged and not self.converged
        return self.status == "ok" and not bad and not unconverged and math.isfinite(self.e_ml)


@dataclass
class DFTRecord:
    """One reference calculation of a top-ranked configuration."""

    pid: int
    rank: int
    mode: str
    energy: float
    e_ads: float | None
    calls: int
    converged: bool
    anomalies: list[str]
    reasons: list[str]
    error: str | None
    atoms: Atoms
    discarded_kinds: tuple[str, ...] = ANOMALY_KINDS

    @property
    def valid(self) -> bool:
        bad = set(self.anomalies) & set(self.discarded_kinds)
        return self.error is None and not bad and math.isfinite(self.energy)


@dataclass
class SystemOutcome:
    """Everything known about one slab + adsorbate after a run."""

    name: str
    adsorbate: Adsorbate
    slab: Atoms
    notes: list[str]
    n_slab: int
    energy_kind: str
    model_label: str
    n_heuristic: int
    n_random: int
    ml: list[MLRecord]
    slab_ml: Atoms
    slab_energy_ml: float | None
    slab_steps_ml: int
    gas_ml: GasReferences | None
    groups: list[list[int]]  # pids, lowest energy first
    ranked: list[int]  # pids of unique valid configurations, best first
    top_k: list[int]
    new_ml_relaxations: int = 0
    dft_label: str | None = None
    dft_mode: str | None = None
    dft_energy_kind: str | None = None
    dft: list[DFTRecord] = field(default_factory=list)
    slab_dft: Atoms | None = None
    slab_energy_dft: float | None = None
    gas_dft: GasReferences | None = None
    dft_overhead_calls: int = 0
    new_dft_calls: int = 0

    def record(self, pid: int) -> MLRecord:
        for r in self.ml:
            if r.pid == pid:
                return r
        raise KeyError(pid)

    @property
    def anomaly_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ALL_KINDS, 0)
        for r in self.ml:
            for k in r.anomalies:
                counts[k] += 1
        counts["failed"] = sum(1 for r in self.ml if r.status != "ok")
        return counts

    @property
    def dft_adslab_calls(self) -> int:
        return int(sum(d.calls for d in self.dft))

    def exhaustive_estimate(self) -> tuple[float, str]:
        """Reference ionic steps to relax every placement with the reference method (the dense
        search), and the basis. The proxy is the ML relaxations from the same placements: RX runs
        start from ML minima and are much shorter than relaxations from a placement."""
        n = len(self.ml)
        steps = [r.steps + 1 for r in self.ml if r.status == "ok"]
        mean = float(np.mean(steps)) if steps else float("nan")
        return n * mean, (
            f"{n} placements x {mean:.1f} mean ionic steps of the ML relaxations (proxy for "
            "reference relaxations)"
        )

    def cost(self, scf_model: SCFModel | None = None) -> dict[str, Any]:
        """Reference cost in both accountings (:mod:`~eqv2calc.adsorbml.cost`): per k (the best k
        configurations computed), the dense estimate and the speed-ups dense / used."""
        model = scf_model or SCFModel()
        dense_calls, basis = self.exhaustive_estimate()
        n = len(self.ml)
        mean = dense_calls / n if n else float("nan")
        dense = dense_estimate(n, mean, model)
        by_k = []
        ks = sorted({d.rank for d in self.dft})
        for k in ks:
            used = account([d.calls for d in self.dft if d.rank <= k], model)
            by_k.append({"k": k, **_cost_row(used, dense)})
        total = account([d.calls for d in self.dft], model)
        return {
            "mode": self.dft_mode,
            "scf_model": model.as_dict(),
            "used": _cost_row(total, dense),
            "by_k": by_k,
            "dense_estimate": dense.as_dict(),
            "dense_basis": basis,
            "overhead_calls": self.dft_overhead_calls,
        }

    def best_dft(self) -> DFTRecord | None:
        valid = [d for d in self.dft if d.valid]
        if not valid:
            return None
        key = (
            (lambda d: d.e_ads) if all(d.e_ads is not None for d in valid) else (lambda d: d.energy)
        )
        return min(valid, key=key)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _structure_hash(atoms: Atoms) -> str:
    h = hashlib.sha256()
    h.update(atoms.numbers.tobytes())
    h.update(np.round(atoms.positions, 4).tobytes())
    h.update(np.round(np.asarray(atoms.cell), 4).tobytes())
    h.update(atoms.get_tags().astype(np.int64).tobytes())
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    h.update(fixed.tobytes())
    return h.hexdigest()[:16]


def _attach(atoms: Atoms, energy: float, forces: np.ndarray | None = None) -> Atoms:
    out = atoms.copy()
    kw: dict[str, Any] = {"energy": float(energy)}
    if forces is not None:
        kw["forces"] = np.asarray(forces)
    out.calc = SinglePointCalculator(out, **kw)
    return out


def _relax_kwargs(cfg: AdsorbMLConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"optimizer": cfg.optimizer, "fmax": cfg.fmax, "steps": cfg.steps}
    if cfg.max_atoms_per_batch is not None:
        kw["max_atoms_per_batch"] = cfg.max_atoms_per_batch
    return kw


def _cost_row(used: CostAccount, dense: CostAccount) -> dict[str, Any]:
    from eqv2calc.adsorbml.cost import speedup

    row: dict[str, Any] = used.as_dict()
    row["speedup_ionic"] = _round(speedup(dense.ionic_steps, used.ionic_steps))
    row["speedup_scf"] = _round(speedup(dense.scf_steps, used.scf_steps))
    return row


def _round(x: float, nd: int = 1) -> float | None:
    return round(float(x), nd) if math.isfinite(x) else None


def _gas_references(
    calc: Any, mode: str, elements: list[str], overrides: dict[str, float], label: str
) -> GasReferences:
    if mode == "oc20":
        return oc20_gas_references(overrides)
    if mode == "computed":
        return compute_gas_references(calc, elements, label=label, overrides=overrides)
    raise ValueError(f"unknown gas reference mode {mode!r}; use computed or oc20")


#: resume settings that identify an eqv2calc model beyond its label (see :func:`_model_identity`)
MODEL_IDENTITY_KEYS = ("model_sha256", "dtype")


def _model_identity(calc: Any) -> dict[str, Any]:
    """What identifies an eqv2calc model beyond its label, for the resume check: the SHA-256 of
    its checkpoint file (a checkpoint replaced under the same path is another model) and the
    precision it runs in (``float32``, ``float64``, or the ``--precision`` mode such as ``tf32``).
    Empty for other calculators (EMT, ...), which are identified by their class name."""
    if not hasattr(type(calc), "model_sha256"):
        return {}
    try:
        sha = calc.model_sha256
    except OSError as err:
        path = getattr(calc, "model_path", "the model checkpoint")
        raise RuntimeError(f"cannot read {path} to identify the model: {err}") from None
    precision = getattr(getattr(calc, "precision", None), "name", None)
    dtype = precision or str(getattr(calc, "dtype", "")).removeprefix("torch.") or None
    return {"model_sha256": sha, "dtype": dtype}


def _registry_card(calc: Any) -> Any | None:
    """The registry card of an eqv2calc calculator's checkpoint (by SHA-256, else by file
    name), or None."""
    if not hasattr(type(calc), "model_sha256"):
        return None
    from eqv2calc.registry import card_for_file, list_cards

    try:
        sha = calc.model_sha256
    except OSError:
        sha = None
    if sha is not None:
        card = next((c for c in list_cards() if c.sha256 and c.sha256.lower() == sha), None)
        if card is not None:
            return card
    path = getattr(calc, "model_path", None)
    return card_for_file(path) if path is not None else None


def _not_dft_scale(calc: Any) -> str | None:
    """What ``calc`` is when its energies are known not to be DFT total energies (so OC20's RPBE
    gas references do not apply to them), or None when nothing says so."""
    from ase.calculators.emt import EMT

    if isinstance(calc, EMT):
        return "ASE's EMT potential"
    if str(getattr(calc, "energy_kind", "") or "").lower() == "emt":
        return "a calculator of EMT energies"
    card = _registry_card(calc)
    if card is not None and card.energy_kind == "emt":
        return f"the model {card.name}, which imitates ASE's EMT"
    return None


class _CheckpointFile:
    """A checkpoint not loaded yet, as :func:`check_gas_references` sees a calculator: its file
    and SHA-256 (for the registry card) and the card's energy kind."""

    model_sha256: str | None = None  # a class attribute, as on EquiformerV2Calculator

    def __init__(self, path: Any, label: str, sha256: str | None):
        self.model_path = path
        self.model_label = label
        self.model_sha256 = sha256
        card = _registry_card(self)
        self.energy_kind = "adsorption" if card and card.energy_kind == "adsorption" else "total"


def check_gas_references_early(
    model: str | None,
    dft: str | None,
    adsorbates: Any,
    config: AdsorbMLConfig,
    model_sha256: str | None,
) -> None:
    """:func:`check_gas_references` before a campaign creates anything, from the ``--model``
    and ``--dft`` names (``"emt"``, a registry name or a checkpoint path) and the checkpoint's
    SHA-256 the campaign computed for its ledger (None: the driver cannot see the file; each
    system's own check then decides). Nothing is loaded, downloaded or hashed here.

    Raises:
        ValueError: as :func:`check_gas_references`.
    """
    if config.gas_refs != "oc20":
        return
    from ase.calculators.emt import EMT

    from eqv2calc.registry import resolve_model

    if model is not None and str(model).lower() == "emt":
        calc: Any = EMT()
    elif model_sha256 is None:
        return
    else:
        path = resolve_model(model, download=False, progress=False)  # hashed: it is here
        calc = _CheckpointFile(path, str(model) if model else "(the bundled default)", model_sha256)
    dft_calc = EMT() if dft is not None and str(dft).lower() == "emt" else None
    for adsorbate in adsorbates:
        check_gas_references(calc, adsorbate, config, dft_calculator=dft_calc, dft_label=dft)


def check_gas_references(
    calculator: Any,
    adsorbate: Adsorbate,
    config: AdsorbMLConfig,
    *,
    dft_calculator: Any | None = None,
    dft_label: str | None = None,
) -> list[str]:
    """Refuse OC20's gas references (RPBE DFT energies) for a calculator whose total energies
    are known not to be DFT energies (EMT, models imitating EMT): E_ads would mix two energy
    scales and mean nothing. Returns notes for calculators whose scale cannot be told.

    Raises:
        ValueError: naming the calculator and the alternatives.
    """
    if config.gas_refs != "oc20":
        return []
    used = sorted(set(adsorbate.symbols) - set(config.gas_ref_overrides))
    if not used:
        return []  # every element the adsorbate needs is overridden: the table is not used
    notes: list[str] = []
    levels = [(calculator, calculator_label(calculator), "--model")]
    if dft_calculator is not None:
        levels.append((dft_calculator, dft_label or calculator_label(dft_calculator), "--dft"))
    for calc, label, option in levels:
        if energy_kind(calc) != "total":
            continue  # predicts adsorption energies: no gas references
        what = _not_dft_scale(calc)
        if what is not None:
            raise ValueError(
                f"--gas-refs oc20 cannot be used with {option} {label} ({what}): its energies "
                f"are not DFT total energies, and OC20's gas references ({', '.join(used)}) are "
                "RPBE DFT energies, so the adsorption energies would mean nothing; use "
                "--gas-refs computed (references computed with the same calculator) or give "
                "references on its energy scale with --gas-ref EL=VALUE"
            )
        if not hasattr(type(calc), "model_sha256") and option == "--model":
            notes.append(
                f"--gas-refs oc20: OC20's gas references are RPBE DFT energies; E_ads is only "
                f"meaningful if {label} gives RPBE total energies"
            )
    return notes


def _refmode(cfg: AdsorbMLConfig) -> str:
    """Identifies how gas references are made (mode and overrides), for the database."""
    over = ",".join(f"{k}={v!r}" for k, v in sorted(cfg.gas_ref_overrides.items()))
    return f"{cfg.gas_refs};{over}"


def _gas_from_row(row: Any) -> GasReferences:
    d = row.data
    return GasReferences(
        refs=dict(d["per_element_eV"]),
        source=str(d["source"]),
        molecules=dict(d.get("molecule_energies_eV", {})),
        calls=int(d.get("calls", 0)),
    )


# ----------------------------------------------------------------------------------------------
# the workflow
# ----------------------------------------------------------------------------------------------


def _row_fields(row: Any, cfg: AdsorbMLConfig) -> dict[str, Any]:
    """The fields an ML and a reference record share, read from a database row."""
    return {
        "anomalies": [] if row.anomaly in ("none", "failed") else str(row.anomaly).split(","),
        "reasons": list(row.data.get("reasons", [])),
        "error": row.get("error"),
        "atoms": row.toatoms(),
        "discarded_kinds": cfg.discarded_kinds,
    }


def _stored_gas_references(
    store: ResultStore,
    name: str,
    *,
    level: str,
    calc: Any,
    label: str,
    symbols: list[str],
    cfg: AdsorbMLConfig,
) -> tuple[GasReferences, bool]:
    """Gas-phase references (eV) at ``level`` ("ml" or "dft:<label>") from the database,
    computed with ``calc`` and stored when missing; the flag says whether they were computed."""
    grow = store.get("gasref", name, level=level, refmode=_refmode(cfg))
    if grow is not None:
        return _gas_from_row(grow), False
    gas = _gas_references(calc, cfg.gas_refs, sorted(set(symbols)), cfg.gas_ref_overrides, label)
    store.put(Atoms(), "gasref", name, data=gas.to_dict(), level=level, refmode=_refmode(cfg))
    return gas, True


@dataclass
class _SystemRun:
    """What the steps of :func:`run_system` share: the system, its calculator and settings."""

    system: SlabSystem
    adsorbate: Adsorbate
    calculator: Any
    store: ResultStore
    cfg: AdsorbMLConfig
    kind: str  # the calculator's energy kind: "total" or "adsorption"
    model_label: str

    @property
    def name(self) -> str:
        return self.system.name

    @property
    def slab(self) -> Atoms:
        return self.system.atoms


def _prepare(run: _SystemRun) -> tuple[dict[int, Atoms], dict[int, str]]:
    """Check the stored settings and write every placement before any relaxation; returns
    the initial structures and site types by placement id."""
    cfg, store, name = run.cfg, run.store, run.name
    store.check_settings(
        name,
        {
            "slab": _structure_hash(run.slab),
            "adsorbate": run.adsorbate.name,
            "adsorbate_geometry": _structure_hash(run.adsorbate.atoms),
            **cfg.placement_settings(),
        },
        "placement",
    )
    store.check_settings(
        name,
        {
            "model": run.model_label,
            "energy_kind": run.kind,
            **_model_identity(run.calculator),
            **cfg.ml_settings(),
        },
        "ml",
        # Databases written before the checkpoint hash and the precision were recorded lack
        # these keys: what their results were computed with is unknown, so the keys are not
        # compared (the model label still is, as before) and not added either (recording the
        # current hash would claim the old results were made with it).
        new_keys=MODEL_IDENTITY_KEYS,
    )
    rows = store.all("placement", name)
    if not rows:
        kw = cfg.placement_settings()
        kw["heuristic"] = kw.pop("heuristic_sites")
        placements = generate_placements(run.slab, run.adsorbate, **kw)
        store.put_many(
            [
                (
                    p.atoms,
                    {"site": p.site.tolist()},
                    {
                        "pid": p.pid,
                        "site_type": p.site_type,
                        "rotation": p.rotation,
                        "tilt": p.tilt,
                        "lift": p.lift,
                    },
                )
                for p in placements
            ],
            "placement",
            name,
        )
        rows = store.all("placement", name)
    initial = {int(r.pid): r.toatoms() for r in rows}
    site_types = {int(r.pid): str(r.site_type) for r in rows}
    return initial, site_types


def _clean_slab(run: _SystemRun) -> tuple[Atoms, float, int]:
    """The ML-relaxed clean slab (or the slab as given, with ``relax_slab`` off), its energy
    (eV) and the optimizer steps it took; computed once, then read from the database."""
    from eqv2calc.drivers import relax_batch

    cfg, store, name, slab = run.cfg, run.store, run.name, run.slab
    row = store.get("slab_ml", name)
    if row is None:
        if cfg.relax_slab:
            res = relax_batch(
                [slab],
                run.calculator,
                progress=False,
                labels=[f"{name}_slab"],
                **_relax_kwargs(cfg),
            )[0]
            if res.error:
                raise RuntimeError(f"ML relaxation of the clean slab {name} failed: {res.error}")
            slab_atoms, e_slab, slab_steps = res.atoms, float(res.final_energy), int(res.steps)
            converged = bool(res.converged)
        else:
            work = slab.copy()
            work.calc = run.calculator
            e_slab = float(work.get_potential_energy())
            slab_atoms, slab_steps, converged = _attach(slab, e_slab), 0, True
        store.put(slab_atoms, "slab_ml", name, e_ml=e_slab, steps=slab_steps, converged=converged)
        row = store.get("slab_ml", name)
    return row.toatoms(), float(row.e_ml), int(row.steps)


def _relax_placements(
    run: _SystemRun, initial: dict[int, Atoms], site_types: dict[int, str], slab_ml: Atoms
) -> int:
    """ML-relax every placement not yet in the database, each written (with its anomaly
    flags) as soon as it finishes; returns how many were relaxed now."""
    cfg, store, name = run.cfg, run.store, run.name
    binding = [len(run.slab) + i for i in run.adsorbate.binding_indices]
    done = {int(r.pid) for r in store.all("ml", name)}
    todo = [pid for pid in sorted(initial) if pid not in done]

    def write_ml(i: int, res: Any) -> None:
        pid = todo[i]
        if res.error:
            store.put(
                initial[pid],
                "ml",
                name,
                data={"reasons": [], "error": res.error},
                pid=pid,
                site_type=site_types[pid],
                status="failed",
                steps=int(res.steps),
                converged=False,
                anomaly="failed",
                error=res.error[:200],
            )
            return
        rep = detect_anomalies(
            initial[pid],
            res.atoms,
            slab_ml,
            desorption_multiplier=cfg.desorption_multiplier,
            surface_change_multiplier=cfg.surface_change_multiplier,
            binding=binding,
        )
        store.put(
            res.atoms,
            "ml",
            name,
            data={"reasons": rep.reasons, "energies": [float(e) for e in res.energies]},
            pid=pid,
            site_type=site_types[pid],
            status="ok",
            e_ml=float(res.final_energy),
            steps=int(res.steps),
            converged=bool(res.converged),
            max_force=float(res.max_force),
            anomaly=rep.label(),
            placed_site=rep.placed_site,
            final_site=rep.final_site,
        )

    if todo:
        from eqv2calc.drivers.batch_relax import relax_auto  # torch engine, else ASE

        relax_auto(
            [initial[p] for p in todo],
            run.calculator,
            progress=cfg.progress,
            labels=[f"{name}_p{p}" for p in todo],
            on_result=write_ml,
            **_relax_kwargs(cfg),
        )
    return len(todo)


def _ml_records(
    run: _SystemRun, initial: dict[int, Atoms], e_slab_ml: float, gas_ml: GasReferences | None
) -> list[MLRecord]:
    """Every stored ML relaxation as a record, with its adsorption energy (eV)."""
    ml: list[MLRecord] = []
    for r in run.store.all("ml", run.name):
        pid = int(r.pid)
        e = float(r.get("e_ml", float("nan")))
        e_ads = None
        if r.status == "ok":
            e_ads = (
                e
                if run.kind == "adsorption"
                else adsorption_energy(e, e_slab_ml, run.adsorbate.symbols, gas_ml.refs)
            )
        ml.append(
            MLRecord(
                pid=pid,
                site_type=str(r.site_type),
                status=str(r.status),
                e_ml=e,
                e_ads=e_ads,
                steps=int(r.get("steps", 0)),
                converged=bool(r.get("converged", False)),
                initial=initial[pid],
                final_site=r.get("final_site"),
                require_converged=run.cfg.discard_unconverged,
                **_row_fields(r, run.cfg),
            )
        )
    return ml


def _rank(
    ml: list[MLRecord], slab_ml: Atoms, cfg: AdsorbMLConfig
) -> tuple[list[list[int]], list[int]]:
    """Deduplicate the valid configurations: the groups of pids (lowest energy first) and the
    pid of each group's best, best first."""
    valid = [m for m in ml if m.valid]
    groups_idx = deduplicate(
        [m.atoms for m in valid],
        [m.e_ml for m in valid],
        len(slab_ml),
        slab_ml,
        position_tol=cfg.dedup_position_tol,
        energy_tol=cfg.dedup_energy_tol,
    )
    groups = [[valid[i].pid for i in g] for g in groups_idx]
    return groups, [g[0] for g in groups]


def run_system(
    system: SlabSystem,
    adsorbate: Adsorbate,
    calculator: Any,
    store: ResultStore,
    config: AdsorbMLConfig,
    *,
    dft_calculator: Any | None = None,
    dft_label: str | None = None,
) -> SystemOutcome:
    """Run (or resume) AdsorbML for one slab; see :func:`run_adsorbml`.

    Steps: prepare (settings check, placements, clean slab, gas references), run (the ML
    relaxations), observe (records, filter, deduplicate, rank), finish (reference
    calculations of the top-k)."""
    cfg = config
    gas_notes = check_gas_references(
        calculator, adsorbate, cfg, dft_calculator=dft_calculator, dft_label=dft_label
    )
    run = _SystemRun(
        system=system,
        adsorbate=adsorbate,
        calculator=calculator,
        store=store,
        cfg=cfg,
        kind=energy_kind(calculator),
        model_label=calculator_label(calculator),
    )
    # prepare
    initial, site_types = _prepare(run)
    n_heuristic = sum(1 for t in site_types.values() if t != "random")
    slab_ml, e_slab_ml, slab_steps_ml = _clean_slab(run)
    gas_ml: GasReferences | None = None
    if run.kind == "total":
        gas_ml, _ = _stored_gas_references(
            store,
            run.name,
            level="ml",
            calc=calculator,
            label=run.model_label,
            symbols=adsorbate.symbols,
            cfg=cfg,
        )
    # run
    new_ml = _relax_placements(run, initial, site_types, slab_ml)
    # observe
    ml = _ml_records(run, initial, e_slab_ml, gas_ml)
    groups, ranked = _rank(ml, slab_ml, cfg)
    top_k = ranked[: max(cfg.top_k, 0)]
    outcome = SystemOutcome(
        name=run.name,
        adsorbate=adsorbate,
        slab=run.slab,
        notes=list(system.notes) + gas_notes,
        n_slab=len(run.slab),
        energy_kind=run.kind,
        model_label=run.model_label,
        n_heuristic=n_heuristic,
        n_random=len(initial) - n_heuristic,
        ml=ml,
        slab_ml=slab_ml,
        slab_energy_ml=e_slab_ml,
        slab_steps_ml=slab_steps_ml,
        gas_ml=gas_ml,
        groups=groups,
        ranked=ranked,
        top_k=top_k,
        new_ml_relaxations=new_ml,
    )
    # finish
    if dft_calculator is not None and top_k:
        _run_dft(outcome, store, cfg, dft_calculator, dft_label or calculator_label(dft_calculator))
    return outcome


def _reference_slab(
    outcome: SystemOutcome, store: ResultStore, calc: Any, label: str, ref_kw: dict[str, Any]
) -> tuple[Atoms, float, int, int]:
    """The clean slab with the reference calculator: its structure, energy (eV), calls and
    the calls made now (computed once, then read from the database)."""
    name, mode = outcome.name, outcome.dft_mode
    row = store.get("slab_dft", name, mode=mode, dft=label)
    new_calls = 0
    if row is None:
        res = run_reference(outcome.slab_ml, calc, mode, label=f"{name}_slab", **ref_kw)
        if res.error:
            raise RuntimeError(
                f"reference calculation of the clean slab {name} failed: {res.error}"
            )
        store.put(
            res.atoms, "slab_dft", name, mode=mode, dft=label, e_dft=res.energy, calls=res.calls
        )
        new_calls = res.calls
        row = store.get("slab_dft", name, mode=mode, dft=label)
    return row.toatoms(), float(row.e_dft), int(row.calls), new_calls


def _reference_top_k(
    outcome: SystemOutcome,
    store: ResultStore,
    cfg: AdsorbMLConfig,
    calc: Any,
    ref_kw: dict[str, Any],
) -> int:
    """Run the reference calculator on every top-k configuration not yet in the database,
    each written as soon as it finishes; returns the calls made."""
    name, mode, label = outcome.name, outcome.dft_mode, outcome.dft_label
    todo = [
        (rank, pid)
        for rank, pid in enumerate(outcome.top_k, start=1)
        if store.get("dft", name, pid=pid, mode=mode, dft=label) is None
    ]
    new_calls = 0
    bar = None
    if todo and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"reference ({label}, {mode})", unit="calc")
    try:
        for rank, pid in todo:
            rec = outcome.record(pid)
            res = run_reference(rec.atoms, calc, mode, label=f"{name}_p{pid}", **ref_kw)
            reasons: list[str] = []
            anomaly = "none"
            if res.error:
                anomaly = "failed"
            elif mode == "rx":
                rep = detect_anomalies(
                    rec.initial,
                    res.atoms,
                    outcome.slab_dft,
                    desorption_multiplier=cfg.desorption_multiplier,
                    surface_change_multiplier=cfg.surface_change_multiplier,
                    binding=[outcome.n_slab + i for i in outcome.adsorbate.binding_indices],
                )
                anomaly, reasons = rep.label(), rep.reasons
            store.put(
                res.atoms,
                "dft",
                name,
                data={"reasons": reasons, "error": res.error},
                pid=pid,
                rank=rank,
                mode=mode,
                dft=label,
                e_dft=res.energy,
                calls=res.calls,
                converged=res.converged,
                anomaly=anomaly,
                error=(res.error or None),
            )
            new_calls += res.calls
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return new_calls


def _dft_records(
    outcome: SystemOutcome, store: ResultStore, cfg: AdsorbMLConfig, kind: str
) -> list[DFTRecord]:
    """The stored reference results of the top-k, with adsorption energies (eV)."""
    name, mode = outcome.name, outcome.dft_mode
    e_slab, gas = outcome.slab_energy_dft, outcome.gas_dft
    records: list[DFTRecord] = []
    for rank, pid in enumerate(outcome.top_k, start=1):
        row = store.get("dft", name, pid=pid, mode=mode, dft=outcome.dft_label)
        if row is None:
            continue
        energy = float(row.get("e_dft", float("nan")))
        e_ads = None
        if math.isfinite(energy):
            if kind == "adsorption":
                e_ads = energy
            elif e_slab is not None and gas is not None:
                e_ads = adsorption_energy(energy, e_slab, outcome.adsorbate.symbols, gas.refs)
        records.append(
            DFTRecord(
                pid=pid,
                rank=rank,
                mode=mode,
                energy=energy,
                e_ads=e_ads,
                calls=int(row.calls),
                converged=bool(row.converged),
                **_row_fields(row, cfg),
            )
        )
    return records


def _run_dft(
    outcome: SystemOutcome, store: ResultStore, cfg: AdsorbMLConfig, calc: Any, label: str
) -> None:
    """Reference calculations of the top-k (and the clean slab and gas references they need)."""
    if cfg.dft_mode not in DFT_MODES:
        raise ValueError(f"unknown --dft-mode {cfg.dft_mode!r}; use sp or rx")
    name = outcome.name
    mode = cfg.dft_mode
    kind = energy_kind(calc)
    store.check_settings(
        name,
        {"fmax": cfg.dft_fmax, "steps": cfg.dft_steps, "optimizer": cfg.dft_optimizer}
        if mode == "rx"
        else {},
        f"dft:{label}:{mode}",
    )
    outcome.dft_label, outcome.dft_mode, outcome.dft_energy_kind = label, mode, kind
    ref_kw = {"fmax": cfg.dft_fmax, "steps": cfg.dft_steps, "optimizer": cfg.dft_optimizer}
    overhead = 0
    new_calls = 0

    # clean slab: its energy for E_ads (total-energy references) and, in rx mode, its relaxed
    # geometry for the surface-change test
    slab_ref: Atoms | None = None
    e_slab: float | None = None
    if kind == "total" or mode == "rx":
        slab_ref, e_slab, calls, new = _reference_slab(outcome, store, calc, label, ref_kw)
        overhead += calls
        new_calls += new
    outcome.slab_dft, outcome.slab_energy_dft = slab_ref, e_slab

    gas: GasReferences | None = None
    if kind == "total":
        gas, computed = _stored_gas_references(
            store,
            name,
            level=f"dft:{label}",
            calc=calc,
            label=label,
            symbols=outcome.adsorbate.symbols,
            cfg=cfg,
        )
        if computed:
            new_calls += gas.calls
        overhead += gas.calls
    outcome.gas_dft = gas

    new_calls += _reference_top_k(outcome, store, cfg, calc, ref_kw)
    outcome.dft = _dft_records(outcome, store, cfg, kind)
    outcome.dft_overhead_calls = overhead
    outcome.new_dft_calls = new_calls


def run_adsorbml(
    systems: list[SlabSystem] | SlabSystem,
    adsorbate: Adsorbate,
    calculator: Any,
    out_dir: str | os.PathLike,
    config: AdsorbMLConfig | None = None,
    *,
    dft_calculator: Any | None = None,
    dft_label: str | None = None,
    write_outputs: bool = True,
) -> list[SystemOutcome]:
    """Run (or resume) AdsorbML for every slab in ``systems`` and one adsorbate.

    Args:
        systems: clean slab(s), tags 0/1 and FixAtoms set (see :mod:`eqv2calc.adsorbml.slabs`).
        adsorbate: from :func:`eqv2calc.adsorbml.adsorbates.get_adsorbate` or a file.
        calculator: the ML model (any ASE calculator; ``energy_kind == "adsorption"`` means it
            predicts adsorption energies as OC20 models do).
        out_dir: output folder: ``adsorbml.db``, ``summary.json``, ``energies.png``, ``topk/``.
        config: settings (:class:`AdsorbMLConfig`).
        dft_calculator: reference calculator for the top-k, or None to only write them out.
        dft_label: name of the reference method (e.g. "emt", "vasp").
        write_outputs: write the summary JSON, plot and top-k files.

    Returns:
        One :class:`SystemOutcome` per slab.

    Raises:
        ResumeMismatchError: ``out_dir`` holds results made with other settings (model label,
            checkpoint SHA-256, precision, relaxation and placement options).
        DamagedStoreError: ``adsorbml.db`` cannot be read; it is left as it is.
        ValueError: e.g. ``gas_refs="oc20"`` with a calculator of EMT energies
            (:func:`check_gas_references`).
    """
    cfg = config or AdsorbMLConfig()
    if isinstance(systems, SlabSystem):
        systems = [systems]
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"slab names must be unique, got {names}")
    # before the output folder and the database exist
    check_gas_references(
        calculator, adsorbate, cfg, dft_calculator=dft_calculator, dft_label=dft_label
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / DB_NAME)
    outcomes = [
        run_system(
            s, adsorbate, calculator, store, cfg, dft_calculator=dft_calculator, dft_label=dft_label
        )
        for s in systems
    ]
    if write_outputs:
        from eqv2calc.adsorbml.report import write_outputs as _write

        _write(outcomes, out, cfg)
    return outcomes


def config_dict(cfg: AdsorbMLConfig) -> dict[str, Any]:
    """The settings as a JSON-friendly dict."""
    return asdict(cfg)
