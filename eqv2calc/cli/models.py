"""``eqv2calc models``: list the model registry, show one card, or download a checkpoint."""

from __future__ import annotations

import json
import textwrap

import click

from eqv2calc import registry
from eqv2calc.cli._common import EMT_MODEL_NAME, fail
from eqv2calc.registry import ModelCard

_HELP = """List the model registry, show one model card, or download a checkpoint.

\b
  eqv2calc models                    table of all models, with which are present locally
  eqv2calc models NAME               the full card of one model (name, file name or alias)
  eqv2calc models --download NAME    fetch one checkpoint into the cache folder
  eqv2calc models --json [NAME]      the same as JSON

Read the ENERGY column before comparing numbers: OC20 (and ODAC) models predict adsorption
energies relative to gas-phase references, OC22 / OMat24 / MPtrj models predict total DFT
energies, and the bundled demo model imitates ASE's EMT, not DFT.

\b
Files and environment variables:
  EQV2CALC_CACHE       cache folder for downloaded checkpoints
                       (default $XDG_CACHE_HOME/eqv2calc or ~/.cache/eqv2calc)
  EQV2CALC_OFFLINE=1   never download; a missing checkpoint is an error that gives
                       the URL and the exact path to put the file at
  HF_TOKEN             Hugging Face access token, needed for the gated OMat24/MPtrj
                       checkpoints (request access on huggingface.co/fairchem/OMAT24)
  EQV2CALC_MODELS_DIR  folder with the model cards and the bundled checkpoint
                       (default: the package data folder eqv2calc/registry/models/)
"""


def _presence(card: ModelCard) -> tuple[bool, str]:
    path = registry.local_path(card)
    return path.is_file(), str(path)


def _card_json(card: ModelCard) -> dict:
    data = card.to_dict()
    present, path = _presence(card)
    data["local_path"] = path
    data["present"] = present
    return data


def _table(cards: list[ModelCard]) -> str:
    header = ("NAME", "FAMILY", "ENERGY", "PROPERTIES", "SIZE", "LOCAL")
    rows = []
    for card in cards:
        present, path = _presence(card)
        local = (
            f"yes  {path}" if present else ("no (bundled file missing)" if card.bundled else "no")
        )
        rows.append(
            (
                card.name,
                card.family,
                card.energy_short,
                ",".join(card.properties),
                card.parameters or "-",
                local,
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _wrap(label: str, text: str, width: int = 100) -> str:
    indent = " " * 18
    return textwrap.fill(text, width=width, initial_indent=f"{label:<18}", subsequent_indent=indent)


def _describe(card: ModelCard) -> str:
    present, path = _presence(card)

    def value(x) -> str:
        return "unknown" if x is None else str(x)

    lines = [f"{card.name}: {card.title}", ""]
    lines.append(_wrap("file", card.file_name))
    lines.append(_wrap("local", f"{'present' if present else 'missing'}: {path}"))
    lines.append(_wrap("family / layout", f"{card.family} / {card.layout or 'not set'}"))
    lines.append(_wrap("training data", card.training_data))
    lines.append(_wrap("energy", card.energy_meaning))
    lines.append(_wrap("properties", ", ".join(card.properties)))
    strict = {True: "strict", False: "non-strict", None: "unknown"}[card.strict_neighbor_cap]
    graph = (
        f"cutoff {value(card.cutoff)} Å, at most {value(card.max_neighbors)} neighbours "
        f"({strict}), {value(card.num_elements)} element types"
    )
    lines.append(_wrap("graph", graph))
    if card.architecture:
        arch = ", ".join(f"{k} {v}" for k, v in card.architecture.items())
        lines.append(_wrap("architecture", arch))
    size = card.parameters or "unknown"
    if card.parameters_exact is not None:
        size += f" ({card.parameters_exact:,} parameters)"
    lines.append(_wrap("size", size))
    if card.accuracy:
        lines.append("accuracy:")
        for acc in card.accuracy:
            unit = f" {acc.unit}" if acc.unit else ""
            lines.append(
                textwrap.fill(
                    f"{acc.metric} = {acc.value:g}{unit} on {acc.dataset} [{acc.source}]",
                    width=100,
                    initial_indent="  - ",
                    subsequent_indent="    ",
                )
            )
    else:
        lines.append(_wrap("accuracy", "no published figures recorded"))
    if not card.bundled:
        lines.append(_wrap("download", value(card.url)))
        if card.gated:
            lines.append(_wrap("", "gated: needs Hugging Face access and HF_TOKEN"))
        if card.size_bytes is not None or card.sha256 is not None:
            lines.append(
                _wrap("verify", f"size {value(card.size_bytes)} B, sha256 {value(card.sha256)}")
            )
    lines.append(
        _wrap("licence", card.license + (f" ({card.license_url})" if card.license_url else ""))
    )
    if card.config:
        lines.append(_wrap("config", card.config))
    if card.citation:
        lines.append(_wrap("cite", card.citation))
    if card.aliases:
        lines.append(_wrap("also known as", ", ".join(card.aliases)))
    if card.notes:
        lines.append("notes:")
        for note in card.notes:
            lines.append(
                textwrap.fill(note, width=100, initial_indent="  - ", subsequent_indent="    ")
            )
    if card.sources:
        lines.append("sources:")
        lines.extend(f"  - {source}" for source in card.sources)
    lines.append(_wrap("card file", value(card.card_file)))
    return "\n".join(lines)


@click.command("models", help=_HELP, short_help="List the model registry.")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--download",
    "download_name",
    metavar="NAME",
    help="Download this model's checkpoint into the cache folder (no-op if present).",
)
@click.option("--force", is_flag=True, help="With --download: download again even if present.")
@click.option("--no-progress", is_flag=True, help="With --download: no progress bar.")
def models_command(
    name: str | None, as_json: bool, download_name: str | None, force: bool, no_progress: bool
) -> None:
    if (force or no_progress) and not download_name:
        raise click.UsageError("--force and --no-progress go with --download NAME")
    if EMT_MODEL_NAME in (name, download_name):
        fail(
            f"'{EMT_MODEL_NAME}' is ASE's EMT potential, not a checkpoint: it has no card and "
            "nothing to download (every command's --model accepts it, for testing)"
        )
    try:
        if download_name:
            card = registry.get_card(download_name)
            path = registry.fetch(card, force=force, progress=not no_progress)
            if as_json:
                click.echo(json.dumps(_card_json(card), indent=2, ensure_ascii=False))
            else:
                click.echo(f"{card.name}: {path}")
            return
        if name:
            card = registry.get_card(name)
            click.echo(
                json.dumps(_card_json(card), indent=2, ensure_ascii=False)
                if as_json
                else _describe(card)
            )
            return
        cards = registry.list_cards()
        if as_json:
            click.echo(json.dumps([_card_json(c) for c in cards], indent=2, ensure_ascii=False))
            return
        click.echo(_table(cards))
        click.echo(f"\ncache folder: {registry.cache_dir()}")
        click.echo("details: eqv2calc models NAME    download: eqv2calc models --download NAME")
    except (registry.UnknownModelError, registry.CardError, OSError) as exc:
        fail(str(exc))
