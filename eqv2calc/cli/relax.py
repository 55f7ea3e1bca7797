"""``eqv2calc relax``: relax structures from files, batched, with restartable outputs."""

from __future__ import annotations

import click

from eqv2calc.cli._common import (
    FiniteFloat,
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
    require_stress,
    result_reporter,
)
from eqv2calc.cli.campaign import CampaignOptions, campaign_options

_HELP = """Relax the atomic positions (and optionally the cell) of one or more structures.

FILES are structure files that ASE or pymatgen can read (CIF, POSCAR/CONTCAR, extxyz, .traj,
...), folders (every structure file inside) or quoted glob patterns. A multi-frame extxyz
gives one structure per frame; a .traj gives its last frame. Constraints stored in extxyz or
.traj inputs (e.g. fixed atoms) are kept.

Several structures are relaxed together: one batched model call per optimizer step, each
structure with its own optimizer state and convergence test, converged ones leaving the
batch (BFGSLineSearch needs several evaluations per step and runs one at a time).

\b
Outputs, next to each input unless --output-dir/--output is given:
  <name>_relaxed.extxyz   relaxed structure with energy, forces (format: --format)
  <name>_relax.traj       trajectory (one frame per step; used by --restart)
  <name>_relax.log        optimizer log (step, energy, max force)
  relax_summary.json      per structure: initial/final energy (eV), max force (eV/Å),
                          steps, converged; rewritten after every structure (--summary)

Running the same input again rewrites its outputs (--restart continues its trajectory).
Outputs that hold another input's results (same name from another folder or format, e.g.
d1/x.cif and d2/x.xyz into one --output-dir) are never replaced: relax refuses to start
(exit status 2) and names the file and the input it came from.

\b
Exit status: 0 all converged; 1 an input could not be read or relaxed (other structures
are still relaxed); 3 no failures but some structures did not converge.

Units: energies eV, forces eV/Å, lengths Å.
"""


@click.command("relax", help=_HELP)
@click.argument("files", nargs=-1, required=True, metavar="FILES...")
@model_options
@precision_options
@click.option(
    "--optimizer",
    type=click.Choice(["FIRE", "BFGS", "LBFGS", "BFGSLineSearch"], case_sensitive=False),
    default="FIRE",
    show_default=True,
    help="ASE optimizer. FIRE, BFGS and LBFGS are batched; BFGSLineSearch runs one "
    "structure at a time.",
)
@click.option(
    "--fmax",
    type=FiniteFloat(min=0, min_open=True),
    default=0.05,
    show_default=True,
    help="Converged when the largest force on any free atom is below this (eV/Å); with "
    "--relax-cell the cell gradient must be below it too.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Maximum optimizer steps per structure (steps before a --restart count).",
)
@click.option(
    "--relax-cell",
    is_flag=True,
    help="Relax the cell as well (ASE FrechetCellFilter). Needs a model with a stress head "
    "and structures periodic in all three directions.",
)
@click.option(
    "--fix-below",
    type=FiniteFloat(),
    default=None,
    metavar="Z",
    help="Fix every atom whose z coordinate is below Z (Å), e.g. the bottom layers of a "
    "slab read from CIF; adds to constraints already in the file.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="File for the relaxed structure, format from the extension (.extxyz, .cif, .vasp, "
    ".traj, POSCAR...). Only with a single structure.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for all outputs (default: next to each input file).",
)
@click.option(
    "--format",
    "fmt",
    default="extxyz",
    show_default=True,
    help="File extension (format) of the relaxed structures when --output is not given, "
    "e.g. extxyz, cif, vasp, traj.",
)
@click.option(
    "--summary",
    "summary_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON summary file (default: relax_summary.json in --output-dir, else in the "
    "current folder).",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Continue an interrupted run: each structure restarts from the last frame of its "
    "trajectory (BFGS/LBFGS history rebuilt from it) instead of from the input.",
)
@click.option(
    "--batch/--no-batch",
    default=True,
    show_default=True,
    help="Relax several structures together (one model call per step) or one at a time.",
)
@max_atoms_option
@click.option(
    "--engine",
    type=click.Choice(["torch", "ase"]),
    default=None,
    help="torch: the batched device engine (FIRE/LBFGS, FixAtoms); ase: one ASE optimizer "
    "per structure. Default: torch where it applies (eqv2calc model, FIRE/LBFGS, no "
    "--restart, only FixAtoms constraints), else ase.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON record per structure instead of the summary line.",
)
@progress_option
@campaign_options
def relax_command(
    *,
    files: tuple[str, ...],
    model: str | None,
    device: str,
    dtype: str,
    optimizer: str,
    fmax: float,
    steps: int,
    relax_cell: bool,
    fix_below: float | None,
    output: str | None,
    output_dir: str | None,
    fmt: str,
    summary_path: str | None,
    restart: bool,
    batch: bool,
    max_atoms: int,
    engine: str | None,
    as_json: bool,
    progress: bool,
    campaign: CampaignOptions,
) -> None:
    from eqv2calc.drivers.relax import RelaxSettings

    settings = RelaxSettings(optimizer=optimizer, fmax=fmax, steps=steps, relax_cell=relax_cell)
    if campaign.requested:
        from eqv2calc.cli.campaign import relax_campaign

        if output is not None:
            fail("--output is for a single structure; a campaign writes into --output-dir")
        relax_campaign(
            files,
            campaign,
            model=model,
            device=device,
            dtype=dtype,
            settings=settings,
            fix_below=fix_below,
            output_dir=output_dir,
            fmt=fmt,
            summary_path=summary_path,
            max_atoms=max_atoms,
            engine=engine,
            as_json=as_json,
        )
        return
    from pathlib import Path

    from eqv2calc.drivers.jobs import (
        EngineNotApplicable,
        OutputsOfAnotherInput,
        engine_fallback_note,
        run_relax_job,
    )

    entries, read_errors = read_inputs(files)
    if output is not None and len(entries) > 1:
        fail(f"--output names one file but {len(entries)} structures were read; use --output-dir")
    if not entries:
        fail("no structures to relax")
    if summary_path is None:
        summary_path = str(Path(output_dir or ".") / "relax_summary.json")
    folders = [output_dir] if output_dir else sorted({str(e.source.parent) for e in entries})
    sources = [e.source for e in entries]
    check_distinct([("--output", output), ("--summary", summary_path)], sources)
    check_outputs(folders=folders if output is None else [], files=[output, summary_path])
    check_format(output, "--output")
    if output is None:
        from eqv2calc.io import output_format

        try:
            output_format(f"structure_relaxed.{fmt.lstrip('.')}")
        except ValueError:
            fail(
                f"--format {fmt}: not a structure format that can be written "
                "(e.g. extxyz, cif, vasp, traj)",
                code=2,
            )
    calc = make_calculator(model, device, dtype)
    if relax_cell:
        require_stress(calc, "--relax-cell")

    note = engine_fallback_note(calc, optimizer, restart) if engine is None else None
    if note:
        click.echo(f"note: {note}", err=True)

    def describe(result, paths) -> str:
        return f"{result.summary_line()} -> {paths.relaxed}"

    interrupted = (
        f"interrupted; finished structures are written and {summary_path} marks the run "
        "as interrupted; continue with --restart"
    )
    try:
        with exit_on_interrupt(interrupted):
            job = run_relax_job(
                entries,
                calc,
                settings=settings,
                read_errors=read_errors,
                fix_below_z=fix_below,
                output=output,
                output_dir=output_dir,
                fmt=fmt,
                summary_path=summary_path,
                restart=restart,
                batch=batch,
                max_atoms_per_batch=max_atoms,
                progress=progress,
                on_result=result_reporter(as_json, progress, describe),
                engine=engine,
            )
    except ValueError as err:
        usage = isinstance(err, (EngineNotApplicable, OutputsOfAnotherInput))
        fail(str(err), code=2 if usage else 1)
    n_conv = job.n_ok - job.n_not_converged
    total = len(entries) + len(read_errors)
    click.echo(
        f"{n_conv}/{total} converged, {job.n_not_converged} not converged, "
        f"{job.n_failed} failed; summary: {job.summary_path}",
        err=True,
    )
    if job.exit_code:
        raise SystemExit(job.exit_code)
