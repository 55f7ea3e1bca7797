"""``eqv2calc eval``: single-point energies, forces and stress for many structures."""

from __future__ import annotations

import click

from eqv2calc.cli._common import (
    check_distinct,
    check_format,
    check_outputs,
    exit_on_interrupt,
    fail,
    make_calculator,
    max_atoms_option,
    model_options,
    precision_options,
    progress_option,
    read_inputs,
    result_reporter,
)
from eqv2calc.cli.campaign import CampaignOptions, campaign_options

_HELP = """Compute energies, forces (and stress) for many structures: no relaxation.

FILES are structure files that ASE or pymatgen can read, folders or quoted glob patterns;
every frame of a multi-frame extxyz is evaluated, but only the last frame of a .traj (taken as
one structure's history; convert it to extxyz to evaluate every frame). Structures are evaluated in batches of at
most --max-atoms atoms, one model call per batch.

\b
Outputs:
  eval_results.extxyz   every structure with energy (eV), forces (eV/Å) and, for models
                        with a stress head and 3D-periodic structures, stress (eV/Å³)
                        attached; info holds label and source file (--output)
  eval_summary.json     per structure: energy, energy per atom, max force, stress,
                        or the error (--summary); rewritten after every structure

\b
An existing --output file is never replaced without --overwrite.

\b
Exit status: 0 all evaluated; 1 an input could not be read or evaluated (the other
structures are still evaluated); 2 a usage error (e.g. --output exists).
"""


@click.command("eval", help=_HELP)
@click.argument("files", nargs=-1, required=True, metavar="FILES...")
@model_options
@precision_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default="eval_results.extxyz",
    show_default=True,
    help="extxyz file for the structures with their results.",
)
@click.option(
    "--summary",
    "summary_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON summary file (default: eval_summary.json next to --output).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing --output file (without it, an existing file stops the run).",
)
@max_atoms_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON record per structure instead of a summary line.",
)
@progress_option
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for --output when it is a bare file name (and, in campaign mode, of the ledger).",
)
@campaign_options
def eval_command(
    *,
    files: tuple[str, ...],
    model: str | None,
    device: str,
    dtype: str,
    output: str,
    summary_path: str | None,
    overwrite: bool,
    max_atoms: int,
    as_json: bool,
    progress: bool,
    output_dir: str | None,
    campaign: CampaignOptions,
) -> None:
    if campaign.requested:
        from eqv2calc.cli.campaign import eval_campaign

        if overwrite:
            fail(
                "--overwrite does not apply to a campaign (--executor/--shard): it continues "
                "its ledger; use another --output-dir to start afresh",
                code=2,
            )

        eval_campaign(
            files,
            campaign,
            model=model,
            device=device,
            dtype=dtype,
            output=output,
            output_dir=output_dir,
            max_atoms=max_atoms,
            as_json=as_json,
        )
        return
    from pathlib import Path

    from eqv2calc.drivers.jobs import run_eval_job

    entries, read_errors = read_inputs(files)
    if not entries:
        fail("no structures to evaluate")
    _note_trajectories(entries)
    if (
        output_dir is not None
        and not Path(output).is_absolute()
        and Path(output).parent == Path(".")
    ):
        output = str(Path(output_dir) / output)
    if summary_path is None:
        summary_path = str(Path(output).parent / "eval_summary.json")
    sources = [e.source for e in entries]
    check_distinct([("--output", output), ("--summary", summary_path)], sources)
    check_outputs(files=[output, summary_path])
    check_format(output, "--output", writes=("extxyz", "xyz"))
    if Path(output).exists() and not overwrite:
        fail(
            f"{output} exists (an earlier run's results?); pass --overwrite to replace it, "
            "or name another file with --output",
            code=2,
        )
    calc = make_calculator(model, device, dtype)
    with exit_on_interrupt(
        f"interrupted; {output} holds the structures evaluated so far and {summary_path} "
        "marks the run as interrupted"
    ):
        job = run_eval_job(
            entries,
            calc,
            output=output,
            read_errors=read_errors,
            summary_path=summary_path,
            max_atoms_per_batch=max_atoms,
            progress=progress,
            on_result=result_reporter(as_json, progress),
        )
    written = f"results: {output}" if job.n_ok else "no results file written"
    click.echo(
        f"{job.n_ok}/{len(entries) + len(read_errors)} evaluated, {job.n_failed} failed; "
        f"{written}; summary: {job.summary_path}",
        err=True,
    )
    if job.exit_code:
        raise SystemExit(job.exit_code)


def _note_trajectories(entries) -> None:
    """A note for each .traj input with several frames: only its last one is evaluated."""
    from ase.io.trajectory import Trajectory

    for source in dict.fromkeys(e.source for e in entries if e.source.suffix.lower() == ".traj"):
        try:
            with Trajectory(source) as traj:
                n = len(traj)
        except Exception:  # read fine above; a count is only for the note
            continue
        if n > 1:
            click.echo(
                f"note: {source} holds {n} frames; eval reads a .traj as one structure's "
                "history and evaluates its last frame only (write it as extxyz to evaluate "
                "every frame)",
                err=True,
            )
