"""The ``eqv2calc`` command line.

Each command lives in its own module under :mod:`eqv2calc.cli` and is imported only when it is
invoked, so ``eqv2calc --help`` stays fast and one broken optional dependency cannot take down
every command. Commands only parse options, call a driver and report.
"""

from __future__ import annotations

import importlib
import os

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
    "campaign": ("campaign", "campaign_command"),
}

_SHORT_HELP = {
    "relax": "Relax structures (positions, optionally the cell) with EquiformerV2.",
    "md": "Run molecular dynamics (NVE, NVT or NPT).",
    "eval": "Single-point energies, forces (and stress) for many structures.",
    "adsorbml": "AdsorbML: place an adsorbate, relax all placements, rank, hand off to DFT.",
    "models": "List the model registry and which checkpoints are present locally.",
    "train": "Train or fine-tune an EquiformerV2 model on your own data.",
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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eqv2calc")
def main() -> None:
    """eqv2calc: the EquiformerV2 machine-learned potential for atomistic simulation.

    Energies are in eV, forces in eV/Å, stress in eV/Å³. Without --model, commands use the
    small bundled demonstration model (trained on EMT, not DFT) and say so.
    """
