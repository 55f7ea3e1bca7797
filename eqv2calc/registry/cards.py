"""Model cards: the metadata of one checkpoint, read from a YAML file and validated.

See the repository's ``models/README.md`` for the fields. Lengths are in Å.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ENERGY_KINDS",
    "FAMILIES",
    "LAYOUTS",
    "PROPERTIES",
    "AccuracyEntry",
    "CardError",
    "ModelCard",
    "load_card",
]

FAMILIES = ("demo", "oc20", "oc22", "omat24", "mptrj", "odac")
LAYOUTS = ("classic", "hydra", "hydra-dens")
ENERGY_KINDS = ("adsorption", "total", "emt")
PROPERTIES = ("energy", "forces", "stress")


class CardError(ValueError):
    """A model card file is malformed (the message names the file and the key)."""


@dataclass(frozen=True)
class AccuracyEntry:
    """One published accuracy figure of a model, with where it comes from.

    Attributes:
        metric: what was measured, e.g. ``"force MAE"`` or ``"F1 (stability)"``.
        value: the number as published.
        unit: its unit (``"eV/Å"``, ``"eV"``, ``"eV/atom"``, ``"%"``, ``""`` for ratios).
        dataset: the benchmark or split it was measured on.
        source: the publication, page or file the number was taken from.
    """

    metric: str
    value: float
    unit: str
    dataset: str
    source: str


@dataclass(frozen=True, eq=True)
class ModelCard:
    """Metadata of one model checkpoint (one YAML file in ``eqv2calc/registry/models/``).

    Lengths are in Å. Fields that the sources do not give are ``None``.

    Attributes:
        name: registry name, e.g. ``"eq2_31M_ec4_allmd"``.
        title: one-line human description.
        file_name: checkpoint file name, also its name in the cache folder.
        family: training-data family: ``demo``, ``oc20``, ``oc22``, ``omat24``, ``mptrj``, ``odac``.
        layout: checkpoint layout: ``classic``, ``hydra`` or ``hydra-dens`` (None if not fixed yet).
        bundled: True for a checkpoint shipped with the package (never downloaded).
        training_data: what the model was trained on.
        energy_kind: ``adsorption`` (referenced energy, OC20/ODAC style), ``total`` (total DFT
            energy) or ``emt`` (imitates ASE's EMT).
        energy_short: a few words for tables.
        energy_meaning: a plain explanation of what the predicted energy is.
        properties: predicted properties, a subset of energy, forces, stress.
        cutoff: neighbour search radius in Å.
        max_neighbors: neighbour cap per atom.
        strict_neighbor_cap: True if the cap cuts exactly at ``max_neighbors`` (ties broken
            arbitrarily), False if atoms tied with the last kept neighbour are kept too.
        num_elements: size of the element embedding table.
        architecture: backbone sizes (``num_layers``, ``lmax``, ``mmax``, ``sphere_channels``...).
        parameters: nominal parameter count as published, e.g. ``"31M"``.
        parameters_exact: exact parameter count, when a source gives it.
        accuracy: published accuracy figures.
        url: download URL (as published; Hugging Face ``blob`` links turned into ``resolve``).
        source_page: the page where the checkpoint is published.
        size_bytes: expected file size in bytes (verified after download when given).
        sha256: expected SHA-256 (verified after download when given).
        gated: True if the download needs an account with granted access (Hugging Face).
        license: licence of the checkpoint, or "see source" when the sources are unclear.
        license_url: where the licence is stated.
        config: the training configuration the checkpoint was made with.
        citation: the paper(s) to cite.
        aliases: other accepted names (e.g. fairchem's pretrained-model names).
        notes: caveats for users.
        sources: where the facts on this card come from.
        card_file: the YAML file the card was read from.
    """

    name: str
    title: str
    file_name: str
    family: str
    layout: str | None
    bundled: bool
    training_data: str
    energy_kind: str
    energy_short: str
    energy_meaning: str
    properties: tuple[str, ...]
    license: str
    cutoff: float | None = None
    max_neighbors: int | None = None
    strict_neighbor_cap: bool | None = None
    num_elements: int | None = None
    architecture: Mapping[str, Any] = field(default_factory=dict)
    parameters: str | None = None
    parameters_exact: int | None = None
    accuracy: tuple[AccuracyEntry, ...] = ()
    url: str | None = None
    source_page: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    gated: bool = False
    license_url: str | None = None
    config: str | None = None
    citation: str | None = None
    aliases: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    card_file: Path | None = field(default=None, compare=False)

    __hash__ = None  # type: ignore[assignment]  # architecture is a dict

    @property
    def has_stress(self) -> bool:
        """True if the model predicts stress (eV/Å³)."""
        return "stress" in self.properties

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of every field."""
        data = dataclasses.asdict(self)
        data["card_file"] = str(self.card_file) if self.card_file else None
        data["properties"] = list(self.properties)
        data["aliases"] = list(self.aliases)
        data["notes"] = list(self.notes)
        data["sources"] = list(self.sources)
        data["architecture"] = dict(self.architecture)
        data["accuracy"] = [dataclasses.asdict(a) for a in self.accuracy]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | os.PathLike = "<dict>") -> ModelCard:
        """Build and validate a card from parsed YAML.

        Raises:
            CardError: a required key is missing, a key is unknown, or a value has the wrong
                type or an unsupported value. The message names ``source`` and the key.
        """
        return _parse_card(data, str(source))


_REQUIRED = (
    "name",
    "title",
    "file_name",
    "family",
    "bundled",
    "training_data",
    "energy_kind",
    "energy_short",
    "energy_meaning",
    "properties",
    "license",
)
_FIELDS = {f.name for f in dataclasses.fields(ModelCard)} - {"card_file"}
_ACCURACY_KEYS = {f.name for f in dataclasses.fields(AccuracyEntry)}


def _expect(value: Any, types: type | tuple[type, ...], key: str, source: str, *, allow_none: bool):
    if value is None:
        if allow_none:
            return None
        raise CardError(f"{source}: key '{key}' must not be empty")
    # bool is an int subclass; refuse it where a number is expected
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise CardError(f"{source}: key '{key}' must be {_type_names(types)}, got {value!r}")
    if not isinstance(value, types):
        raise CardError(f"{source}: key '{key}' must be {_type_names(types)}, got {value!r}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _str_list(value: Any, key: str, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CardError(f"{source}: key '{key}' must be a list of strings, got {value!r}")
    return tuple(value)


def _check_keys(data: Mapping[str, Any], source: str) -> None:
    """A mapping with no unknown key and every required one."""
    if not isinstance(data, Mapping):
        raise CardError(f"{source}: a model card must be a YAML mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise CardError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys: {', '.join(sorted(_FIELDS))}"
        )
    for key in _REQUIRED:
        if key not in data:
            raise CardError(f"{source}: required key '{key}' is missing")


def _text_fields(data: Mapping[str, Any], source: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(required non-empty text fields, optional text fields or None), stripped."""
    text = {}
    for key in (
        "name",
        "title",
        "file_name",
        "training_data",
        "energy_short",
        "energy_meaning",
        "license",
    ):
        text[key] = _expect(data[key], str, key, source, allow_none=False).strip()
        if not text[key]:
            raise CardError(f"{source}: key '{key}' must not be empty")
    optional_text = {}
    for key in (
        "url",
        "source_page",
        "license_url",
        "config",
        "citation",
        "parameters",
        "sha256",
        "layout",
    ):
        value = _expect(data.get(key), str, key, source, allow_none=True)
        optional_text[key] = value.strip() if isinstance(value, str) else None
    return text, optional_text


def _check_kinds(
    data: Mapping[str, Any], source: str, text: dict[str, str], optional_text: dict[str, Any]
) -> tuple[str, str | None, str, tuple[str, ...], bool]:
    """(family, layout, energy_kind, properties, bundled), each checked against its choices;
    also the rules that tie them to url, layout, file_name and sha256."""
    family = _expect(data["family"], str, "family", source, allow_none=False)
    if family not in FAMILIES:
        raise CardError(f"{source}: family {family!r} is not one of {', '.join(FAMILIES)}")
    layout = optional_text["layout"]
    if layout is not None and layout not in LAYOUTS:
        raise CardError(f"{source}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    energy_kind = _expect(data["energy_kind"], str, "energy_kind", source, allow_none=False)
    if energy_kind not in ENERGY_KINDS:
        raise CardError(
            f"{source}: energy_kind {energy_kind!r} is not one of {', '.join(ENERGY_KINDS)}"
        )
    properties = _str_list(data["properties"], "properties", source)
    bad = [p for p in properties if p not in PROPERTIES]
    if bad or "energy" not in properties:
        raise CardError(
            f"{source}: properties must include 'energy' and only use {', '.join(PROPERTIES)}; "
            f"got {list(properties)}"
        )
    bundled = _expect(data["bundled"], bool, "bundled", source, allow_none=False)
    if not bundled and not optional_text["url"]:
        raise CardError(f"{source}: key 'url' is required for a model that is not bundled")
    if not bundled and layout is None:
        raise CardError(f"{source}: key 'layout' is required for a released checkpoint")
    file_name = text["file_name"]
    if Path(file_name).name != file_name or file_name in (".", ".."):
        raise CardError(f"{source}: file_name {file_name!r} must be a bare file name, no folders")
    sha = optional_text["sha256"]
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise CardError(f"{source}: sha256 must be 64 hexadecimal digits, got {sha!r}")
    return family, layout, energy_kind, properties, bundled


def _accuracy(raw_accuracy: Any, source: str) -> tuple[AccuracyEntry, ...]:
    """The ``accuracy`` list (None or empty: no entries)."""
    accuracy = []
    raw_accuracy = raw_accuracy or []
    if not isinstance(raw_accuracy, list):
        raise CardError(f"{source}: key 'accuracy' must be a list of mappings")
    for i, entry in enumerate(raw_accuracy):
        where = f"accuracy[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != _ACCURACY_KEYS:
            raise CardError(
                f"{source}: {where} must have exactly the keys {', '.join(sorted(_ACCURACY_KEYS))}"
            )
        value = _expect(entry["value"], (int, float), f"{where}.value", source, allow_none=False)
        strings = {
            k: _expect(entry[k], str, f"{where}.{k}", source, allow_none=k == "unit") or ""
            for k in ("metric", "unit", "dataset", "source")
        }
        accuracy.append(AccuracyEntry(value=float(value), **strings))
    return tuple(accuracy)


def _parse_card(data: Mapping[str, Any], source: str) -> ModelCard:
    _check_keys(data, source)
    text, optional_text = _text_fields(data, source)
    family, layout, energy_kind, properties, bundled = _check_kinds(
        data, source, text, optional_text
    )
    sha = optional_text["sha256"]
    cutoff = _expect(data.get("cutoff"), (int, float), "cutoff", source, allow_none=True)
    max_neighbors = _expect(
        data.get("max_neighbors"), int, "max_neighbors", source, allow_none=True
    )
    strict = _expect(
        data.get("strict_neighbor_cap"), bool, "strict_neighbor_cap", source, allow_none=True
    )
    max_elements = _expect(data.get("num_elements"), int, "num_elements", source, allow_none=True)
    size = _expect(data.get("size_bytes"), int, "size_bytes", source, allow_none=True)
    exact = _expect(data.get("parameters_exact"), int, "parameters_exact", source, allow_none=True)
    gated = _expect(data.get("gated", False), bool, "gated", source, allow_none=False)
    architecture = _expect(data.get("architecture"), dict, "architecture", source, allow_none=True)
    accuracy = _accuracy(data.get("accuracy"), source)
    return ModelCard(
        name=text["name"],
        title=text["title"],
        file_name=text["file_name"],
        family=family,
        layout=layout,
        bundled=bundled,
        training_data=text["training_data"],
        energy_kind=energy_kind,
        energy_short=text["energy_short"],
        energy_meaning=text["energy_meaning"],
        properties=properties,
        license=text["license"],
        cutoff=float(cutoff) if cutoff is not None else None,
        max_neighbors=max_neighbors,
        strict_neighbor_cap=strict,
        num_elements=max_elements,
        architecture=dict(architecture or {}),
        parameters=optional_text["parameters"],
        parameters_exact=exact,
        accuracy=accuracy,
        url=optional_text["url"],
        source_page=optional_text["source_page"],
        size_bytes=size,
        sha256=sha.lower() if sha else None,
        gated=gated,
        license_url=optional_text["license_url"],
        config=optional_text["config"],
        citation=optional_text["citation"],
        aliases=_str_list(data.get("aliases"), "aliases", source),
        notes=_str_list(data.get("notes"), "notes", source),
        sources=_str_list(data.get("sources"), "sources", source),
        card_file=Path(source) if source != "<dict>" else None,
    )


def load_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate one model card YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML: {exc}") from exc
    return _parse_card(data, str(path))
