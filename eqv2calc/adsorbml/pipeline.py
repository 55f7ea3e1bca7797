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
    """Run (or resume) AdsorbML for one slab; see :func:`run_adsorbml`."""
    from eqv2calc.drivers import relax_batch

    cfg = config
    name = system.name
    slab = system.atoms
    n_slab = len(slab)
    kind = energy_kind(calculator)
    model_label = calculator_label(calculator)
    ads_symbols = adsorbate.symbols

    store.check_settings(
        name,
        {
            "slab": _structure_hash(slab),
            "adsorbate": adsorbate.name,
            "adsorbate_geometry": _structure_hash(adsorbate.atoms),
            **cfg.placement_settings(),
        },
        "placement",
    )
    store.check_settings(
        name, {"model": model_label, "energy_kind": kind, **cfg.ml_settings()}, "ml"
    )

    # 1. placements (all written before any relaxation)
    rows = store.all("placement", name)
    if not rows:
        placements = generate_placements(
            slab,
            adsorbate,
            num_random=cfg.num_random,
            seed=cfg.seed,
            max_tilt=cfg.max_tilt,
            min_distance_scale=cfg.min_distance_scale,
            site_separation=cfg.site_separation,
            heuristic=cfg.heuristic_sites,
        )
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
    n_heuristic = sum(1 for t in site_types.values() if t != "random")

    # 2. clean slab
    row = store.get("slab_ml", name)
    if row is None:
        if cfg.relax_slab:
            res = relax_batch(
                [slab], calculator, progress=False, labels=[f"{name}_slab"], **_relax_kwargs(cfg)
            )[0]
            if res.error:
                raise RuntimeError(f"ML relaxation of the clean slab {name} failed: {res.error}")
            slab_atoms, e_slab, slab_steps = res.atoms, float(res.final_energy), int(res.steps)
            converged = bool(res.converged)
        else:
            work = slab.copy()
            work.calc = calculator
            e_slab = float(work.get_potential_energy())
            slab_atoms, slab_steps, converged = _attach(slab, e_slab), 0, True
        store.put(slab_atoms, "slab_ml", name, e_ml=e_slab, steps=slab_steps, converged=converged)
        row = store.get("slab_ml", name)
    slab_ml = row.toatoms()
    e_slab_ml = float(row.e_ml)
    slab_steps_ml = int(row.steps)

    # 3. gas references for the ML energies
    gas_ml: GasReferences | None = None
    if kind == "total":
        grow = store.get("gasref", name, level="ml", refmode=_refmode(cfg))
        if grow is None:
            gas_ml = _gas_references(
                calculator,
                cfg.gas_refs,
                sorted(set(ads_symbols)),
                cfg.gas_ref_overrides,
                model_label,
            )
            store.put(
                Atoms(), "gasref", name, data=gas_ml.to_dict(), level="ml", refmode=_refmode(cfg)
            )
        else:
            gas_ml = _gas_from_row(grow)

    # 4. ML relaxations, each written as soon as it finishes
    binding = [n_slab + i for i in adsorbate.binding_indices]
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
        from eqv2calc.engine import relax_auto  # torch engine for eqv2calc models, else ASE

        relax_auto(
            [initial[p] for p in todo],
            calculator,
            progress=cfg.progress,
            labels=[f"{name}_p{p}" for p in todo],
            on_result=write_ml,
            **_relax_kwargs(cfg),
        )

    # 5. collect, filter, deduplicate, rank
    ml: list[MLRecord] = []
    for r in store.all("ml", name):
        pid = int(r.pid)
        e = float(r.get("e_ml", float("nan")))
        e_ads = None
        if r.status == "ok":
            e_ads = (
                e
                if kind == "adsorption"
                else adsorption_energy(e, e_slab_ml, ads_symbols, gas_ml.refs)
            )
        anomalies = [] if r.anomaly in ("none", "failed") else str(r.anomaly).split(",")
        ml.append(
            MLRecord(
                pid=pid,
                site_type=str(r.site_type),
                status=str(r.status),
                e_ml=e,
                e_ads=e_ads,
                steps=int(r.get("steps", 0)),
                converged=bool(r.get("converged", False)),
                anomalies=anomalies,
                reasons=list(r.data.get("reasons", [])),
                error=r.get("error"),
                atoms=r.toatoms(),
                initial=initial[pid],
                final_site=r.get("final_site"),
                discarded_kinds=cfg.discarded_kinds,
                require_converged=cfg.discard_unconverged,
            )
        )
    valid = [m for m in ml if m.valid]
    groups_idx = deduplicate(
        [m.atoms for m in valid],
        [m.e_ml for m in valid],
        n_slab,
        slab_ml,
        position_tol=cfg.dedup_position_tol,
        energy_tol=cfg.dedup_energy_tol,
    )
    groups = [[valid[i].pid for i in g] for g in groups_idx]
    ranked = [g[0] for g in groups]
    top_k = ranked[: max(cfg.top_k, 0)]

    outcome = SystemOutcome(
        name=name,
        adsorbate=adsorbate,
        slab=slab,
        notes=list(system.notes),
        n_slab=n_slab,
        energy_kind=kind,
        model_label=model_label,
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
        new_ml_relaxations=len(todo),
    )

    # 6. reference calculations
    if dft_calculator is not None and top_k:
        _run_dft(outcome, store, cfg, dft_calculator, dft_label or calculator_label(dft_calculator))
    return outcome


def _run_dft(
    outcome: SystemOutcome, store: ResultStore, cfg: AdsorbMLConfig, calc: Any, label: str
) -> None:
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
        row = store.get("slab_dft", name, mode=mode, dft=label)
        if row is None:
            res = run_reference(outcome.slab_ml, calc, mode, label=f"{name}_slab", **ref_kw)
            if res.error:
                raise RuntimeError(
                    f"reference calculation of the clean slab {name} failed: {res.error}"
                )
            store.put(
                res.atoms, "slab_dft", name, mode=mode, dft=label, e_dft=res.energy, calls=res.calls
            )
            new_calls += res.calls
            row = store.get("slab_dft", name, mode=mode, dft=label)
        slab_ref = row.toatoms()
        e_slab = float(row.e_dft)
        overhead += int(row.calls)
    outcome.slab_dft, outcome.slab_energy_dft = slab_ref, e_slab

    gas: GasReferences | None = None
    if kind == "total":
        level = f"dft:{label}"
        grow = store.get("gasref", name, level=level, refmode=_refmode(cfg))
        if grow is None:
            gas = _gas_references(
                calc,
                cfg.gas_refs,
                sorted(set(outcome.adsorbate.symbols)),
                cfg.gas_ref_overrides,
                label,
            )
            store.put(
                Atoms(), "gasref", name, data=gas.to_dict(), level=level, refmode=_refmode(cfg)
            )
            new_calls += gas.calls
        else:
            gas = _gas_from_row(grow)
        overhead += gas.calls
    outcome.gas_dft = gas

    todo = [
        (rank, pid)
        for rank, pid in enumerate(outcome.top_k, start=1)
        if store.get("dft", name, pid=pid, mode=mode, dft=label) is None
    ]
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
                    slab_ref,
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

    records: list[DFTRecord] = []
    for rank, pid in enumerate(outcome.top_k, start=1):
        row = store.get("dft", name, pid=pid, mode=mode, dft=label)
        if row is None:
            continue
        energy = float(row.get("e_dft", float("nan")))
        e_ads = None
        if math.isfinite(energy):
            if kind == "adsorption":
                e_ads = energy
            elif e_slab is not None and gas is not None:
                e_ads = adsorption_energy(energy, e_slab, outcome.adsorbate.symbols, gas.refs)
        anomalies = [] if row.anomaly in ("none", "failed") else str(row.anomaly).split(",")
        records.append(
            DFTRecord(
                pid=pid,
                rank=rank,
                mode=mode,
                energy=energy,
                e_ads=e_ads,
                calls=int(row.calls),
                converged=bool(row.converged),
                anomalies=anomalies,
                reasons=list(row.data.get("reasons", [])),
                error=row.get("error"),
                atoms=row.toatoms(),
                discarded_kinds=cfg.discarded_kinds,
            )
        )
    outcome.dft = records
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
    """
    cfg = config or AdsorbMLConfig()
    if isinstance(systems, SlabSystem):
        systems = [systems]
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"slab names must be unique, got {names}")
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
