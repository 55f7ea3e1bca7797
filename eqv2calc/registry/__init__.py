"""The model registry: model cards, the checkpoint cache, and name → file resolution.

Every released EquiformerV2 checkpoint that eqv2calc knows about has a *model card*, a small
YAML file shipped with the package in ``eqv2calc/registry/models/`` (fields described in the
repository's ``models/README.md``). A card records
what the model was trained on, what its energy means, its graph settings (cutoff in Å,
neighbour cap), published accuracy with sources, the download URL and the licence.

:func:`resolve_model` turns what a user typed into a checkpoint path:

* ``None`` → the bundled demonstration checkpoint (:func:`default_model_path`);
* an existing file → that file;
* a registry name, a checkpoint file name or an alias (case-insensitive) → the file in the
  cache folder, downloaded first when missing;
* anything that looks like a path but does not exist → :class:`FileNotFoundError`.

Environment variables:

``EQV2CALC_CACHE``
    cache folder for downloaded checkpoints (default ``$XDG_CACHE_HOME/eqv2calc`` or
    ``~/.cache/eqv2calc``).
``EQV2CALC_OFFLINE``
    ``1`` (or ``true``/``yes``) never touches the network; a missing checkpoint is an error that
    says where to put the file.
``HF_TOKEN``
    Hugging Face access token, sent as a bearer token to gated Hugging Face repositories.
``EQV2CALC_MODELS_DIR``
    folder holding the model cards and bundled checkpoints (default: the package data folder
    ``eqv2calc/registry/models/``).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from pathlib import Path

from eqv2calc.registry.cards import (
    ENERGY_KINDS,
    FAMILIES,
    LAYOUTS,
    PROPERTIES,
    AccuracyEntry,
    CardError,
    ModelCard,
    load_card,
)
from eqv2calc.registry.download import DownloadError, download_file

__all__ = [
    "AccuracyEntry",
    "BundledModelMissingError",
    "CardError",
    "DEFAULT_MODEL_NAME",
    "ENERGY_KINDS",
    "FAMILIES",
    "LAYOUTS",
    "ModelCard",
    "ModelUnavailableError",
    "PROPERTIES",
    "UnknownModelError",
    "cache_dir",
    "card_for_file",
    "default_model_path",
    "fetch",
    "find_card",
    "get_card",
    "is_offline",
    "list_cards",
    "load_card",
    "local_path",
    "models_dir",
    "resolve_model",
]

ENV_CACHE = "EQV2CALC_CACHE"
ENV_OFFLINE = "EQV2CALC_OFFLINE"
ENV_MODELS_DIR = "EQV2CALC_MODELS_DIR"
ENV_HF_TOKEN = "HF_TOKEN"

#: Name of the card whose checkpoint is used when no model is given.
DEFAULT_MODEL_NAME = "eqv2calc-emt-conservative"

_CARD_SUFFIXES = (".yaml", ".yml")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


class UnknownModelError(ValueError):
    """A name is neither an existing file nor a registry entry.

    Attributes:
        name: the name that was looked up.
        suggestions: registry names close to it (may be empty).
    """

    def __init__(self, message: str, name: str, suggestions: list[str]):
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions


class ModelUnavailableError(FileNotFoundError):
    """A registry checkpoint is not in the cache and could not be downloaded.

    Attributes:
        card: the model card.
        path: where the checkpoint file has to be put.
        url: where it can be downloaded from.
    """

    def __init__(self, message: str, card: ModelCard, path: Path):
        super().__init__(message)
        self.card = card
        self.path = path
        self.url = card.url

    def __str__(self) -> str:
        return str(self.args[0])


class BundledModelMissingError(FileNotFoundError):
    """The bundled demonstration checkpoint is not where the registry expects it."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


# --------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------


#: The model cards and the bundled checkpoint, shipped as package data.
PACKAGE_MODELS_DIR = Path(__file__).resolve().parent / "models"


def models_dir() -> Path:
    """The folder that holds the model cards and bundled checkpoints.

    ``$EQV2CALC_MODELS_DIR`` when set; otherwise the package data folder
    ``eqv2calc/registry/models/`` (:data:`PACKAGE_MODELS_DIR`).

    Raises:
        FileNotFoundError: ``$EQV2CALC_MODELS_DIR`` or the package data folder is not a folder.
    """
    override = os.environ.get(ENV_MODELS_DIR)
    if override:
        folder = Path(override).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{ENV_MODELS_DIR}={override!r} is not a folder")
        return folder
    if not PACKAGE_MODELS_DIR.is_dir():
        raise FileNotFoundError(
            f"No eqv2calc model cards found: {PACKAGE_MODELS_DIR} is missing (a broken "
            f"installation); reinstall eqv2calc or set {ENV_MODELS_DIR} to a folder of cards."
        )
    return PACKAGE_MODELS_DIR


def cache_dir() -> Path:
    """The folder where downloaded checkpoints are kept (created on first download).

    ``$EQV2CALC_CACHE`` when set, else ``$XDG_CACHE_HOME/eqv2calc``, else
    ``~/.cache/eqv2calc``.
    """
    override = os.environ.get(ENV_CACHE)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "eqv2calc"


def is_offline() -> bool:
    """True when ``$EQV2CALC_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------
# card lookup
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_folder(folder: str, signature: tuple) -> tuple[ModelCard, ...]:
    cards = [load_card(Path(folder) / name) for name, _ in signature]
    seen: dict[str, str] = {}
    for card in cards:
        keys = {card.name, card.file_name, Path(card.file_name).stem, *card.aliases}
        for key in {k.casefold() for k in keys}:
            if key in seen and seen[key] != card.name:
                raise CardError(
                    f"{card.card_file}: name {key!r} is also used by card '{seen[key]}'"
                )
            seen[key] = card.name
    family_order = {f: i for i, f in enumerate(FAMILIES)}
    return tuple(sorted(cards, key=lambda c: (family_order[c.family], _natural_key(c.name))))


def _natural_key(text: str) -> tuple:
    """Sort key that orders 'eq2_31M' before 'eq2_153M'."""
    return tuple(
        int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", text)
    )


def list_cards() -> list[ModelCard]:
    """All model cards in :func:`models_dir`, the bundled demo first, then by family and name."""
    folder = models_dir()
    files = sorted(p for p in folder.iterdir() if p.suffix in _CARD_SUFFIXES and p.is_file())
    signature = tuple((p.name, p.stat().st_mtime_ns) for p in files)
    return list(_load_folder(str(folder), signature))


def _index(cards: list[ModelCard]) -> dict[str, ModelCard]:
    index: dict[str, ModelCard] = {}
    for card in cards:
        for key in (card.name, card.file_name, Path(card.file_name).stem, *card.aliases):
            index[key.casefold()] = card
    return index


def find_card(name: str) -> ModelCard | None:
    """The card whose name, file name, file stem or alias matches ``name`` (any case), or None."""
    return _index(list_cards()).get(name.strip().casefold())


def card_for_file(path: str | os.PathLike) -> ModelCard | None:
    """The card whose published file name matches ``path``'s file name (any case), or None.

    A heuristic for labels and warnings (e.g. "this OC20 model predicts adsorption energies")
    when a user passes a checkpoint path instead of a registry name; it does not read the file.
    """
    name = Path(os.fspath(path)).name.casefold()
    return next((c for c in list_cards() if c.file_name.casefold() == name), None)


def _suggestions(name: str, cards: list[ModelCard]) -> list[str]:
    index = _index(cards)
    close = difflib.get_close_matches(name.strip().casefold(), list(index), n=8, cutoff=0.6)
    return list(dict.fromkeys(index[key].name for key in close))[:5]


def get_card(name: str) -> ModelCard:
    """The card for a registry name (also a checkpoint file name or alias; any case).

    Raises:
        UnknownModelError: no card matches; the message lists close names.
    """
    cards = list_cards()
    card = _index(cards).get(name.strip().casefold())
    if card is None:
        raise _unknown(name, cards)
    return card


def _unknown(
    name: str, cards: list[ModelCard], *, as_path: Path | None = None
) -> UnknownModelError:
    suggestions = _suggestions(name, cards)
    if suggestions:
        did_you_mean = f" Did you mean: {', '.join(suggestions)}?"
    else:
        did_you_mean = ""
    where = f" No file {as_path.absolute()} either." if as_path is not None else ""
    return UnknownModelError(
        f"Unknown model {name!r}: not a registry name.{did_you_mean}{where} "
        "Run 'eqv2calc models' to list the registry.",
        name=name,
        suggestions=suggestions,
    )


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def local_path(card: ModelCard) -> Path:
    """Where the card's checkpoint lives locally (it may not exist yet).

    Bundled checkpoints live in :func:`models_dir`; downloaded ones in :func:`cache_dir`.
    """
    return (models_dir() if card.bundled else cache_dir()) / card.file_name


def _manual_instructions(card: ModelCard, path: Path) -> str:
    gated = ""
    if card.gated:
        gated = (
            f" The file is on a gated Hugging Face repository: request access on "
            f"{card.source_page or card.url} and set {ENV_HF_TOKEN} to an access token."
        )
    return f"Download {card.url} and save it as {path}.{gated}"


def fetch(
    card: ModelCard | str,
    *,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Make sure a registry checkpoint is in the cache; download it when missing.

    Args:
        card: a :class:`ModelCard` or a registry name.
        force: download again even if the file is present (the old file stays until the new
            one is complete and verified).
        progress: show a progress bar.
        timeout: network timeout in seconds.

    Returns:
        The local checkpoint path.

    Raises:
        BundledModelMissingError: a bundled checkpoint is missing (nothing to download).
        ModelUnavailableError: offline mode, or the download failed; the message gives the URL
            and the exact path to put the file at.
    """
    if isinstance(card, str):
        card = get_card(card)
    path = local_path(card)
    if card.bundled:
        if not path.is_file():
            raise _bundled_missing(card, path)
        return path
    if path.is_file() and not force:
        return path
    if is_offline():
        raise ModelUnavailableError(
            f"Model '{card.name}' is not in the cache and {ENV_OFFLINE} is set, so it was not "
            f"downloaded. {_manual_instructions(card, path)}",
            card,
            path,
        )
    token = os.environ.get(ENV_HF_TOKEN) or None
    hint = ""
    if card.gated:
        hint = (
            f"This file is on a gated Hugging Face repository: request access on "
            f"{card.source_page or card.url} and set {ENV_HF_TOKEN} to an access token"
            + (" (HF_TOKEN is set; check that access was granted)." if token else ".")
        )
    try:
        return download_file(
            card.url,
            path,
            expected_size=card.size_bytes,
            sha256=card.sha256,
            token=token,
            progress=progress,
            timeout=timeout,
            hint=hint,
        )
    except DownloadError as exc:
        raise ModelUnavailableError(
            f"Could not download model '{card.name}': {exc}", card, path
        ) from exc


def _bundled_missing(card: ModelCard, path: Path) -> BundledModelMissingError:
    return BundledModelMissingError(
        f"The bundled model '{card.name}' is missing: expected the checkpoint at {path}. "
        "It ships with the eqv2calc package (eqv2calc/registry/models/); reinstall eqv2calc "
        "or pass a checkpoint path or registry name explicitly (run 'eqv2calc models' to list).",
        path,
    )


def default_model_path(*, check: bool = True) -> Path:
    """Path of the bundled demonstration checkpoint (card :data:`DEFAULT_MODEL_NAME`).

    The demonstration model imitates ASE's EMT, not DFT.

    Args:
        check: raise if the file is missing (default). With False, return the expected path.

    Raises:
        BundledModelMissingError: the checkpoint file is not there.
    """
    cards = list_cards()
    card = _index(cards).get(DEFAULT_MODEL_NAME.casefold())
    if card is None or not card.bundled:
        bundled = [c for c in cards if c.bundled]
        if not bundled:
            raise BundledModelMissingError(
                f"No bundled model card in {models_dir()} (expected '{DEFAULT_MODEL_NAME}').",
                models_dir() / f"{DEFAULT_MODEL_NAME}.pt",
            )
        card = bundled[0]
    path = local_path(card)
    if check and not path.is_file():
        raise _bundled_missing(card, path)
    return path


def _looks_like_path(text: str) -> bool:
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return (
        any(sep in text for sep in separators)
        or text.startswith(("~", "."))
        or text.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def resolve_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Turn a checkpoint path, a registry name or None into a local checkpoint path.

    Args:
        name_or_path: ``None`` for the bundled demonstration model; a path to an existing
            checkpoint file; or a registry name, checkpoint file name or alias (any case).
        download: fetch a registry checkpoint that is not in the cache yet.
        progress: show a progress bar while downloading.

    Returns:
        Path of an existing checkpoint file.

    Raises:
        FileNotFoundError: a path that does not exist (the message names it).
        IsADirectoryError: a path that is a folder.
        UnknownModelError: neither a file nor a registry name (close names are suggested).
        ModelUnavailableError: a registry checkpoint that is not cached and could not (or, with
            ``download=False`` or ``EQV2CALC_OFFLINE=1``, may not) be downloaded.
        BundledModelMissingError: the bundled checkpoint is missing.
    """
    if name_or_path is None:
        return default_model_path()
    if not isinstance(name_or_path, str):
        path = Path(os.fspath(name_or_path)).expanduser()
        return _existing_file(path, str(name_or_path))
    text = name_or_path.strip()
    if not text:
        raise ValueError("Empty model name: give a checkpoint path or a registry name.")
    path = Path(text).expanduser()
    if path.is_file():
        return path
    cards = list_cards()
    card = _index(cards).get(text.casefold())
    if card is not None:
        target = local_path(card)
        if card.bundled or target.is_file() or download:
            return fetch(card, progress=progress)
        raise ModelUnavailableError(
            f"Model '{card.name}' is not in the cache ({target}) and downloading was not "
            f"allowed. {_manual_instructions(card, target)}",
            card,
            target,
        )
    if path.exists():  # a folder (a registry name wins over a folder of the same name)
        return _existing_file(path, text)
    if _looks_like_path(text):
        suggestions = _suggestions(Path(text).name, cards)
        extra = f" Registry names close to it: {', '.join(suggestions)}." if suggestions else ""
        raise FileNotFoundError(
            f"Checkpoint file not found: {text} (looked at {path.absolute()}).{extra}"
        )
    raise _unknown(text, cards, as_path=path)


def _existing_file(path: Path, given: str) -> Path:
    if path.is_dir():
        raise IsADirectoryError(f"Model path {given} is a folder; expected a checkpoint file.")
    if not path.exists():
        raise FileNotFoundError(
            f"Checkpoint file not found: {given} (looked at {path.absolute()})."
        )
    return path
