"""Content hashes of work items and settings fingerprints.

A work item is keyed by a SHA-256 over its name (the label its output files are named
after), its input structure (atomic numbers, positions, cell, periodicity, tags, fixed atoms,
charges/magnetic moments when set) and the campaign settings, so the same named structure
under the same settings is the same item in every run, on every machine. Two files holding
the same structure are two items, as outside campaigns (each gets its own output files).
Positions and cells are hashed exactly (float64 bytes): a structure moved by 1e-12 Å is
another input.

Settings named in :data:`IDENTITY_SETTINGS` (the SHA-256 of the model checkpoint) are stored
and compared by the ledger but left out of item keys (:func:`item_fingerprint`): a ledger
written before they were recorded keeps its keys, and a checkpoint that changed is refused by
the ledger instead of silently starting a new set of items.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

__all__ = [
    "IDENTITY_SETTINGS",
    "canonical_json",
    "item_fingerprint",
    "item_key",
    "settings_fingerprint",
    "shard_of",
    "structure_hash",
]

#: Settings that identify what computed the results (the model checkpoint's SHA-256) rather
#: than how: compared by the ledger, not part of item keys (see the module docstring).
IDENTITY_SETTINGS = ("model_sha256",)


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: the same data always gives the same text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a settings dict."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def item_fingerprint(settings: dict[str, Any]) -> str:
    """The settings fingerprint that enters item keys: :func:`settings_fingerprint` of
    ``settings`` without the :data:`IDENTITY_SETTINGS`."""
    return settings_fingerprint({k: v for k, v in settings.items() if k not in IDENTITY_SETTINGS})


def structure_hash(atoms: Atoms) -> str:
    """SHA-256 (hex) of everything in ``atoms`` that a calculation depends on.

    Covers atomic numbers, positions (Å), cell (Å), pbc, tags, atoms fixed by ``FixAtoms``
    and initial charges/magnetic moments when present. Other constraints enter by their
    ``todict()`` form.
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(np.asarray(atoms.cell), dtype=np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    h.update(np.ascontiguousarray(atoms.get_tags(), dtype=np.int64).tobytes())
    for name in ("initial_charges", "initial_magmoms"):
        if atoms.has(name):
            h.update(name.encode())
            h.update(np.ascontiguousarray(atoms.arrays[name], dtype=np.float64).tobytes())
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            h.update(b"FixAtoms")
            h.update(np.asarray(sorted(int(i) for i in c.index), dtype=np.int64).tobytes())
        else:
            h.update(canonical_json(c.todict()).encode())
    return h.hexdigest()


def item_key(input_hash: str, fingerprint: str) -> str:
    """The key of a work item: SHA-256 of its input hash and the settings fingerprint."""
    return hashlib.sha256(f"{input_hash}:{fingerprint}".encode()).hexdigest()


def shard_of(key: str, n_shards: int) -> int:
    """The shard (0 .. n_shards-1) of a hex hash: its first 16 digits modulo ``n_shards``.

    Campaigns pass the input hash (not the item key) so the split does not depend on the
    settings."""
    if n_shards < 1:
        raise ValueError(f"number of shards must be at least 1, got {n_shards}")
    return int(key[:16], 16) % n_shards
