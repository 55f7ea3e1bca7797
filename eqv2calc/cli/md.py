"""``eqv2calc md``: molecular dynamics of one structure (NVE, NVT, NPT)."""

from __future__ import annotations

import json

import click

from eqv2calc.cli._common import (
    EXIT_INTERRUPTED,
    FiniteFloat,
    check_distinct,
    check_format,
    check_outputs,
    echo_error,
    fail,
    make_calculator,
    model_options,
    precision_options,
    read_inputs,
)
from eqv2calc.drivers.md import DIRECT_FORCES_NOTE, RestartMismatch
from eqv2calc.io import OutputDirLocked

_HELP = f"""Run molecular dynamics of the structure in FILE.

With several FILEs the systems run together on the device (eqv2calc.engine: one model call
per step for all of them; --ensemble nve or nvt with Langevin), each with its own trajectory,
log and final structure named as below (--output, --traj and --log name one file, so they are
refused with several FILEs). Existing outputs are never replaced silently: md refuses to start
unless --overwrite (with one FILE, --restart continues them instead; several FILEs cannot be
restarted: run them one at a time with --restart).

A restart continues the same run: it refuses another --ensemble, --timestep, --thermostat or
other integrator setting (temperature, friction, damping times, pressure, --cell) than the
trajectory frames record. --steps counts the steps before the restart, --seed and
--log-interval may change.

\b
Ensembles (ASE integrators):
  nve  velocity Verlet
  nvt  Langevin (--thermostat langevin, --friction) or Nosé-Hoover chain
       (--thermostat nose-hoover, --tdamp)
  npt  Martyna-Tobias-Klein with Nosé-Hoover chains (--pressure, --pdamp,
       --cell isotropic|full); needs a model with a stress head, a 3D-periodic
       structure and no constraints

Initial velocities are drawn from a Maxwell-Boltzmann distribution at --temperature
(--seed makes them reproducible); centre-of-mass motion is removed.

\b
Outputs (next to FILE unless given):
  <name>_md.traj          frames every --log-interval steps and at the last step
                          (positions, momenta, cell, energies; info: md_step, time_fs,
                          settings); --restart continues from its last frame
  <name>_md.log           time, potential/kinetic/total energy, temperature (and
                          pressure, volume for NPT); a summary with the energy drift
  <name>_md_final.extxyz  the final structure

{DIRECT_FORCES_NOTE}

Units: time step and damping times fs, temperature K, pressure GPa, energies eV.
"""


@click.command("md", help=_HELP)
@click.argument("files", metavar="FILE...", nargs=-1, required=True)
@model_options
@precision_options
@click.option(
    "--ensemble",
    type=click.Choice(["nve", "nvt", "npt"], case_sensitive=False),
    default="nvt",
    show_default=True,
    help="Statistical ensemble.",
)
@click.option(
    "--temperature",
    "-T",
    type=FiniteFloat(min=0),
    default=300.0,
    show_default=True,
    help="Target temperature (NVT/NPT) and temperature of the initial velocities, K.",
)
@click.option(
    "--timestep",
    type=FiniteFloat(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Time step, fs.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Total number of MD steps (steps before a --restart count).",
)
@click.option(
    "--thermostat",
    type=click.Choice(["langevin", "nose-hoover"], case_sensitive=False),
    default="langevin",
    show_default=True,
    help="NVT thermostat.",
)
@click.option(
    "--friction",
    type=FiniteFloat(min=0),
    default=0.01,
    show_default=True,
    help="Langevin friction coefficient, 1/fs.",
)
@click.option(
    "--tdamp",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    help="Nosé-Hoover thermostat damping time, fs [default: 100 time steps].",
)
@click.option(
    "--pressure",
    type=FiniteFloat(),
    default=0.0,
    show_default=True,
    help="External pressure for NPT, GPa (1 bar = 1e-4 GPa).",
)
@click.option(
    "--pdamp",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    help="Barostat damping time for NPT, fs [default: 1000 time steps].",
)
@click.option(
    "--cell",
    "cell_dof",
    type=click.Choice(["isotropic", "full"]),
    default="isotropic",
    show_default=True,
    help="NPT cell freedom: volume only, or the full cell.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Random seed for the initial velocities and the Langevin noise.",
)
@click.option(
    "--log-interval",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Write a log line and a trajectory frame every this many steps.",
)
@click.option(
    "--traj",
    "traj_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Trajectory file [default: <name>_md.traj next to FILE].",
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Log file [default: <name>_md.log next to FILE].",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Final structure file, format from the extension "
    "[default: <name>_md_final.extxyz next to FILE].",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Continue from the last frame of the trajectory (positions, momenta, cell, step "
    "count, time) instead of starting over; refused if the ensemble, time step or another "
    "integrator setting differs from the trajectory's. One FILE only.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the outputs of an earlier run; without it (and without --restart) md "
    "refuses to start when one of its output files exists.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar (on stderr).",
)
def md_command(
    *,
    files: tuple[str, ...],
    model: str | None,
    device: str,
    dtype: str,
    ensemble: str,
    temperature: float,
    timestep: float,
    steps: int,
    thermostat: str,
    friction: float,
    tdamp: float | None,
    pressure: float,
    pdamp: float | None,
    cell_dof: str,
    seed: int | None,
    log_interval: int,
    traj_path: str | None,
    log_path: str | None,
    output: str | None,
    restart: bool,
    overwrite: bool,
    as_json: bool,
    progress: bool,
) -> None:
    from ase import units

    from eqv2calc.drivers.jobs import fresh_seed, md_paths, run_md_job
    from eqv2calc.drivers.md import MDSettings

    if len(files) > 1:  # several systems: the batched device engine
        given = [
            name
            for name, value in (("--output", output), ("--traj", traj_path), ("--log", log_path))
            if value is not None
        ]
        if given:
            fail(
                f"{'/'.join(given)} names one file but {len(files)} inputs were given; with "
                "several inputs each system writes <name>_md.traj, <name>_md.log and "
                "<name>_md_final.extxyz next to its FILE",
                code=2,
            )
        _md_many(
            files,
            model=model,
            device=device,
            dtype=dtype,
            ensemble=ensemble,
            temperature=temperature,
            timestep=timestep,
            steps=steps,
            thermostat=thermostat,
            friction=friction,
            seed=seed,
            log_interval=log_interval,
            restart=restart,
            overwrite=overwrite,
            progress=progress,
        )
        return
    file = files[0]
    entries, errors = read_inputs([file])
    if errors:
        raise SystemExit(1)
    if len(entries) != 1:
        fail(f"{file}: holds {len(entries)} structures; md runs one (split the file first)")
    entry = entries[0]
    paths = md_paths(entry, trajectory=traj_path, logfile=log_path, output=output)
    check_distinct(list(zip(("--traj", "--log", "--output"), paths)), [entry.source])
    check_outputs(files=paths)
    check_format(paths[0], "--traj", writes=("traj",))
    check_format(paths[2], "--output")
    if not restart:
        _refuse_existing(paths, overwrite)
    elif not paths[0].exists() and not overwrite:
        # --restart without a trajectory is a fresh start: it would replace the log and the
        # final structure of an earlier run as much as a run without --restart would
        existing = [str(p) for p in paths[1:] if p.exists()]
        if existing:
            fail(
                f"--restart: there is no trajectory {paths[0]} to continue, and {existing[0]} "
                "exists (an earlier run's output); pass --overwrite to start afresh over it, "
                "--traj to name the trajectory, or move it away",
                code=2,
            )
    calc = make_calculator(model, device, dtype)
    try:
        result, (traj, log, final_path) = run_md_job(
            entry,
            calc,
            trajectory=paths[0],
            logfile=paths[1],
            output=paths[2],
            settings=MDSettings(
                ensemble=ensemble.lower(),
                temperature_K=temperature,
                timestep_fs=timestep,
                steps=steps,
                thermostat=thermostat.lower(),
                friction_per_fs=friction,
                tdamp_fs=tdamp,
                pressure=pressure * units.GPa,
                pdamp_fs=pdamp,
                cell_dof=cell_dof,
                seed=fresh_seed() if seed is None else seed,
                log_interval=log_interval,
            ),
            restart=restart,
            progress=progress,
        )
    except KeyboardInterrupt:
        echo_error(
            f"interrupted; the trajectory {paths[0]} and the log {paths[1]} (marked "
            "interrupted) hold the steps so far; continue with --restart"
        )
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (ValueError, RuntimeError, NotImplementedError) as err:
        if isinstance(err, OutputDirLocked):
            fail(str(err))
        if isinstance(err, RestartMismatch):
            fail(f"{file}: {err}", code=2)
        text = str(err) or type(err).__name__
        if isinstance(err, NotImplementedError):
            text = f"NotImplementedError: {text}"
        echo_error(f"{file}: {text}")
        raise SystemExit(1) from None
    if as_json:
        click.echo(
            json.dumps({"source": str(entry.source), **result.to_dict(), "output": str(final_path)})
        )
    else:
        click.echo(f"{result.summary_line()} -> {final_path}")
        click.echo(f"log: {log}; trajectory: {traj}", err=True)


def _refuse_existing(paths, overwrite: bool) -> None:
    """Exit 2 naming the first existing output file unless ``overwrite``."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        fail(
            f"{existing[0]} exists (an earlier run's output); pass --overwrite to replace "
            "it, --restart to continue a single run, or move it away",
            code=2,
        )


def _md_many(
    files,
    *,
    model,
    device,
    dtype,
    ensemble,
    temperature,
    timestep,
    steps,
    thermostat,
    friction,
    seed,
    log_interval,
    restart,
    overwrite,
    progress,
) -> None:
    """Several inputs: NVE / Langevin NVT of all systems together (eqv2calc.engine.md)."""
    from eqv2calc.drivers.jobs import fresh_seed, md_paths, run_md_many_job
    from eqv2calc.engine.md import MDSettings as EngineMD

    if ensemble.lower() == "npt" or (ensemble.lower() == "nvt" and thermostat != "langevin"):
        fail("several inputs run together with --ensemble nve or nvt --thermostat langevin")
    if restart:
        fail(
            "--restart continues one run; with several FILEs run each one alone with "
            "--restart (eqv2calc md FILE --restart ...)",
            code=2,
        )
    entries, errors = read_inputs(list(files))
    if errors or not entries:
        raise SystemExit(1)
    paths = [md_paths(e) for e in entries]
    check_outputs(files=[p for trio in paths for p in trio])
    _refuse_existing([p for trio in paths for p in trio], overwrite)
    settings = EngineMD(
        ensemble=ensemble.lower(),
        timestep_fs=timestep,
        steps=steps,
        temperature_K=temperature,
        friction_per_fs=friction,
        seed=fresh_seed() if seed is None else seed,
        log_interval=log_interval,
    )
    calc = make_calculator(model, device, dtype)
    try:
        results, paths = run_md_many_job(entries, calc, settings, temperature_K=temperature)
    except (ValueError, RuntimeError) as err:
        fail(str(err))
    for e, r, (traj, log, final) in zip(entries, results, paths):
        drift = ""
        if r.drift_ev_per_ps is not None:
            drift = f", total energy drift {r.drift_ev_per_ps:+.4g} eV/ps"
        click.echo(
            f"{e.label}: {r.steps} steps, final T {r.temperatures[-1]:.1f} K, "
            f"Epot {r.potential_energies[-1]:.6f} eV{drift} -> {final} "
            f"(log {log}, trajectory {traj}, seed {settings.seed})"
        )
