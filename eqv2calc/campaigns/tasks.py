"""Campaign tasks: what one kind of work item is, how a worker runs it, what the driver keeps.

A task is a small picklable settings object with three jobs:

* ``settings()``: the campaign settings that are fingerprinted and stored in the ledger;
* ``work(calculator, payloads, emit)`` (worker side): run a chunk of items with the drivers
  (batched relaxation, batched single points, AdsorbML per system) and ``emit`` one
  :class:`~eqv2calc.campaigns.worker.Outcome` per item as soon as it is ready;
* ``record(payload, outcome)`` (driver side): write the item's output files and return the
  result record that goes into the ledger.

Payloads are dicts with at least ``key`` and ``label``; paths in them are absolute, because a
Ray worker does not share the driver's working directory. Relaxations always continue from
their trajectory (``restart=True``): a trajectory in the campaign folder can only come from an
earlier attempt at the same item under the same settings (the ledger refuses other settings),
so an item that a killed worker or driver left half done continues from its last frame.

Units: energies eV, forces eV/Å, stress eV/Å³, lengths Å.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from eqv2calc.campaigns.hashing import item_key, structure_hash
from eqv2calc.campaigns.ledger import ItemSpec
from eqv2calc.campaigns.worker import Outcome

__all__ = ["AdsorbMLTask", "EvalTask", "RelaxTask", "atoms_to_text", "text_to_atoms"]

Emit = Callable[[Outcome], None]


def atoms_to_text(atoms: Atoms) -> str:
    """The structure as extxyz text (constraints and results kept where extxyz can)."""
    import ase.io

    buf = io.StringIO()
    ase.io.write(buf, atoms, format="extxyz")
    return buf.getvalue()


def text_to_atoms(text: str) -> Atoms:
    """Inverse of :func:`atoms_to_text`."""
    import ase.io

    return ase.io.read(io.StringIO(text), format="extxyz")


def _entry_items(
    entries: Sequence[Any], fingerprint: str, keep_input: bool
) -> tuple[list[ItemSpec], list[dict[str, Any]], list[str]]:
    """Items and payloads for structures read from files, one per entry.

    An item is keyed by its label and structure (:func:`_keys`): two files holding the same
    structure are two items with their own output files, as ``relax``/``eval`` do outside
    campaigns, and what the ledger records under a label is what that label's files hold.
    """
    specs: list[ItemSpec] = []
    payloads: list[dict[str, Any]] = []
    hashes = [structure_hash(e.atoms) for e in entries]
    named: dict[str, str] = {}
    for e, input_hash, (key, legacy) in zip(
        entries, hashes, _keys(hashes, [e.label for e in entries], fingerprint)
    ):
        source = str(e.source) + (f"@{e.index}" if e.index is not None else "")
        if e.label in named:
            raise ValueError(
                f"{source} and {named[e.label]} are both named {e.label!r}: their output files "
                "would collide; give the inputs distinct names"
            )
        named[e.label] = source
        specs.append(
            ItemSpec(
                key=key,
                label=e.label,
                source=source,
                input=atoms_to_text(e.atoms) if keep_input else None,
                shard_key=input_hash,
                legacy_key=legacy,
            )
        )
        payloads.append({"key": key, "label": e.label, "source": source, "atoms": e.atoms})
    return specs, payloads, []


def _keys(
    input_hashes: Sequence[str], labels: Sequence[str], fingerprint: str
) -> list[tuple[str, str | None]]:
    """``(key, legacy key)`` per item: the key hashes the input, the label (which names the
    output files) and the settings; the legacy key (input and settings only, as eqv2calc
    keyed items before) lets a ledger of an older version continue, but only for an input
    that no other item shares (older versions ran shared inputs once under one of the labels,
    so such a row cannot be told apart)."""
    counts = Counter(input_hashes)
    return [
        (
            item_key(f"{h}:{label}", fingerprint),
            item_key(h, fingerprint) if counts[h] == 1 else None,
        )
        for h, label in zip(input_hashes, labels)
    ]


@dataclass(frozen=True)
class RelaxTask:
    """Relax structures (``eqv2calc relax`` as a campaign).

    Outputs in ``out_dir``: ``<label>_relaxed.<fmt>``, ``<label>_relax.traj`` and
    ``<label>_relax.log`` per structure, as ``eqv2calc relax --output-dir`` writes them.
    """

    out_dir: str
    model: str
    optimizer: str = "FIRE"
    fmax: float = 0.05
    steps: int = 500
    relax_cell: bool = False
    fix_below: float | None = None
    fmt: str = "extxyz"
    dtype: str = "float32"
    max_atoms_per_batch: int = 2000
    engine: str = "ase"
    model_sha256: str | None = None  # of the checkpoint file; None: not an eqv2calc checkpoint

    kind = "relax"

    def settings(self) -> dict[str, Any]:
        """Fingerprinted settings (the batch budget and folder are not: they do not change
        what an item's result is)."""
        d = asdict(self)
        d.pop("out_dir")
        d.pop("max_atoms_per_batch")
        if d["model_sha256"] is None:  # EMT, a factory: as ledgers always recorded them
            d.pop("model_sha256")
        d["optimizer"] = d["optimizer"].upper()
        return {"kind": self.kind, **d}

    def items(self, entries: Sequence[Any], fingerprint: str) -> tuple[list, list, list]:
        """``(item specs, payloads, notes)`` for structures from :func:`~eqv2calc.io.load_structures`."""
        from eqv2calc.drivers.relax import fix_below

        specs, payloads, notes = _entry_items(entries, fingerprint, keep_input=False)
        out = Path(self.out_dir).resolve()
        for p in payloads:
            atoms = p["atoms"].copy()
            if self.fix_below is not None:
                fix_below(atoms, self.fix_below)
            p["atoms"] = atoms
            p["trajectory"] = str(out / f"{p['label']}_relax.traj")
            p["log"] = str(out / f"{p['label']}_relax.log")
            p["output"] = str(out / f"{p['label']}_relaxed.{self.fmt.lstrip('.')}")
        return specs, payloads, notes

    def work(self, calculator: Any, payloads: list[dict[str, Any]], emit: Emit) -> None:
        """Relax the chunk as one batch that refills as structures finish:
        :func:`eqv2calc.drivers.relax_batch` (ASE optimizers, each structure continuing from
        its trajectory) or, with ``engine="torch"``, the batched device engine
        (:func:`eqv2calc.engine.relax_engine`, which starts every structure afresh)."""
        from eqv2calc.drivers import relax_batch

        def on_result(i: int, res: Any) -> None:
            p = payloads[i]
            rec = res.to_dict()
            rec["source"] = p["source"]
            atoms = None
            if res.ok:
                atoms = res.atoms.copy()
                atoms.calc = res.atoms.calc
                atoms.info.update(
                    relax_converged=res.converged, relax_steps=res.steps, relax_fmax=res.fmax
                )
            emit(Outcome(p["key"], res.ok, rec, res.error, atoms, {"wall_s": res.wall_time}))

        structures = [p["atoms"] for p in payloads]
        per_structure: dict[str, Any] = {  # the same for both drivers
            "labels": [p["label"] for p in payloads],
            "trajectories": [p["trajectory"] for p in payloads],
            "logfiles": [p["log"] for p in payloads],
            "on_result": on_result,
            "progress": False,
        }
        if self.engine == "torch":
            from eqv2calc.engine import EngineSettings, relax_engine

            settings = EngineSettings(
                optimizer=self.optimizer,
                fmax=self.fmax,
                steps=self.steps,
                relax_cell=self.relax_cell,
                max_atoms_per_batch=self.max_atoms_per_batch,
            )
            relax_engine(structures, calculator, settings, **per_structure)
            return
        relax_batch(
            structures,
            calculator,
            optimizer=self.optimizer,
            fmax=self.fmax,
            steps=self.steps,
            relax_cell=self.relax_cell,
            max_atoms_per_batch=self.max_atoms_per_batch,
            restart=True,
            **per_structure,
        )

    def record(self, payload: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
        """Write the relaxed structure; the ledger record names it."""
        from eqv2calc.io import write_structure

        rec = dict(outcome.result)
        rec["log"] = payload["log"]
        if not outcome.ok:
            from eqv2calc.results import written_file

            rec.update(trajectory=written_file(rec.get("trajectory")), log=written_file(rec["log"]))
        if outcome.ok and outcome.atoms is not None:
            write_structure(payload["output"], outcome.atoms)
            rec["output"] = payload["output"]
        return rec


@dataclass(frozen=True)
class EvalTask:
    """Single points (``eqv2calc eval`` as a campaign); results (forces included) live in the
    ledger, and :func:`eqv2calc.campaigns.report.export_eval` writes them as extxyz."""

    model: str
    dtype: str = "float32"
    max_atoms_per_batch: int = 2000
    model_sha256: str | None = None  # of the checkpoint file; None: not an eqv2calc checkpoint

    kind = "eval"

    def settings(self) -> dict[str, Any]:
        """Fingerprinted settings (the checkpoint's SHA-256 when known)."""
        d = {"kind": self.kind, "model": self.model, "dtype": self.dtype}
        if self.model_sha256 is not None:
            d["model_sha256"] = self.model_sha256
        return d

    def items(self, entries: Sequence[Any], fingerprint: str) -> tuple[list, list, list]:
        """``(item specs, payloads, notes)``; the input structure is kept in the ledger."""
        return _entry_items(entries, fingerprint, keep_input=True)

    def work(self, calculator: Any, payloads: list[dict[str, Any]], emit: Emit) -> None:
        """Evaluate the chunk with :func:`eqv2calc.drivers.evaluate` (batched by atoms)."""
        from eqv2calc.drivers import evaluate

        def on_result(i: int, res: Any) -> None:
            p = payloads[i]
            rec = res.to_dict()
            rec["source"] = p["source"]
            rec["forces_eV_per_A"] = res.forces.tolist() if res.forces is not None else None
            emit(Outcome(p["key"], res.ok, rec, res.error, None))

        evaluate(
            [p["atoms"] for p in payloads],
            calculator,
            max_atoms_per_batch=self.max_atoms_per_batch,
            labels=[p["label"] for p in payloads],
            progress=False,
            on_result=on_result,
        )

    def record(self, payload: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
        """Nothing to write per item."""
        return dict(outcome.result)


@dataclass(frozen=True)
class AdsorbMLTask:
    """AdsorbML over slab x adsorbate systems (``eqv2calc adsorbml`` as a campaign).

    Each system runs :func:`eqv2calc.adsorbml.pipeline.run_adsorbml` for one slab and one
    adsorbate in ``out_dir/<slab>__<adsorbate>/`` (its own resumable ``adsorbml.db``, summary,
    plot and top-k files, as a single ``eqv2calc adsorbml`` run writes them); a worker killed
    mid-system leaves its placements and finished relaxations in that database, and the
    rerun continues from there.
    """

    out_dir: str
    model: str
    config: Any  # AdsorbMLConfig
    dft: str | None = None
    dtype: str = "float32"
    extra: tuple[tuple[str, Any], ...] = field(default=())
    model_sha256: str | None = None  # of the checkpoint file; None: not an eqv2calc checkpoint

    kind = "adsorbml"

    def settings(self) -> dict[str, Any]:
        """Fingerprinted settings: the AdsorbML configuration, model (and the checkpoint's
        SHA-256 when known) and reference."""
        cfg = asdict(self.config)
        cfg.pop("progress", None)
        cfg.pop("max_atoms_per_batch", None)
        d = {
            "kind": self.kind,
            "model": self.model,
            "dtype": self.dtype,
            "dft": self.dft,
            "config": cfg,
            **dict(self.extra),
        }
        if self.model_sha256 is not None:
            d["model_sha256"] = self.model_sha256
        return d

    def items(
        self, systems: Sequence[Any], adsorbates: Sequence[Any], fingerprint: str
    ) -> tuple[list, list, list]:
        """One item per (slab system, adsorbate) pair, keyed by its label
        (``<slab>__<adsorbate>``, which names its output folder) and its input, so slabs
        with the same structure under two names are two systems, each in its own folder."""
        import re

        pairs = []
        for ads in adsorbates:
            ads_name = re.sub(r"[^A-Za-z0-9]+", "_", ads.name.replace("*", "")).strip("_")
            for system in systems:
                input_hash = (
                    f"{structure_hash(system.atoms)}+{ads.name}+{structure_hash(ads.atoms)}"
                )
                pairs.append((system, ads, input_hash, f"{system.name}__{ads_name or 'ads'}"))
        labels = [label for *_, label in pairs]
        if len(set(labels)) != len(labels):
            twice = sorted({x for x in labels if labels.count(x) > 1})
            raise ValueError(
                f"systems named twice: {', '.join(twice)}: slab and adsorbate names must be "
                "unique, each system gets the output folder of its name"
            )
        keys = _keys([h for _, _, h, _ in pairs], labels, fingerprint)
        specs, payloads = [], []
        out = Path(self.out_dir).resolve()
        for (system, ads, input_hash, label), (key, legacy) in zip(pairs, keys):
            specs.append(
                ItemSpec(
                    key=key,
                    label=label,
                    source=f"{system.name} + {ads.name}",
                    shard_key=hashlib.sha256(input_hash.encode()).hexdigest(),
                    legacy_key=legacy,
                )
            )
            payloads.append(
                {
                    "key": key,
                    "label": label,
                    "system": system,
                    "adsorbate": ads,
                    "out": str(out / label),
                }
            )
        return specs, payloads, []

    def work(self, calculator: Any, payloads: list[dict[str, Any]], emit: Emit) -> None:
        """Run AdsorbML for each system of the chunk, one after another."""
        import dataclasses

        from eqv2calc.adsorbml.pipeline import run_adsorbml
        from eqv2calc.adsorbml.report import summary_dict
        from eqv2calc.batching import error_text

        cfg = dataclasses.replace(self.config, progress=False)
        for p in payloads:
            started = time.perf_counter()
            try:
                dft_calc = dft_label = None
                if self.dft:
                    from eqv2calc.adsorbml.reference import make_reference_calculator

                    dft_calc, dft_label = make_reference_calculator(
                        self.dft, directory=Path(p["out"]) / "dft_run"
                    )
                outcomes = run_adsorbml(
                    [p["system"]],
                    p["adsorbate"],
                    calculator,
                    p["out"],
                    cfg,
                    dft_calculator=dft_calc,
                    dft_label=dft_label,
                )
                rec = summary_dict(outcomes, cfg)["systems"][0]
                rec.pop("all_configurations", None)
                rec["adsorbate"] = p["adsorbate"].name
                rec["output_dir"] = p["out"]
                wall = {"wall_s": time.perf_counter() - started}
                emit(Outcome(p["key"], True, rec, provenance=wall))
            except Exception as err:  # one system failing must not stop the others
                wall = {"wall_s": time.perf_counter() - started}
                rec = {"system": p["label"]}
                emit(Outcome(p["key"], False, rec, error_text(err), provenance=wall))

    def record(self, payload: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
        """The per-system files were written by the worker."""
        return dict(outcome.result)
