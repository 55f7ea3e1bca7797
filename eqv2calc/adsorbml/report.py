"""AdsorbML outputs: terminal table, JSON summary, energy plot and the top-k structure files.

Every file is written atomically (temporary file, then ``os.replace``). Energies in eV.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ase.calculators.singlepoint import SinglePointCalculator

from eqv2calc.adsorbml.anomalies import ALL_KINDS, ANOMALY_KINDS
from eqv2calc.io import atomic_path, write_json_atomic, write_structure
from eqv2calc.plotting import pyplot

__all__ = [
    "format_table",
    "summary_dict",
    "write_outputs",
    "write_plot",
    "write_top_k",
]


def _num(x: float | None, nd: int = 4) -> float | None:
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), nd)


# ----------------------------------------------------------------------------------------------
# top-k files
# ----------------------------------------------------------------------------------------------


def write_top_k(outcome: Any, out_dir: Path) -> list[dict[str, str]]:
    """Write the top-k ML-relaxed configurations of one system as extxyz and VASP POSCAR files
    under ``out_dir/topk/<system>/``; returns the file names per rank."""
    folder = Path(out_dir) / "topk" / outcome.name
    files = []
    for rank, pid in enumerate(outcome.top_k, start=1):
        rec = outcome.record(pid)
        stem = f"rank{rank}_pid{pid}"
        atoms = rec.atoms.copy()
        results = dict(getattr(rec.atoms.calc, "results", {}) or {})
        results.setdefault("energy", rec.e_ml)
        atoms.calc = SinglePointCalculator(
            atoms,
            **{
                k: v
                for k, v in results.items()
                if k in ("energy", "free_energy", "forces", "stress")
            },
        )
        atoms.info.update(
            {
                "pid": pid,
                "rank": rank,
                "site_type": rec.site_type,
                "e_ml_eV": rec.e_ml,
                # an unconverged relaxation ran out of steps: its end point is not a minimum
                "ml_converged": bool(rec.converged),
                "ml_steps": int(rec.steps),
            }
        )
        if rec.e_ads is not None:
            atoms.info["e_ads_ml_eV"] = rec.e_ads
        xyz = folder / f"{stem}.extxyz"
        poscar = folder / f"{stem}.vasp"
        write_structure(xyz, atoms, format="extxyz")
        bare = atoms.copy()
        bare.calc = None
        write_structure(poscar, bare, format="vasp", direct=True)
        files.append({"extxyz": str(xyz), "poscar": str(poscar)})
    return files


# ----------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------


def _top_k_items(o: Any, files: list[dict[str, str]] | None) -> list[dict[str, Any]]:
    """One entry per top-k configuration (energies in eV), with its files and reference result."""
    dft_by_pid = {d.pid: d for d in o.dft}
    top = []
    for rank, pid in enumerate(o.top_k, start=1):
        rec = o.record(pid)
        item: dict[str, Any] = {
            "rank": rank,
            "pid": pid,
            "site_type": rec.site_type,
            "e_ml_eV": _num(rec.e_ml),
            "e_ads_ml_eV": _num(rec.e_ads),
            "ml_steps": rec.steps,
            "ml_converged": rec.converged,
            "duplicates": next((len(g) - 1 for g in o.groups if g[0] == pid), 0),
        }
        if files and rank <= len(files):
            item["files"] = files[rank - 1]
        d = dft_by_pid.get(pid)
        if d is not None:
            item["dft"] = {
                "mode": d.mode,
                "energy_eV": _num(d.energy),
                "e_ads_eV": _num(d.e_ads),
                "calls": d.calls,
                "converged": d.converged,
                "anomalies": d.anomalies,
                "reasons": d.reasons,
                "error": d.error,
            }
        top.append(item)
    return top


def _best(pid: int, tag: tuple[str, Any], energy: tuple[str, Any], e_ads: tuple[str, Any]) -> dict:
    """The ``best`` entry of a section: pid, one tag (site type or rank) and two energies (eV)."""
    return {"pid": pid, tag[0]: tag[1], energy[0]: _num(energy[1]), e_ads[0]: _num(e_ads[1])}


def _ml_section(o: Any) -> dict[str, Any]:
    """The ``ml`` section: slab energy (eV), relaxation counts, anomalies and the best result."""
    counts = o.anomaly_counts
    best_ml = o.record(o.ranked[0]) if o.ranked else None
    return {
        "model": o.model_label,
        "energy_kind": o.energy_kind,
        "slab_energy_eV": _num(o.slab_energy_ml),
        "slab_relax_steps": o.slab_steps_ml,
        "relaxed": sum(1 for r in o.ml if r.status == "ok"),
        "converged": sum(1 for r in o.ml if r.converged),
        "failed": counts["failed"],
        "anomalies": {k: counts[k] for k in ALL_KINDS},
        "discarded_kinds": list(o.ml[0].discarded_kinds) if o.ml else list(ANOMALY_KINDS),
        "anomalous": sum(1 for r in o.ml if set(r.anomalies) & set(ANOMALY_KINDS)),
        "valid": sum(1 for r in o.ml if r.valid),
        "unique_valid": len(o.ranked),
        "top_k_unconverged": _unconverged_top_k(o),
        "new_relaxations_this_run": o.new_ml_relaxations,
        "gas_references": o.gas_ml.to_dict() if o.gas_ml else None,
        "best": None
        if best_ml is None
        else _best(
            best_ml.pid,
            ("site_type", best_ml.site_type),
            ("e_ml_eV", best_ml.e_ml),
            ("e_ads_ml_eV", best_ml.e_ads),
        ),
    }


def _unconverged_top_k(o: Any) -> list[int]:
    """The pids of the top-k configurations whose ML relaxation did not converge."""
    return [pid for pid in o.top_k if not o.record(pid).converged]


def _configurations(o: Any) -> dict[str, Any]:
    """The anomaly list, anomaly counts and every configuration of one system (eV)."""
    counts = o.anomaly_counts
    return {
        "anomalies": [
            {
                "pid": r.pid,
                "site_type": r.site_type,
                "kinds": r.anomalies or ["failed"],
                "reasons": r.reasons or ([r.error] if r.error else []),
            }
            for r in o.ml
            if r.anomalies or r.status != "ok"
        ],
        "anomaly_counts": {k: counts[k] for k in (*ALL_KINDS, "failed")},
        "all_configurations": [
            {
                "pid": r.pid,
                "site_type": r.site_type,
                "status": r.status,
                "e_ml_eV": _num(r.e_ml),
                "e_ads_ml_eV": _num(r.e_ads),
                "steps": r.steps,
                "converged": r.converged,
                "anomalies": r.anomalies,
                "final_site": r.final_site,
                "valid": r.valid,
            }
            for r in sorted(o.ml, key=lambda r: r.pid)
        ],
    }


def _reference_section(o: Any, scf_model: Any = None) -> dict[str, Any]:
    """The ``reference`` section: reference-calculator calls, savings, cost and best result (eV)."""
    exhaustive, basis = o.exhaustive_estimate()
    used = o.dft_adslab_calls
    best = o.best_dft()
    return {
        "calculator": o.dft_label,
        "mode": o.dft_mode,
        "energy_kind": o.dft_energy_kind,
        "slab_energy_eV": _num(o.slab_energy_dft),
        "gas_references": o.gas_dft.to_dict() if o.gas_dft else None,
        "adslab_calls": used,
        "overhead_calls": o.dft_overhead_calls,
        "new_calls_this_run": o.new_dft_calls,
        "exhaustive_calls_estimate": _num(exhaustive, 1),
        "exhaustive_basis": basis,
        "saving_fraction": _num(1.0 - used / exhaustive, 4)
        if exhaustive and math.isfinite(exhaustive)
        else None,
        "cost": o.cost(scf_model),
        "n_valid": sum(1 for d in o.dft if d.valid),
        "best": None
        if best is None
        else _best(
            best.pid, ("rank", best.rank), ("energy_eV", best.energy), ("e_ads_eV", best.e_ads)
        ),
    }


def _system_dict(
    o: Any, files: list[dict[str, str]] | None, scf_model: Any = None
) -> dict[str, Any]:
    """The JSON summary of one system (energies in eV)."""
    top = _top_k_items(o, files)
    out: dict[str, Any] = {
        "system": o.name,
        "slab_formula": o.slab.get_chemical_formula(),
        "n_slab_atoms": o.n_slab,
        "notes": o.notes,
        "placements": {"total": len(o.ml), "heuristic": o.n_heuristic, "random": o.n_random},
        "ml": _ml_section(o),
        "top_k": top,
        **_configurations(o),
    }
    if o.dft_label is not None:
        out["reference"] = _reference_section(o, scf_model)
    return out


def summary_dict(
    outcomes: list[Any], config: Any, files: dict[str, list] | None = None
) -> dict[str, Any]:
    """The JSON summary of a run."""
    from dataclasses import asdict

    from eqv2calc import __version__

    ads = outcomes[0].adsorbate if outcomes else None
    return {
        "eqv2calc_version": __version__,
        "adsorbate": None
        if ads is None
        else {
            "name": ads.name,
            "formula": ads.formula,
            "binding_atoms": ads.binding_indices,
            "oc20": ads.oc20,
        },
        "settings": asdict(config),
        "units": {"energy": "eV", "length": "Å", "force": "eV/Å"},
        "systems": [
            _system_dict(o, (files or {}).get(o.name), getattr(config, "scf_model", None))
            for o in outcomes
        ],
    }


# ----------------------------------------------------------------------------------------------
# terminal table
# ----------------------------------------------------------------------------------------------


def _f(x: float | None, width: int = 9, nd: int = 3) -> str:
    if x is None or not math.isfinite(float(x)):
        return "-".rjust(width)
    return f"{x:{width}.{nd}f}"


def format_cost(o: Any, scf_model: Any = None) -> list[str]:
    """Table lines: the reference cost per k in both accountings (ionic steps, estimated SCF
    steps) against the dense estimate, with the speed-ups."""
    c = o.cost(scf_model)
    m = c["scf_model"]
    d = c["dense_estimate"]
    lines = [
        f"   reference cost ({o.dft_label}, {o.dft_mode}), as in AdsorbML / EquiformerV2 Table 3 "
        f"(speed-up = dense / used; SCF estimate = {m['first']:g} + (ionic - 1) x {m['later']:g} "
        "per calculation):",
        f"   {'k':>4} {'calcs':>6} {'ionic':>8} {'SCF est':>9} {'speed-up ionic':>15} "
        f"{'speed-up SCF':>13}",
    ]
    for row in c["by_k"]:
        lines.append(
            f"   {row['k']:>4} {row['calculations']:>6.0f} {row['ionic_steps']:>8.0f} "
            f"{row['scf_steps_estimate']:>9.0f} {_x(row['speedup_ionic']):>15} "
            f"{_x(row['speedup_scf']):>13}"
        )
    lines.append(
        f"   dense {d['calculations']:>5.0f} {d['ionic_steps']:>8.0f} {d['scf_steps_estimate']:>9.0f}"
        f"   ({c['dense_basis']}); slab/gas overhead {c['overhead_calls']} calls, not counted"
    )
    return lines


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def format_table(outcomes: list[Any], scf_model: Any = None) -> str:
    """Human-readable summary: best configurations, E_ads, anomalies by kind (migrated
    reported), reference calls and cost in both accountings."""
    lines: list[str] = []
    for o in outcomes:
        ads = o.adsorbate
        kind_note = (
            "model predicts adsorption energies"
            if o.energy_kind == "adsorption"
            else "E_ads = E_adslab - E_slab - sum of gas references"
        )
        lines.append(
            f"== {o.name} + {ads.name} ({ads.formula})   model: {o.model_label} ({kind_note})"
        )
        for note in o.notes:
            lines.append(f"   {note}" if note.startswith("warning:") else f"   note: {note}")
        counts = o.anomaly_counts
        n_ok = sum(1 for r in o.ml if r.status == "ok")
        lines.append(
            f"   placements {len(o.ml)} ({o.n_heuristic} heuristic + {o.n_random} random); relaxed {n_ok}, "
            f"converged {sum(1 for r in o.ml if r.converged)}; this run: {o.new_ml_relaxations} new"
        )
        lines.append(
            "   anomalies: "
            + ", ".join(f"{k} {counts[k]}" for k in ANOMALY_KINDS)
            + (f", failed {counts['failed']}" if counts["failed"] else "")
            + f" -> valid {sum(1 for r in o.ml if r.valid)}, unique {len(o.ranked)}; "
            + f"migrated {counts['migrated']} ("
            + ("discarded" if o.ml and "migrated" in o.ml[0].discarded_kinds else "kept")
            + ")"
        )
        if o.gas_ml is not None:
            refs = ", ".join(f"{k}={v:.3f}" for k, v in sorted(o.gas_ml.refs.items()))
            lines.append(f"   gas references (ML): {refs} eV  [{o.gas_ml.source}]")
        has_dft = o.dft_label is not None
        header = (
            f"   {'rank':>4} {'pid':>4} {'site':<13} {'E_ML':>12} {'E_ads(ML)':>10} {'ML conv':<8}"
        )
        if has_dft:
            header += f" {'E_ads(' + o.dft_label + ')':>12} {'calls':>6}  flags"
        lines.append(header.rstrip())
        dft_by_pid = {d.pid: d for d in o.dft}
        if not o.top_k:
            lines.append("   (no valid configuration)")
        for rank, pid in enumerate(o.top_k, start=1):
            r = o.record(pid)
            conv = "yes" if r.converged else "NO*"
            line = (
                f"   {rank:>4} {pid:>4} {r.site_type:<13} {_f(r.e_ml, 12, 4)} {_f(r.e_ads, 10)} "
                f"{conv:<8}"
            )
            if has_dft:
                d = dft_by_pid.get(pid)
                if d is None:
                    line += f" {'-':>12} {'-':>6}"
                else:
                    e = d.e_ads if d.e_ads is not None else d.energy
                    flags = ",".join(d.anomalies) or ("error" if d.error else "ok")
                    line += f" {_f(e, 12)} {d.calls:>6}  {flags}"
            lines.append(line.rstrip())
        unconverged = _unconverged_top_k(o)
        if unconverged:
            lines.append(
                f"   warning: *{len(unconverged)} of the {len(o.top_k)} top-ranked configurations "
                "did not converge (the ML relaxation ran out of steps before the forces fell "
                "below --fmax): their energies are not minima and the ranking may change; rerun "
                "with more --steps (into a new --out folder: the steps are a resume setting)"
            )
        if has_dft:
            exhaustive, basis = o.exhaustive_estimate()
            used = o.dft_adslab_calls
            best = o.best_dft()
            if best is not None:
                e = best.e_ads if best.e_ads is not None else best.energy
                what = "E_ads" if best.e_ads is not None else "E"
                lines.append(
                    f"   best {o.dft_label} {what}: {e:.3f} eV (rank {best.rank}, pid {best.pid})"
                )
            saving = (
                (1.0 - used / exhaustive) * 100
                if exhaustive and math.isfinite(exhaustive)
                else float("nan")
            )
            lines.append(
                f"   reference calls ({o.dft_label}, {o.dft_mode}): {used} for adslabs + "
                f"{o.dft_overhead_calls} slab/gas overhead; exhaustive ~ {exhaustive:.0f} ({basis}); "
                f"saving {saving:.1f} %"
            )
            lines.extend(format_cost(o, scf_model))
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------------------------

_MARKERS = {
    "desorbed": "^",
    "dissociated": "x",
    "surface_changed": "s",
    "intercalated": "v",
    "migrated": "D",
    "failed": "X",
}


def write_plot(outcomes: list[Any], path: Path) -> None:
    """PNG: relaxed energies sorted, anomalies marked by kind, top-k highlighted (and the
    reference energies of the top-k when there are any)."""
    plt = pyplot("the AdsorbML energy plot")

    n = max(len(outcomes), 1)
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.6 * n), squeeze=False)
    for ax, o in zip(axes[:, 0], outcomes):
        use_ads = all(r.e_ads is not None for r in o.ml if r.status == "ok")
        recs = [r for r in o.ml if r.status == "ok" and math.isfinite(r.e_ml)]
        recs.sort(key=lambda r: r.e_ads if use_ads else r.e_ml)
        ys = [r.e_ads if use_ads else r.e_ml for r in recs]
        xs = list(range(1, len(recs) + 1))
        valid_x = [x for x, r in zip(xs, recs) if r.valid]
        valid_y = [y for y, r in zip(ys, recs) if r.valid]
        ax.scatter(valid_x, valid_y, s=14, c="tab:blue", label="valid", zorder=2)
        for kind, marker in _MARKERS.items():
            kx = [x for x, r in zip(xs, recs) if kind in r.anomalies]
            ky = [y for y, r in zip(ys, recs) if kind in r.anomalies]
            if kx:
                ax.scatter(kx, ky, s=26, marker=marker, c="tab:red", label=kind, zorder=3)
        top = set(o.top_k)
        tx = [x for x, r in zip(xs, recs) if r.pid in top]
        ty = [y for y, r in zip(ys, recs) if r.pid in top]
        if tx:
            ax.scatter(
                tx,
                ty,
                s=110,
                facecolors="none",
                edgecolors="tab:orange",
                linewidths=2,
                label=f"top-{len(o.top_k)}",
                zorder=4,
            )
        if o.dft:
            pos = {r.pid: x for x, r in zip(xs, recs)}
            dx = [pos[d.pid] for d in o.dft if d.pid in pos and math.isfinite(d.energy)]
            dy = [
                (d.e_ads if (use_ads and d.e_ads is not None) else d.energy)
                for d in o.dft
                if d.pid in pos and math.isfinite(d.energy)
            ]
            if dx and (use_ads or o.dft_energy_kind == o.energy_kind):
                ax.scatter(
                    dx,
                    dy,
                    s=60,
                    marker="*",
                    c="tab:green",
                    label=f"{o.dft_label} ({o.dft_mode})",
                    zorder=5,
                )
        ax.set_xlabel("configuration (sorted by ML energy)")
        ax.set_ylabel("E_ads (eV)" if use_ads else "E (eV)")
        ax.set_title(
            f"{o.name} + {o.adsorbate.name}: {len(recs)} relaxed, {len(o.ranked)} unique valid"
        )
        ax.grid(alpha=0.3)
        if recs:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def write_outputs(outcomes: list[Any], out_dir: Path, config: Any) -> dict[str, Path]:
    """Write ``summary.json``, ``energies.png`` and the top-k files; returns their paths."""
    out_dir = Path(out_dir)
    files = {o.name: write_top_k(o, out_dir) for o in outcomes}
    if getattr(config, "write_vasp", False):
        from eqv2calc.adsorbml.vasp_inputs import write_top_k_vasp

        for o in outcomes:
            vasp = write_top_k_vasp(o, out_dir, getattr(config, "dft_mode", "sp"))
            for item, folder in zip(files[o.name], vasp["top_k"]):
                item["vasp"] = folder
    summary = summary_dict(outcomes, config, files)
    json_path = out_dir / "summary.json"
    write_json_atomic(json_path, summary)
    png_path = out_dir / "energies.png"
    write_plot(outcomes, png_path)
    return {"summary": json_path, "plot": png_path, "topk": out_dir / "topk"}
