"""Campaign options of ``relax``/``eval``/``adsorbml`` and the ``eqv2calc campaign`` command.

``--executor local|ray``, ``--ray-address``, ``--workers``, ``--gpus-per-worker`` and
``--shard I/N`` turn a command into a campaign recorded in a ledger in its output folder
(:mod:`eqv2calc.campaigns`); the command function receives them as one
:class:`CampaignOptions`. ``eqv2calc campaign status`` and ``merge`` read ledgers back.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click

from eqv2calc.cli._common import (
    FiniteFloat,
    echo_error,
    echo_line,
    exit_on_interrupt,
    fail,
    read_inputs,
    require_stress,
)

if TYPE_CHECKING:
    from eqv2calc.drivers.relax import RelaxSettings

__all__ = [
    "CAMPAIGN_KEYS",
    "CampaignOptions",
    "adsorbml_campaign",
    "adsorbml_campaign_command",
    "campaign_command",
    "campaign_options",
    "eval_campaign",
    "relax_campaign",
]


@dataclass(frozen=True)
class CampaignOptions:
    """The campaign options of a command, as given on the command line (:func:`campaign_options`).

    Attributes:
        executor: ``--executor``: ``"local"`` (this process, batched), ``"ray"`` (Ray
            workers) or None (not given: ``ray`` when ``ray_address`` or ``workers`` is
            given, else ``local``).
        ray_address: ``--ray-address``: ``auto`` or ``HOST:PORT`` of a running Ray cluster;
            None starts a local Ray instance (with the ray executor).
        workers: ``--workers``: number of Ray workers (each loads the model once); None:
            one per CPU of the Ray cluster, or per GPU share with ``gpus_per_worker``.
        gpus_per_worker: ``--gpus-per-worker``: GPUs each Ray worker reserves, a count that
            may be a fraction (0.5: two workers share a GPU); 0 reserves none.
        shard: ``--shard``: ``"I/N"``, run only shard I of N (0-based), already checked
            while parsing; None runs every item.
        retry_failed: ``--retry-failed``: run items that failed in an earlier run again.
    """

    executor: str | None = None
    ray_address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    shard: str | None = None
    retry_failed: bool = False

    @classmethod
    def pop_from(cls, params: dict[str, Any]) -> CampaignOptions:
        """The options taken out of a click command's ``params`` (removed from it)."""
        return cls(**{key: params.pop(key) for key in CAMPAIGN_KEYS})

    @property
    def requested(self) -> bool:
        """True when any campaign option was given (the command runs as a campaign)."""
        given = (self.executor, self.shard, self.ray_address, self.workers)
        return any(v is not None for v in given)

    @property
    def in_process(self) -> bool:
        """True when the items run in this process (the local executor)."""
        return (self.executor or "local") == "local" and not (self.ray_address or self.workers)

    @property
    def shard_range(self) -> tuple[int, int] | None:
        """``(I, N)`` of ``--shard I/N``, or None without it."""
        return _shard(self.shard)


#: Keyword names of the options :func:`campaign_options` adds (the fields of
#: :class:`CampaignOptions`).
CAMPAIGN_KEYS = tuple(f.name for f in fields(CampaignOptions))

_OPTIONS_HELP = """
\b
Campaign mode (any of --executor, --shard, --ray-address, --workers): every item is recorded
in OUTPUT_DIR/campaign.sqlite (state, result, provenance); rerunning the same command
continues where it stopped; another command with other settings on that folder is refused.
"""


def campaign_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--executor``, ``--ray-address``, ``--workers``, ``--gpus-per-worker``,
    ``--shard`` and ``--retry-failed``; the command function receives them as one keyword
    argument, ``campaign`` (a :class:`CampaignOptions`)."""

    @functools.wraps(func)
    def command(*args: Any, **params: Any) -> Any:
        return func(*args, campaign=CampaignOptions.pop_from(params), **params)

    options = [
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default=None,
            help="Run as a campaign with a ledger (campaign.sqlite) in the output folder: local "
            "(this process, batched) or ray (long-lived Ray workers; pip install "
            "'eqv2calc[ray]'). Rerunning the same command continues it (relaxations from their "
            "trajectories, as with --restart).",
        ),
        click.option(
            "--ray-address",
            default=None,
            metavar="auto|HOST:PORT",
            help="Join a running Ray cluster (implies --executor ray); without it a local Ray "
            "instance is started.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=None,
            help="Ray workers (each loads the model once). Default: one per CPU of the Ray "
            "cluster, or per GPU share with --gpus-per-worker.",
        ),
        click.option(
            "--gpus-per-worker",
            type=FiniteFloat(min=0),
            default=0.0,
            show_default=True,
            help="GPUs each Ray worker reserves (0.5: two workers share a GPU).",
        ),
        click.option(
            "--shard",
            default=None,
            metavar="I/N",
            callback=_check_shard,
            help="Run only shard I of N (0-based, items split by content hash), with its own "
            "ledger campaign.shard-I-of-N.sqlite; for SLURM arrays (--shard "
            "$SLURM_ARRAY_TASK_ID/N). Combine with `eqv2calc campaign merge`.",
        ),
        click.option(
            "--retry-failed",
            is_flag=True,
            help="Campaign: run items that failed in an earlier run again.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _check_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a malformed ``--shard`` while parsing, before any folder is created."""
    _shard(value)
    return value


def _executor(spec: Any, campaign: CampaignOptions, calculator: Any = None) -> Any:
    """The local or Ray executor ``campaign`` asks for (one-line errors for what cannot be)."""
    from eqv2calc.campaigns import LocalExecutor, RayExecutor
    from eqv2calc.campaigns.executors import RayNotInstalled, import_ray

    c = campaign
    kind = c.executor or ("ray" if (c.ray_address or c.workers) else "local")
    if kind == "local":
        if c.ray_address or (c.workers or 1) > 1 or c.gpus_per_worker:
            fail("--ray-address, --workers > 1 and --gpus-per-worker need --executor ray")
        return LocalExecutor(spec, calculator=calculator)
    try:
        import_ray()
    except RayNotInstalled as err:
        fail(str(err))
    return RayExecutor(
        spec, workers=c.workers, address=c.ray_address, gpus_per_worker=c.gpus_per_worker
    )


def _shard(text: str | None) -> tuple[int, int] | None:
    from eqv2calc.campaigns import parse_shard

    if text is None:
        return None
    try:
        return parse_shard(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--shard") from None


def _spec(model: str | None, device: str, dtype: str) -> Any:
    """How workers build the calculator, with the command's --precision/--compile options."""
    from eqv2calc.campaigns import CalculatorSpec
    from eqv2calc.cli._common import _model_dtype, _precision_request

    request = _precision_request()
    dtype = _model_dtype(dtype, request["precision"])  # as outside campaigns
    return CalculatorSpec(
        model=model,
        device=device,
        dtype=dtype,
        precision=request["precision"],
        force_precision=request["force_precision"],
        compile=request["compile"],
    )


def _checkpoint_sha256(spec: Any) -> str | None:
    """The SHA-256 of the checkpoint ``spec`` loads, for the ledger (None: EMT, a factory,
    or a checkpoint this driver cannot see without downloading it: a one-line note says so;
    the workers load it)."""
    return spec.checkpoint_sha256(note=lambda msg: click.echo(f"note: {msg}", err=True))


def _run(
    task: Any,
    specs: list,
    payloads: list,
    out: Path,
    exe: Any,
    campaign: CampaignOptions,
    on_outcome: Callable[..., None],
) -> Any:
    """run_campaign (``campaign``'s shard, retrying failed items if it says so) with the
    expected failures turned into one-line errors."""
    from eqv2calc.campaigns import CampaignLocked, LedgerError, run_campaign
    from eqv2calc.campaigns.executors import WorkerStartError

    try:
        with exit_on_interrupt(
            "interrupted; every finished item is in the ledger, rerun the same command to continue"
        ):
            return run_campaign(
                task,
                specs,
                payloads,
                out,
                exe,
                shard=campaign.shard_range,
                retry_failed=campaign.retry_failed,
                on_outcome=on_outcome,
            )
    except (CampaignLocked, LedgerError, WorkerStartError) as err:
        fail(str(err))


def _structure_items(files: Sequence[str], task: Any, what: str) -> tuple[list, list, list]:
    """Read ``files`` (stop when nothing could be read) into ``task``'s campaign items:
    ``(specs, payloads, read_errors)``, with a note line for each input the task merged."""
    from eqv2calc.campaigns.hashing import item_fingerprint

    entries, read_errors = read_inputs(files)
    if not entries:
        fail(f"no structures to {what}")
    try:
        specs, payloads, notes = task.items(entries, item_fingerprint(task.settings()))
    except ValueError as err:
        fail(str(err))
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return specs, payloads, read_errors


def _campaign_executor(
    spec: Any, campaign: CampaignOptions, *, stress_for: str | None = None
) -> Any:
    """The executor of a campaign; a local one gets this process's calculator (checked for
    a stress when ``stress_for`` names what needs it)."""
    calc = None
    if campaign.in_process:
        from eqv2calc.cli._common import make_calculator

        calc = make_calculator(spec.model, spec.device, spec.dtype)
        if stress_for:
            require_stress(calc, stress_for)
    return _executor(spec, campaign, calc)


def _shower(as_json: bool, line: Callable[[dict, dict], str | None]) -> Callable[..., None]:
    """``on_outcome`` of a relax/eval campaign: a failure on stderr; then the JSON record,
    or ``line(payload, record)`` for a success (nothing when it returns None)."""

    def show(payload: dict, outcome: Any, record: dict) -> None:
        if not outcome.ok:
            echo_error(f"{payload['source']}: {outcome.error}")
        if as_json:
            rec = {k: v for k, v in record.items() if k != "forces_eV_per_A"}
            echo_line(json.dumps({"source": payload["source"], **rec}))
        elif outcome.ok and (text := line(payload, record)) is not None:
            echo_line(text)

    return show


def _ledger_rows(rep: Any, specs: list) -> list[dict]:
    """This run's items (``specs``) as rows of the campaign ledger."""
    from eqv2calc.campaigns import Ledger

    mine = {s.key for s in specs}
    with Ledger(rep.ledger_path) as led:
        return [r for r in led.rows() if r["key"] in mine]


def _report_line(rep: Any, what: str) -> str:
    c = rep.counts
    extra = f", {rep.not_in_shard} in other shards" if rep.not_in_shard else ""
    return (
        f"{what}: {rep.done} done and {rep.failed} failed in this run ({rep.items_per_s:.3g} "
        f"items/s), {rep.skipped} already finished{extra}; ledger {rep.ledger_path}: "
        f"{c.get('done', 0)} done, {c.get('failed', 0)} failed, {c.get('pending', 0)} pending"
    )


def _prepare_out(output_dir: str | None, what: str) -> Path:
    if output_dir is None:
        fail(
            f"{what} as a campaign (--executor/--shard/--workers) needs --output-dir: the "
            "campaign ledger lives there"
        )
    from eqv2calc.io import check_writable_dir

    try:
        return check_writable_dir(output_dir, what="--output-dir")
    except OSError as err:
        fail(str(err))
    except ValueError as err:
        fail(str(err))
    return Path(output_dir)


def _run_structures(
    files: Sequence[str],
    task: Any,
    spec: Any,
    out: Path,
    campaign: CampaignOptions,
    *,
    what: str,
    show: Callable[..., None],
    stress_for: str | None = None,
) -> tuple[Any, list[dict], list]:
    """Run ``task`` over the structures in ``files`` as a campaign in ``out`` (``what``: the
    verb for "no structures to ..."; ``show``: the ``on_outcome`` of :func:`_shower`):
    ``(report, this run's ledger rows, read errors)``."""
    specs, payloads, read_errors = _structure_items(files, task, what)
    exe = _campaign_executor(spec, campaign, stress_for=stress_for)
    rep = _run(task, specs, payloads, out, exe, campaign, show)
    return rep, _ledger_rows(rep, specs), read_errors


def relax_campaign(
    files: Sequence[str],
    campaign: CampaignOptions,
    *,
    model: str | None,
    device: str,
    dtype: str,
    settings: RelaxSettings,
    fix_below: float | None,
    output_dir: str | None,
    fmt: str,
    summary_path: str | None,
    max_atoms: int,
    as_json: bool,
    engine: str | None = None,
) -> None:
    """``eqv2calc relax`` as a campaign; exits with the relax command's exit status.

    ``settings`` are the relaxation options (its ``optimizer_kwargs`` are not used); the
    other keywords are the relax command's options of the same names.
    The ASE optimizers are the default here (``engine`` None or "ase"): their relaxations
    continue from the trajectory after a kill. ``engine="torch"`` uses the batched device
    engine; it cannot restart, so an item interrupted mid-relaxation starts again."""
    from eqv2calc.campaigns import RelaxTask

    out = _prepare_out(output_dir, "relax")
    shard_t = campaign.shard_range
    engine = engine or "ase"
    optimizer = settings.optimizer
    if engine == "torch" and optimizer.upper() not in ("FIRE", "LBFGS"):
        fail(f"the torch engine runs FIRE and LBFGS; use --engine ase for {optimizer}")
    spec = _spec(model, device, dtype)
    task = RelaxTask(
        out_dir=str(out.resolve()),
        model=spec.label,
        optimizer=optimizer,
        fmax=settings.fmax,
        steps=settings.steps,
        relax_cell=settings.relax_cell,
        fix_below=fix_below,
        fmt=fmt.lstrip("."),
        dtype=dtype,
        max_atoms_per_batch=max_atoms,
        engine=engine,
        model_sha256=_checkpoint_sha256(spec),
    )

    def line(payload: dict, record: dict) -> str:
        status = "converged" if record.get("converged") else "NOT CONVERGED"
        return (
            f"{payload['label']}: {status} in {record.get('steps')} steps, "
            f"E = {record.get('final_energy_eV')} eV -> {record.get('output')}"
        )

    show = _shower(as_json, line)
    stress = "--relax-cell" if settings.relax_cell else None
    rep, rows, read_errors = _run_structures(
        files, task, spec, out, campaign, what="relax", show=show, stress_for=stress
    )
    summary = {
        "command": "relax",
        "ledger": str(rep.ledger_path),
        "settings": task.settings(),
        "structures": {r["label"]: {"state": r["state"], **(r["result"] or {})} for r in rows},
        "read_errors": [str(e) for e in read_errors],
    }
    from eqv2calc.io import write_json_atomic

    summary_file = (
        Path(summary_path)
        if summary_path
        else out
        / (
            "relax_summary.json"
            if shard_t is None
            else f"relax_summary.shard-{shard_t[0]}-of-{shard_t[1]}.json"
        )
    )
    write_json_atomic(summary_file, summary)
    click.echo(_report_line(rep, "relax campaign"), err=True)
    failed = sum(1 for r in rows if r["state"] == "failed") + len(read_errors)
    unfinished = sum(1 for r in rows if r["state"] in ("pending", "running"))
    not_conv = sum(
        1 for r in rows if r["state"] == "done" and not (r["result"] or {}).get("converged")
    )
    if failed or unfinished:
        raise SystemExit(1)
    if not_conv:
        raise SystemExit(3)


def eval_campaign(
    files: Sequence[str],
    campaign: CampaignOptions,
    *,
    model: str | None,
    device: str,
    dtype: str,
    output: str,
    output_dir: str | None,
    max_atoms: int,
    as_json: bool,
) -> None:
    """``eqv2calc eval`` as a campaign: results in the ledger, exported to extxyz."""
    from eqv2calc.campaigns import EvalTask, Ledger
    from eqv2calc.campaigns.report import export_eval

    out = _prepare_out(output_dir or str(Path(output).parent), "eval")
    shard_t = campaign.shard_range
    spec = _spec(model, device, dtype)
    task = EvalTask(
        model=spec.label,
        dtype=dtype,
        max_atoms_per_batch=max_atoms,
        model_sha256=_checkpoint_sha256(spec),
    )
    show = _shower(as_json, lambda payload, record: None)
    rep, rows, read_errors = _run_structures(
        files, task, spec, out, campaign, what="evaluate", show=show
    )
    target = Path(output)
    if output_dir is not None and not target.is_absolute() and target.parent == Path("."):
        target = out / target.name
    if shard_t is not None:
        target = target.with_name(f"{target.stem}.shard-{shard_t[0]}-of-{shard_t[1]}.extxyz")
    with Ledger(rep.ledger_path) as led:
        n = export_eval(led, target)
    click.echo(_report_line(rep, "eval campaign") + f"; {n} structures in {target}", err=True)
    if read_errors or any(r["state"] != "done" for r in rows):
        raise SystemExit(1)


def adsorbml_campaign(
    systems: list,
    adsorbates: list,
    campaign: CampaignOptions,
    *,
    out: Path,
    config: Any,
    model: str | None,
    device: str,
    dtype: str,
    dft: str | None,
) -> int:
    """AdsorbML over every slab x adsorbate pair as a campaign; returns the exit status."""
    from eqv2calc.adsorbml.pipeline import check_gas_references_early
    from eqv2calc.campaigns import AdsorbMLTask, Ledger
    from eqv2calc.campaigns.hashing import item_fingerprint
    from eqv2calc.campaigns.report import write_adsorbml_summary

    spec = _spec(model, device, dtype)
    model_sha256 = _checkpoint_sha256(spec)
    try:  # before the folder, ledger or summaries exist (a refused run leaves nothing)
        check_gas_references_early(model, dft, adsorbates, config, model_sha256)
    except ValueError as err:
        fail(str(err))
    out = _prepare_out(str(out), "adsorbml")
    task = AdsorbMLTask(
        out_dir=str(out.resolve()),
        model=spec.label,
        config=config,
        dft=dft,
        dtype=dtype,
        model_sha256=model_sha256,
    )
    try:
        specs, payloads, _ = task.items(systems, adsorbates, item_fingerprint(task.settings()))
    except ValueError as err:
        fail(str(err))
    exe = _campaign_executor(spec, campaign)
    click.echo(
        f"AdsorbML campaign: {len(systems)} slab(s) x {len(adsorbates)} adsorbate(s) = "
        f"{len(specs)} systems -> {out}",
        err=True,
    )

    def show(payload: dict, outcome: Any, record: dict) -> None:
        if not outcome.ok:
            echo_error(f"{payload['label']}: {outcome.error}")
        else:
            best = ((record.get("ml") or {}).get("best") or {}).get("e_ads_ml_eV")
            echo_line(f"{payload['label']}: best ML E_ads {best} eV -> {payload['out']}")

    rep = _run(task, specs, payloads, out, exe, campaign, show)
    with Ledger(rep.ledger_path) as led:
        paths = write_adsorbml_summary(led, out)
        table = paths["table"].read_text(encoding="utf-8")
        mine = {s.key for s in specs}
        bad = [r for r in led.rows() if r["key"] in mine and r["state"] != "done"]
    click.echo(table.rstrip())
    click.echo(_report_line(rep, "adsorbml campaign"), err=True)
    which = "campaign summary"
    if campaign.shard_range is not None:
        i, n = campaign.shard_range
        which += f" of shard {i} of {n} only (`eqv2calc campaign merge {out}` summarizes all)"
    click.echo(f"{which}: {', '.join(str(p) for p in paths.values())}")
    return 1 if bad else 0


def _slab_files(paths: Sequence[str]) -> list[Path]:
    from eqv2calc.io import expand_inputs

    return expand_inputs(list(paths))


def adsorbml_campaign_command(kw: dict[str, Any], campaign: CampaignOptions) -> int:
    """``eqv2calc adsorbml`` with several --slab/--adsorbate (or campaign options): parse the
    command's options into systems, adsorbates and settings, then :func:`adsorbml_campaign`."""
    from eqv2calc.adsorbml.adsorbates import (
        UnknownAdsorbateError,
        get_adsorbate,
        load_adsorbate_file,
    )
    from eqv2calc.adsorbml.energies import parse_gas_ref
    from eqv2calc.adsorbml.slabs import SlabInputError, read_slab, slabs_from_bulk
    from eqv2calc.io import StructureReadError

    if kw["list_adsorbates"]:
        fail("--list-adsorbates goes alone")
    if not kw["adsorbate"]:
        raise click.UsageError("--adsorbate is required")
    if not kw["slab_file"] and not kw["bulk_file"]:
        raise click.UsageError("give --slab FILE|FOLDER (repeatable) or --bulk FILE --miller H K L")
    if kw["bulk_file"] and kw["miller"] is None:
        raise click.UsageError("--bulk needs --miller H K L")
    binding = None
    if kw["binding_atoms"]:
        from eqv2calc.cli.adsorbml import _parse_binding_atoms

        binding = _parse_binding_atoms(kw["binding_atoms"])
    geometry = {"fix_below": kw["fix_below"], "surface_depth": kw["surface_depth"]}
    try:
        overrides = dict(parse_gas_ref(t) for t in kw["gas_ref"])
        adsorbates = [
            load_adsorbate_file(a, binding) if Path(a).is_file() else get_adsorbate(a)
            for a in kw["adsorbate"]
        ]
        systems = [read_slab(str(f), **geometry) for f in _slab_files(kw["slab_file"])]
        if kw["bulk_file"]:
            systems += slabs_from_bulk(
                kw["bulk_file"],
                tuple(kw["miller"]),
                min_thickness=kw["min_thickness"],
                vacuum=kw["vacuum"],
                min_size=kw["min_size"],
                **geometry,
            )
    except (
        UnknownAdsorbateError,
        SlabInputError,
        StructureReadError,
        FileNotFoundError,
        ValueError,
    ) as err:
        fail(str(err))
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        fail(f"slab names must be unique (file names), got {sorted(names)}")
    # The single-system command's own option -> config mapping, so every per-system option
    # (--write-vasp, --discard-migrated, ...) reaches each system; no progress bars.
    from eqv2calc.cli.adsorbml import _config

    config = _config(SimpleNamespace(**{**kw, "progress": False}), overrides)
    return adsorbml_campaign(
        systems,
        adsorbates,
        campaign,
        out=Path(kw["out_dir"] or "adsorbml_campaign"),
        config=config,
        model=kw["model"],
        device=kw["device"],
        dtype=kw["dtype"],
        dft=kw["dft_spec"],
    )


# ------------------------------------------------------------------------------------------
# eqv2calc campaign status | merge
# ------------------------------------------------------------------------------------------


@click.group("campaign")
def campaign_command() -> None:
    """Inspect and combine campaign ledgers (see --executor / --shard of relax, eval, adsorbml)."""


@campaign_command.command("status")
@click.argument("paths", nargs=-1, required=True, metavar="OUT...")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(paths: tuple[str, ...], as_json: bool) -> None:
    """Counts per state, failures with reasons and throughput of the campaign(s) in OUT
    (folders or ledger files; every shard ledger in a folder is read)."""
    from eqv2calc.campaigns import LedgerError
    from eqv2calc.campaigns.report import campaign_status, format_status

    try:
        status = campaign_status(list(paths))
    except LedgerError as err:
        fail(str(err))
    click.echo(json.dumps(status, indent=2) if as_json else format_status(status))
    if not status["same_settings"]:
        fail(
            "inconsistent campaign: ledgers with different settings ("
            + " | ".join(", ".join(g) for g in status["settings_groups"])
            + "); run each shard with the same options, or keep the campaigns in separate folders"
        )


@campaign_command.command("merge")
@click.argument("paths", nargs=-1, required=True, metavar="OUT...")
@click.option(
    "--into",
    "dest",
    type=click.Path(dir_okay=False),
    default=None,
    help="Merged ledger (default: campaign.sqlite in the first OUT folder): a new file, or "
    "an earlier merged ledger of this campaign (extended); never a ledger being merged.",
)
def merge_command(paths: tuple[str, ...], dest: str | None) -> None:
    """Merge the shard ledgers found in OUT... (folders or files) into one ledger.

    Per item the most advanced state wins (done > failed > pending); shards must come from
    the same command (same settings). Missing shards are reported. --into is never one of
    the ledgers read (a shard's ledger is refused): a new file, or an earlier merged ledger
    of the same campaign, which is extended. An AdsorbML campaign's summary is rewritten
    beside the merged ledger, for every system, named after it: campaign_summary.{txt,json,png}
    for campaign.sqlite, <stem>_summary.{txt,json,png} for --into <stem>.sqlite (e.g.
    merged_summary.* for merged.sqlite).
    """
    from eqv2calc.campaigns import Ledger, LedgerError
    from eqv2calc.campaigns.ledger import LEDGER_NAME
    from eqv2calc.campaigns.report import (
        campaign_status,
        check_merge_target,
        merge_ledgers,
        write_adsorbml_summary,
    )

    first = Path(paths[0])
    target = Path(dest) if dest else (first if first.is_dir() else first.parent) / LEDGER_NAME
    try:
        check_merge_target(list(paths), target)
        status = campaign_status(list(paths))
        counts = merge_ledgers(list(paths), target)
        summary = None
        with Ledger(target) as led:
            if led.kind == "adsorbml":
                summary = write_adsorbml_summary(led, target.parent)
    except LedgerError as err:
        fail(str(err))
    except OSError as err:
        fail(f"--into {target}: {err}")
    click.echo(
        f"merged {len(status['ledgers'])} ledger(s) into {target}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
    )
    if summary:
        click.echo(f"campaign summary: {', '.join(str(p) for p in summary.values())}")
    for n, missing in status["shards_missing"].items():
        echo_error(f"shards of {n} not found: {', '.join(map(str, missing))}")
