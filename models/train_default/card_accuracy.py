"""Print a model card's ``accuracy:`` entries from a training summary and a check_physics report.

Issue 17: the bundled model's card states its measured accuracy on every check. This turns the
two JSON files a run leaves (``summary.json`` of ``eqv2calc train``, ``--json`` of
``check_physics.py``) into the card's YAML entries, so that no number is copied by hand:

    python models/train_default/card_accuracy.py --summary run/summary.json \
        --check run.check_physics.json --date 2026-12-03 --test-set "held-out EMT test set ..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

CHECK = "models/train_default/check_physics.py"
HOP = "ASE NEB (3 images, CI, FIRE fmax 0.03), 2x2x3 slab, bottom layer fixed"
HOP_NAMES = {"100": "hollow to hollow", "111": "fcc to hcp"}


def entries(summary: dict, check: dict, date: str, test_set: str) -> list[dict]:
    """The accuracy entries: test MAEs, then every check of ``check`` with EMT's value."""
    source = f"{CHECK} ({date}, float64, CPU)"
    test = summary["test"]
    train_source = "eqv2calc train summary.json (best epoch on the test set, independent seed)"
    out = [
        {"metric": "energy MAE", "value": round(test["energy_per_atom_mae"], 4), "unit": "eV/atom"},
        {"metric": "force MAE", "value": round(test["forces_mae"], 4), "unit": "eV/Å"},
        {"metric": "stress MAE", "value": round(test["stress_mae"], 5), "unit": "eV/Å³"},
    ]
    for entry in out:
        entry.update(dataset=test_set, source=train_source)
    for system, r in check.get("barriers_eV", {}).items():
        facet = system.split("(")[1].rstrip(")")
        ads, surface = system.split("/")
        out.append(
            {
                "metric": f"NEB hop barrier, {ads} on {surface} {HOP_NAMES[facet]}",
                "value": round(r["model"], 3),
                "unit": "eV",
                "dataset": f"held-out pair, check against EMT (EMT: {r['emt']:.3f} eV), {HOP}",
                "source": source,
            }
        )
    for system, r in check.get("modes_meV", {}).items():
        ads, surface = system.split("/")
        worst = max(abs(m - e) / e for m, e in zip(r["model"], r["emt"]))
        model = "/".join(f"{m:.1f}" for m in r["model"])
        emt = "/".join(f"{e:.1f}" for e in r["emt"])
        out.append(
            {
                "metric": f"vibrational modes, {ads} at the {surface} hollow, largest relative error",
                "value": round(100 * worst),
                "unit": "%",
                "dataset": f"held-out pair, check against EMT: model {model} meV, EMT {emt} meV"
                " (ASE Vibrations, delta 0.01 Å)",
                "source": source,
            }
        )
    moduli = check.get("bulk_moduli_GPa", {})
    if moduli:
        worst = max(abs(r["model"] - r["emt"]) / r["emt"] for r in moduli.values())
        listed = ", ".join(f"{m} {r['model']:.0f}/{r['emt']:.0f}" for m, r in moduli.items())
        out.append(
            {
                "metric": "bulk modulus, largest relative error over " + ", ".join(moduli),
                "value": round(100 * worst, 1),
                "unit": "%",
                "dataset": f"check against EMT, model/EMT in GPa: {listed} (EOS fit, volume ±6 %)",
                "source": source,
            }
        )
    if "nve_drift_meV_per_atom_per_ps" in check:
        out.append(
            {
                "metric": "NVE energy drift, Cu28Au4 at 600 K, 1 fs steps, 1 ps",
                "value": round(check["nve_drift_meV_per_atom_per_ps"], 3),
                "unit": "meV/atom/ps",
                "dataset": "check against EMT (EMT itself: -0.0002 meV/atom/ps in the same setup)",
                "source": source,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", required=True, help="summary.json of the training run")
    parser.add_argument("--check", required=True, help="check_physics.py --json output")
    parser.add_argument("--date", required=True, help="date of the check (YYYY-MM-DD)")
    parser.add_argument("--test-set", required=True, help="what the test set is, for the card")
    args = parser.parse_args()
    summary = json.loads(Path(args.summary).read_text())
    check = json.loads(Path(args.check).read_text())
    block = {"accuracy": entries(summary, check, args.date, args.test_set)}
    print(yaml.safe_dump(block, sort_keys=False, allow_unicode=True, width=100), end="")


if __name__ == "__main__":
    main()
