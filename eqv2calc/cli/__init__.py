"""The ``eqv2calc`` command line.

Each command lives in its own module under :mod:`eqv2calc.cli` and is imported only when it is
invoked, so ``eqv2calc --help`` stays fast and one broken optional dependency cannot take down
every command. Commands only parse options, call a driver and report.

Every failure ends as one ``error: ...`` line and an exit status (1; 2 for a usage error; 130
after Ctrl-C); the traceback is shown only with ``eqv2calc --debug`` (or ``EQV2CALC_DEBUG=1``).
Warnings are printed as one ``warning: ...`` line.
"""

from __future__ import annotations

import importlib
import os
import warnings

import click

# Set before torch (and its OpenMP runtime) is imported by a command: idle OpenMP threads sleep
# instead of spinning. With spinning, two torch processes sharing a small machine slow each other
# down 10-30x (measured, benchmarks/README.md); the user's own setting always wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# command name -> "module:attribute" (module relative to eqv2calc.cli)
_COMMANDS: dict[str, tuple[str, str]] = {
    "relax": ("relax", "relax_command"),
    "md": ("md", "md_command"),
    "eval": ("evaluate", "eval_command"),
    "adsorbml": ("adsorbml", "adsorbml_command"),
    "models": ("models", "models_command"),
    "train": ("train", "train_command"),
    "phonons": ("phonons", "phonons_command"),
    "campaign": ("campaign", "campaign_command"),
}

_SHORT_HELP = {
    "relax": "Relax structures (positions, optionally the cell) with EquiformerV2.",
    "md": "Run molecular dynamics (NVE, NVT or NPT).",
    "eval": "Single-point energies, forces (and stress) for many structures.",
    "adsorbml": "AdsorbML: place an adsorbate, relax all placements, rank, hand off to DFT.",
    "models": "List the model registry and which checkpoints are present locally.",
    "train": "Train or fine-tune an EquiformerV2 model on your own data.",
    "phonons": "Harmonic phonons (band structure, DOS, thermal properties) through phonopy.",
    "campaign": "Status and merging of campaign ledgers (relax/eval/adsorbml --executor, --shard).",
}


class _LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[cmd_name]
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            if _debug(ctx):
                raise
            click.echo("\ninterrupted (Ctrl-C); finished results are kept", err=True)
            raise SystemExit(_EXIT_INTERRUPTED) from None
        except Exception as err:
            if _debug(ctx):
                raise
            click.echo(f"error: {_describe(err)}", err=True)
            raise SystemExit(1) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


#: Exceptions that mean bad input or a bad environment, shown as their message alone.
_EXPECTED = (ValueError, OSError, RuntimeError, FloatingPointError, ImportError, MemoryError)
_EXIT_INTERRUPTED = 130


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug")) or os.environ.get("EQV2CALC_DEBUG", "") not in ("", "0")


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, MemoryError):
        return f"out of memory{': ' + text if text else ''}; try a smaller --max-atoms"
    if isinstance(err, _EXPECTED) and text:
        return text
    name = type(err).__name__
    return (
        f"unexpected {name}{': ' + text if text else ''} (run again as `eqv2calc --debug ...` "
        "for the traceback, and please report it)"
    )


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {' '.join(str(message).split())}", err=True)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eqv2calc")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the full traceback of an error (also EQV2CALC_DEBUG=1).",
)
@click.option(
    "--deterministic",
    is_flag=True,
    envvar="EQV2CALC_DETERMINISTIC",
    help="Bitwise-reproducible model evaluations between runs on the same machine: one CPU "
    "thread and deterministic kernels (slower). See README, 'Errors and recovery'.",
)
def main(debug: bool, deterministic: bool) -> None:
    """eqv2calc: the EquiformerV2 machine-learned potential for atomistic simulation.

    Energies are in eV, forces in eV/Å, stress in eV/Å³. Without --model, commands use the
    small bundled demonstration model (trained on EMT, not DFT) and say so.

    Exit status: 0 success; 1 an error (one line on stderr; the traceback with --debug);
    2 a usage error (a bad option, an output file that exists or would replace an input);
    3 (relax) some structures did not converge; 130 interrupted with Ctrl-C.
    """
    if not debug:
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        click.get_current_context().call_on_close(
            lambda: setattr(warnings, "showwarning", previous)
        )
