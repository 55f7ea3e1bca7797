"""``eqv2calc phonons``: harmonic phonons of one bulk cell through phonopy."""

from __future__ import annotations

import json
from pathlib import Path

import click

from eqv2calc.cli._common import (
    FiniteFloat,
    echo_error,
    fail,
    make_calculator,
    model_options,
    read_inputs,
)

_HELP = """Harmonic phonons of the 3D-periodic cell in FILE (phonopy, finite displacements).

\b
  eqv2calc phonons Cu.cif --model emt                   EMT itself (for checks)
  eqv2calc phonons Cu.cif --supercell 3 3 3 --out ph    the bundled demo model
  eqv2calc phonons Cu.cif -m runs/cons/best.pt          a conservative fine-tune

phonopy builds the supercell and the symmetry-reduced displacements; the model evaluates all
displaced supercells in one batched call (--batch-size to split it). Relax the cell first
(eqv2calc relax --relax-cell): phonons of an unrelaxed cell have imaginary modes.

\b
Outputs in --out (default <name>_phonons/ next to FILE):
  phonopy_params.yaml       structure, displacements and forces (phonopy can reload it)
  band.yaml, total_dos.dat  band structure along the standard path, total DOS
  thermal_properties.yaml   free energy, entropy, heat capacity from --tmin to --tmax
  phonons.png               band structure and DOS
  phonons_summary.json      frequencies at special points, thermal table, timings

Needs phonopy: pip install 'eqv2calc[phonons]'. Units: THz, K, kJ/mol, J/K/mol.
"""


@click.command("phonons", help=_HELP)
@click.argument("file", metavar="FILE")
@model_options
@click.option(
    "--supercell",
    nargs=3,
    type=click.IntRange(min=1),
    default=(3, 3, 3),
    show_default=True,
    help="Repetitions of the input cell along a, b, c.",
)
@click.option(
    "--delta",
    type=FiniteFloat(min=0, min_open=True),
    default=0.01,
    show_default=True,
    help="Displacement, Å.",
)
@click.option(
    "--mesh",
    nargs=3,
    type=click.IntRange(min=1),
    default=(20, 20, 20),
    show_default=True,
    help="q-point mesh for the DOS and thermal properties.",
)
@click.option(
    "--tmin",
    type=FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Lowest temperature of the thermal-properties table, K.",
)
@click.option(
    "--tmax",
    type=FiniteFloat(min=0),
    default=1000.0,
    show_default=True,
    help="Highest temperature of the thermal-properties table, K.",
)
@click.option(
    "--tstep",
    type=FiniteFloat(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Temperature step of the thermal-properties table (--tmin to --tmax), K.",
)
@click.option(
    "--primitive/--no-primitive",
    default=True,
    show_default=True,
    help="Let phonopy find the primitive cell (else: the input cell is the primitive cell).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Most displaced supercells per model call (default: all at once).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def phonons_command(
    *,
    file: str,
    model: str | None,
    device: str,
    dtype: str,
    supercell: tuple[int, int, int],
    delta: float,
    mesh: tuple[int, int, int],
    tmin: float,
    tmax: float,
    tstep: float,
    primitive: bool,
    batch_size: int | None,
    out_dir: str | None,
    as_json: bool,
) -> None:
    from eqv2calc.drivers.phonons import PhononSettings, PhonopyMissingError, run_phonons

    settings = PhononSettings(
        supercell=tuple(supercell),
        delta=delta,
        primitive="auto" if primitive else None,
        mesh=tuple(mesh),
        t_min=tmin,
        t_max=tmax,
        t_step=tstep,
        batch_size=batch_size,
    )
    try:
        settings.validate()
        import phonopy  # noqa: F401 - fail early, before loading a model
    except ValueError as err:
        fail(str(err))
    except ImportError:
        from eqv2calc.drivers.phonons import INSTALL_HINT

        fail(INSTALL_HINT)
    entries, errors = read_inputs([file])
    if errors:
        raise SystemExit(1)
    if len(entries) != 1:
        fail(f"{file}: holds {len(entries)} structures; phonons takes one cell")
    entry = entries[0]
    out = Path(out_dir) if out_dir else Path(file).parent / f"{entry.label}_phonons"
    calc = make_calculator(model, device, dtype)
    try:
        result = run_phonons(entry.atoms, calc, settings, out_dir=out)
    except PhonopyMissingError as err:
        fail(str(err))
    except (ValueError, RuntimeError) as err:
        echo_error(f"{file}: {err}")
        raise SystemExit(1) from None
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"{result.num_displacements} displaced supercell(s) of {result.supercell_atoms} atoms, "
        f"forces in {result.seconds_forces:.1f} s (total {result.seconds:.1f} s)"
    )
    for name, freqs in result.special_frequencies.items():
        label = "Γ" if name == "G" else name
        click.echo(f"  {label:>3}: " + " ".join(f"{f:7.3f}" for f in freqs) + " THz")
    if result.min_frequency < -0.05:
        click.echo(
            f"warning: imaginary modes (lowest {result.min_frequency:.3f} THz): the cell is not "
            "at a minimum of this model, or the supercell is too small",
            err=True,
        )
    temps = result.thermal["temperatures"]
    i = int(abs(temps - 300.0).argmin())
    click.echo(
        f"at {temps[i]:.0f} K: free energy {result.thermal['free_energy'][i]:.4f} kJ/mol, "
        f"entropy {result.thermal['entropy'][i]:.3f} J/K/mol, "
        f"heat capacity {result.thermal['heat_capacity'][i]:.3f} J/K/mol"
    )
    click.echo(f"outputs: {out}/ (phonons.png, band.yaml, total_dos.dat, thermal_properties.yaml)")
