"""Adsorbate library: the OC20 adsorbate set (plus a few common extras) and user files.

Every adsorbate is an :class:`Adsorbate`: an ``ase.Atoms`` with the binding atom(s) first, the
first binding atom at the origin and the molecule oriented so that its bond(s) to the surface
point down (-z) and the rest of the molecule points up (+z). Lengths are in Å.

Geometries are built here from a compact connectivity notation with ideal bond lengths and
VSEPR angles (sp: 180°, sp2: 120°, sp3: 109.47°); they are starting points for a relaxation,
not optimised structures. The notation, per entry of :data:`ADSORBATE_SPECS`:

* an element letter (C, N, O or H) starts a new atom bonded to the previous chain atom;
  ``H`` or ``Hn`` right after a heavy atom adds n hydrogens to it (``CH3``, ``OH``);
* ``*`` before an element marks a binding atom (bonded to the surface);
* ``=`` / ``#`` before an atom make the bond to it double / triple (shorter bond, sp2 / sp);
* ``( ... )`` is a branch on the previous atom, as in SMILES.

The OC20 names (e.g. ``*COHCH3``) are the keys. Names are case-sensitive and their stars must
sit where the key's are; a name without any star may drop the key's leading one (``CO`` for
``*CO``), and a few star-less formulae and common names (``H2O``, ``water``) are accepted too
(:func:`resolve_adsorbate`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.formula import Formula

__all__ = [
    "Adsorbate",
    "UnknownAdsorbateError",
    "ADSORBATE_SPECS",
    "OC20_ADSORBATES",
    "build_from_spec",
    "get_adsorbate",
    "list_adsorbates",
    "load_adsorbate_file",
    "resolve_adsorbate",
    "orient_adsorbate",
]


class UnknownAdsorbateError(KeyError):
    """An adsorbate name that is not in the library (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class Adsorbate:
    """An adsorbate ready for placement.

    Attributes:
        name: library name (e.g. ``"*OH"``) or the file stem for user files.
        atoms: the molecule, binding atom(s) first, first binding atom at the origin, bonds to
            the surface pointing down (-z). Positions in Å.
        binding_indices: indices (into ``atoms``) of the atoms that bind to the surface.
        bonds: intended bonds as ``(i, j, order)`` (library entries; empty for files).
        oc20: True for members of the OC20 adsorbate set.
    """

    name: str
    atoms: Atoms
    binding_indices: list[int]
    bonds: list[tuple[int, int, int]] = field(default_factory=list)
    oc20: bool = False

    @property
    def formula(self) -> str:
        return self.atoms.get_chemical_formula()

    @property
    def symbols(self) -> list[str]:
        return list(self.atoms.get_chemical_symbols())


# ----------------------------------------------------------------------------------------------
# The library. OC20's 82 adsorbates (names as in the OC20 data set) and a few extras.
# ----------------------------------------------------------------------------------------------

#: OC20 adsorbate name -> connectivity spec (see module docstring).
_OC20_SPECS: dict[str, str] = {
    "*O": "*O",
    "*H": "*H",
    "*OH": "*OH",
    "*OH2": "*OH2",
    "*C": "*C",
    "*CO": "*C#O",
    "*CH": "*CH",
    "*CHO": "*CH=O",
    "*COH": "*COH",
    "*CH2": "*CH2",
    "*CH2*O": "*CH2*O",
    "*CHOH": "*CHOH",
    "*CH3": "*CH3",
    "*OCH3": "*OCH3",
    "*CH2OH": "*CH2OH",
    "*CH4": "*CH4",
    "*OHCH3": "*OHCH3",
    "*C*C": "*C=*C",
    "*CCO": "*C=C=O",
    "*CCH": "*C#CH",
    "*CHCO": "*CH=C=O",
    "*CCHO": "*CCH=O",
    "*COCHO": "*C(=O)CH=O",
    "*CCHOH": "*C=CHOH",
    "*CCH2": "*C=CH2",
    "*CH*CH": "*CH=*CH",
    "CH2*CO": "CH2=*C=O",
    "*CHCHO": "*CHCH=O",
    "*CH*COH": "*CH=*COH",
    "*COCH2O": "*C(=O)CH2O",
    "*CHO*CHO": "*CH(=O)*CH=O",
    "*COHCHO": "*C(OH)CH=O",
    "*COHCOH": "*C(OH)=COH",
    "*CCH3": "*CCH3",
    "*CHCH2": "*CH=CH2",
    "*COCH3": "*C(=O)CH3",
    "*OCHCH2": "*OCH=CH2",
    "*COHCH2": "*C(OH)=CH2",
    "*CHCHOH": "*CH=CHOH",
    "*CCH2OH": "*CCH2OH",
    "*CHOCHOH": "*CH(=O)CHOH",
    "*COCH2OH": "*C(=O)CH2OH",
    "*COHCHOH": "*C(OH)CHOH",
    "*CH2*CH2": "*CH2*CH2",
    "*OCH2CHOH": "*OCH2CHOH",
    "*OCHCH3": "*O=CHCH3",
    "*COHCH3": "*C(OH)CH3",
    "*CHOHCH2": "*CH(OH)CH2",
    "*CHCH2OH": "*CHCH2OH",
    "*CHOCH2OH": "*CH(=O)CH2OH",
    "*COHCH2OH": "*C(OH)CH2OH",
    "*CHOHCHOH": "*CH(OH)CHOH",
    "*CH2CH3": "*CH2CH3",
    "*OCH2CH3": "*OCH2CH3",
    "*CHOHCH3": "*CH(OH)CH3",
    "*CH2CH2OH": "*CH2CH2OH",
    "*CHOHCH2OH": "*CH(OH)CH2OH",
    "*OHCH2CH3": "*OHCH2CH3",
    "*NH2N(CH3)2": "*NH2N(CH3)CH3",
    "*ONN(CH3)2": "*O=NN(CH3)CH3",
    "*OHNNCH3": "*OHN=NCH3",
    "*NNCH3": "*N=NCH3",
    "*ONH": "*O=NH",
    "*NHNH": "*NHNH",
    "*NHN2": "*NHN=N",
    "*N*NH": "*N=*NH",
    "*ONNO2": "*O=NN(=O)=O",
    "*NO2NO2": "*ON(=O)N(=O)=O",
    "*N*NO": "*N=*N=O",
    "*N2": "*N#N",
    "*ONNH2": "*O=NNH2",
    "*NH2": "*NH2",
    "*NH3": "*NH3",
    "*NONH": "*N(=O)NH",
    "*NH": "*NH",
    "*NO2": "*N(=O)=O",
    "*NO": "*N=O",
    "*N": "*N",
    "*NO3": "*ON(=O)=O",
    "*OHNH2": "*OHNH2",
    "*ONOH": "*O=NOH",
    "*CN": "*C#N",
}

#: Common adsorbates that are not in OC20.
_EXTRA_SPECS: dict[str, str] = {
    "*COOH": "*C(=O)OH",
    "*OCHO": "*OCH=O",
    "*OOH": "*OOH",
    "*O2": "*O=O",
    "*CO2": "*C(=O)=O",
    "*H2": "*HH",
    "*N*N": "*N#*N",  # N2 lying flat (side-on), bidentate
    "*O*O": "*O=*O",  # O2 lying flat (side-on), bidentate
}

ADSORBATE_SPECS: dict[str, str] = {**_OC20_SPECS, **_EXTRA_SPECS}
OC20_ADSORBATES: tuple[str, ...] = tuple(_OC20_SPECS)

#: Star-less formulae accepted for a library entry (matched case-sensitively, like every
#: formula). Each is the same species as its entry, and names no binding atom itself, so the
#: entry's binding atom (the usual one for that molecule) is not a reinterpretation. A starred
#: spelling (``*H2O``, ``*CH3OH``, ``*HCOO``) names a binding atom and must match an entry.
_ALIASES: dict[str, str] = {
    "H2O": "*OH2",
    "CH3OH": "*OHCH3",
    "CH3O": "*OCH3",
    "CH3CH2OH": "*OHCH2CH3",
    "HCOO": "*OCHO",
    "HNO": "*ONH",
}

#: Common names (words, not formulae: matched case-insensitively).
_NAMES: dict[str, str] = {
    "water": "*OH2",
    "methanol": "*OHCH3",
    "ethanol": "*OHCH2CH3",
    "formate": "*OCHO",
    "carboxyl": "*COOH",
}

# Bond lengths (Å) by element pair and bond order: typical gas-phase values.
_BOND_LENGTHS: dict[frozenset, tuple[float, float, float]] = {
    frozenset(("C", "H")): (1.09, 1.09, 1.07),
    frozenset(("N", "H")): (1.01, 1.01, 1.01),
    frozenset(("O", "H")): (0.97, 0.97, 0.97),
    frozenset(("H",)): (0.74, 0.74, 0.74),
    frozenset(("C",)): (1.52, 1.33, 1.20),
    frozenset(("C", "N")): (1.47, 1.28, 1.16),
    frozenset(("C", "O")): (1.43, 1.22, 1.13),
    frozenset(("N",)): (1.45, 1.25, 1.10),
    frozenset(("N", "O")): (1.40, 1.20, 1.15),
    frozenset(("O",)): (1.48, 1.21, 1.21),
}

_TETRAHEDRAL = np.degrees(np.arccos(-1.0 / 3.0))  # 109.47°


def _bond_length(a: str, b: str, order: int) -> float:
    key = frozenset((a, b))
    if key not in _BOND_LENGTHS:
        return float(covalent_radii[Atoms(a).numbers[0]] + covalent_radii[Atoms(b).numbers[0]])
    return _BOND_LENGTHS[key][order - 1]


# ----------------------------------------------------------------------------------------------
# Spec parser and embedder
# ----------------------------------------------------------------------------------------------


def _parse_spec(spec: str) -> tuple[list[str], list[bool], list[tuple[int, int, int]]]:
    """Parse the connectivity notation into (symbols, binding flags, bonds (i, j, order))."""
    symbols: list[str] = []
    binding: list[bool] = []
    bonds: list[tuple[int, int, int]] = []
    stack: list[int | None] = []
    prev: int | None = None
    order = 1
    star = False
    i = 0
    while i < len(spec):
        ch = spec[i]
        if ch == "(":
            if prev is None:
                raise ValueError(f"adsorbate spec {spec!r}: branch before any atom")
            stack.append(prev)
        elif ch == ")":
            if not stack:
                raise ValueError(f"adsorbate spec {spec!r}: unbalanced ')'")
            prev = stack.pop()
        elif ch == "=":
            order = 2
        elif ch == "#":
            order = 3
        elif ch == "*":
            star = True
        elif ch in "CNOH":
            idx = len(symbols)
            symbols.append(ch)
            binding.append(star)
            if prev is not None:
                bonds.append((prev, idx, order))
            star, order = False, 1
            # implicit hydrogens: "CH3", "OH"
            if ch != "H" and i + 1 < len(spec) and spec[i + 1] == "H":
                j = i + 2
                while j < len(spec) and spec[j].isdigit():
                    j += 1
                n_h = int(spec[i + 2 : j]) if j > i + 2 else 1
                for _ in range(n_h):
                    symbols.append("H")
                    binding.append(False)
                    bonds.append((idx, len(symbols) - 1, 1))
                i = j - 1
            prev = idx
        else:
            raise ValueError(f"adsorbate spec {spec!r}: unexpected character {ch!r}")
        i += 1
    if stack:
        raise ValueError(f"adsorbate spec {spec!r}: unbalanced '('")
    if not any(binding):
        raise ValueError(f"adsorbate spec {spec!r}: no binding atom marked with '*'")
    return symbols, binding, bonds


def _perpendicular(v: np.ndarray) -> np.ndarray:
    trial = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(v, trial)
    return u / np.linalg.norm(u)


def _slot_directions(d_in: np.ndarray, n_slots: int, phi: float) -> list[np.ndarray]:
    """Directions of the n_slots-1 remaining VSEPR domains given the first one along d_in."""
    if n_slots == 2:
        return [-d_in]
    theta = np.radians(120.0 if n_slots == 3 else _TETRAHEDRAL)
    u = _perpendicular(d_in)
    w = np.cross(d_in, u)
    step = np.pi if n_slots == 3 else 2.0 * np.pi / 3.0
    out = []
    for k in range(n_slots - 1):
        p = phi + k * step
        out.append(np.cos(theta) * d_in + np.sin(theta) * (np.cos(p) * u + np.sin(p) * w))
    return out


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix turning unit vector a into unit vector b."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        if c > 0:
            return np.eye(3)
        axis = _perpendicular(a)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


def _embed(
    symbols: list[str], binding: list[bool], bonds: list[tuple[int, int, int]]
) -> np.ndarray:
    """3D positions for a tree-shaped molecule (binding atoms' surface bonds point down)."""
    n = len(symbols)
    nbrs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, j, order in bonds:
        nbrs[i].append((j, order))
        nbrs[j].append((i, order))
    if len(bonds) != n - 1:
        raise ValueError("adsorbate specs must describe a tree (no rings)")

    def n_slots(a: int) -> int:
        orders = [o for _, o in nbrs[a]]
        n_sigma = len(orders) + (1 if binding[a] else 0)
        slots = 2 if (3 in orders or orders.count(2) >= 2) else 3 if 2 in orders else 4
        return max(slots, min(n_sigma, 4)) if n_sigma > slots else slots

    root = binding.index(True)
    pos = np.full((n, 3), np.nan)
    pos[root] = 0.0
    down = np.array([0.0, 0.0, -1.0])
    # queue entries: (atom, direction toward its parent or the surface)
    queue: list[tuple[int, np.ndarray]] = [(root, down)]
    placed = {root}
    while queue:
        a, d_in = queue.pop(0)
        children = [(j, o) for j, o in nbrs[a] if j not in placed]
        wants_surface = binding[a] and a != root
        n_child = len(children) + (1 if wants_surface else 0)
        if n_child == 0:
            continue
        slots = n_slots(a)
        fixed: list[tuple[int, int]] = []
        if a == root and len(children) >= slots:
            # saturated binding atom (e.g. *CH4): one substituent takes the surface direction
            fixed, children = children[:1], children[1:]
            j, o = fixed[0]
            pos[j] = pos[a] + _bond_length(symbols[a], symbols[j], o) * d_in
            placed.add(j)
            queue.append((j, -d_in))
        if not children:
            continue
        best, best_score = None, -np.inf
        for phi in np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False):
            dirs = _slot_directions(d_in, slots, phi)
            score = 0.0
            k = 0
            if wants_surface:
                score += 10.0 * float(-dirs[0][2])
                k = 1
            trial = []
            for (j, o), d in zip(children, dirs[k:]):
                q = pos[a] + _bond_length(symbols[a], symbols[j], o) * d
                trial.append(q)
                score += 0.5 * q[2]
                others = pos[~np.isnan(pos[:, 0])]
                dist = np.linalg.norm(others - q, axis=1)
                score -= 5.0 * float(np.sum(np.clip(2.2 - dist, 0.0, None) ** 2))
                if q[2] < -0.2:
                    score -= 5.0 * (q[2] + 0.2) ** 2
            if score > best_score + 1e-9:
                best, best_score = (dirs, trial), score
        dirs, trial = best
        k = 1 if wants_surface else 0
        for (j, _), d, q in zip(children, dirs[k:], trial):
            pos[j] = q
            placed.add(j)
            queue.append((j, -d))
    # level bidentate adsorbates: rotate so that the first two binding atoms are at one height
    bind_idx = [i for i, b in enumerate(binding) if b]
    if len(bind_idx) >= 2:
        b = pos[bind_idx[1]] - pos[bind_idx[0]]
        flat = b.copy()
        flat[2] = 0.0
        if np.linalg.norm(flat) < 1e-6:  # binding atoms stacked (e.g. side-on *N*N): lay flat
            flat = np.array([np.linalg.norm(b), 0.0, 0.0])
        rot = _rotation_between(b, flat)
        pos = pos @ rot.T
    pos -= pos[root]
    return pos


def build_from_spec(name: str, spec: str, oc20: bool = False) -> Adsorbate:
    """Build an :class:`Adsorbate` from the connectivity notation (binding atoms first)."""
    symbols, binding, bonds = _parse_spec(spec)
    pos = _embed(symbols, binding, bonds)
    bind_idx = [i for i, b in enumerate(binding) if b]
    # order: binding atoms first (in spec order), then the rest breadth-first from them
    order = list(bind_idx)
    adj: dict[int, list[int]] = {i: [] for i in range(len(symbols))}
    for i, j, _ in bonds:
        adj[i].append(j)
        adj[j].append(i)
    queue = list(bind_idx)
    while queue:
        a = queue.pop(0)
        for j in adj[a]:
            if j not in order:
                order.append(j)
                queue.append(j)
    new_index = {old: new for new, old in enumerate(order)}
    atoms = Atoms([symbols[i] for i in order], positions=pos[order])
    atoms.positions -= atoms.positions[0]
    new_bonds = [(new_index[i], new_index[j], o) for i, j, o in bonds]
    return Adsorbate(
        name=name,
        atoms=atoms,
        binding_indices=list(range(len(bind_idx))),
        bonds=new_bonds,
        oc20=oc20,
    )


# ----------------------------------------------------------------------------------------------
# Lookup
# ----------------------------------------------------------------------------------------------


def list_adsorbates(oc20_only: bool = False) -> list[str]:
    """Names in the library (OC20 names first)."""
    return list(OC20_ADSORBATES) if oc20_only else list(ADSORBATE_SPECS)


def _binding_text(name: str) -> str:
    """``"binds through C"`` / ``"binds through C and O"`` for a library entry."""
    symbols, binding, _ = _parse_spec(ADSORBATE_SPECS[name])
    return "binds through " + " and ".join(s for s, b in zip(symbols, binding) if b)


def _composition(name: str) -> dict[str, int]:
    symbols, _, _ = _parse_spec(ADSORBATE_SPECS[name])
    return {e: symbols.count(e) for e in set(symbols)}


def _formula_count(text: str) -> dict[str, int]:
    """Element counts of a chemical formula (``{}`` when ``text`` is not one)."""
    try:
        return dict(Formula(text).count()) if text else {}
    except Exception:  # ASE raises ValueError and others on non-formulae
        return {}


def _suggestions(query: str, n: int = 6) -> list[str]:
    """Library names a user who typed ``query`` may have meant, best first."""
    skeleton = query.replace("*", "")
    found: list[str] = []
    # the same letters with the stars elsewhere, or in another case ('*C*O', 'Co' -> '*CO')
    found += [k for k in ADSORBATE_SPECS if k.replace("*", "").upper() == skeleton.upper()]
    # a known formula with a star added ('*H2O' -> '*OH2'), or in another case ('h2o')
    found += [v for k, v in _ALIASES.items() if k.upper() == skeleton.upper()]
    found += [v for k, v in _NAMES.items() if k == skeleton.lower()]
    # the same composition written in another order ('*HCOO' -> '*OCHO', '*COOH')
    count = _formula_count(skeleton)
    if count:
        found += [k for k in ADSORBATE_SPECS if _composition(k) == count]
    # spelling
    candidates = {k: k for k in ADSORBATE_SPECS} | {a: t for a, t in _ALIASES.items()}
    found += [candidates[m] for m in difflib.get_close_matches(query, list(candidates), n=n)]
    upper = {k.upper(): t for k, t in candidates.items()}
    found += [upper[m] for m in difflib.get_close_matches(query.upper(), list(upper), n=n)]
    return list(dict.fromkeys(found))[:n]


def resolve_adsorbate(name: str) -> str:
    """Library name for ``name``; raises :class:`UnknownAdsorbateError` with suggestions.

    Names are formulae, so matching is case-sensitive (``Co`` is cobalt, not ``*CO``), and a
    ``*`` marks each binding atom. Accepted, in order:

    * a library name exactly as listed (``*CO``, ``*CH2*O``, ``CH2*CO``);
    * a name without any ``*`` that is a library name without its leading ``*`` (``CO`` ->
      ``*CO``, ``OH`` -> ``*OH``);
    * a few star-less formulae of the same species (``H2O`` -> ``*OH2``, ``HCOO`` ->
      ``*OCHO``) and common names (``water``, ``methanol``; any case).

    Anything else, in particular stars on other atoms than a library entry's (``*C*O``,
    ``*CH3OH``, ``*H2O``), is an error that lists the close library names with the atoms they
    bind through.
    """
    query = name.strip()
    if query in ADSORBATE_SPECS:
        return query
    if query and "*" not in query:
        if "*" + query in ADSORBATE_SPECS:
            return "*" + query
        if query in _ALIASES:
            return _ALIASES[query]
        if query.lower() in _NAMES:
            return _NAMES[query.lower()]
    close = _suggestions(query)
    hint = ""
    if close:
        hint = "; close matches: " + ", ".join(f"{c!r} ({_binding_text(c)})" for c in close)
    notes = []
    others = sorted(set(_formula_count(query.replace("*", ""))) - {"C", "H", "N", "O"})
    if others:
        notes.append(
            f"{query!r} reads as containing the element(s) {', '.join(others)}; library "
            "adsorbates have only C, H, N and O"
        )
    notes.append(
        "names are case-sensitive formulae with '*' on each binding atom, as listed by "
        "`eqv2calc adsorbml --list-adsorbates`; or pass a structure file with --binding-atoms"
    )
    raise UnknownAdsorbateError(f"unknown adsorbate {name!r}{hint} ({'; '.join(notes)})")


def get_adsorbate(name: str) -> Adsorbate:
    """The library adsorbate called ``name`` (see :func:`resolve_adsorbate` for spellings)."""
    key = resolve_adsorbate(name)
    return build_from_spec(key, ADSORBATE_SPECS[key], oc20=key in _OC20_SPECS)


# ----------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------


def orient_adsorbate(atoms: Atoms, binding_indices: list[int]) -> Atoms:
    """Copy of ``atoms`` with the binding atoms first and the molecule pointing up (+z).

    The first binding atom goes to the origin. "Up" is the direction from the binding atoms'
    centroid to the centre of mass (made perpendicular to the line through two binding atoms,
    so that bidentate adsorbates lie level). Positions in Å.
    """
    n = len(atoms)
    order = list(binding_indices) + [i for i in range(n) if i not in binding_indices]
    mol = atoms[order]
    mol.pbc = False
    mol.cell = None
    mol.constraints = []
    nb = len(binding_indices)
    pos = mol.positions.copy()
    centroid = pos[:nb].mean(axis=0)
    up = mol.get_center_of_mass() - centroid
    if nb >= 2:
        axis = pos[1] - pos[0]
        if np.linalg.norm(axis) > 1e-8:
            axis /= np.linalg.norm(axis)
            up = up - np.dot(up, axis) * axis
            if np.linalg.norm(up) < 1e-6:
                up = _perpendicular(axis)
    if np.linalg.norm(up) > 1e-6:
        rot = _rotation_between(up, np.array([0.0, 0.0, 1.0]))
        pos = (pos - centroid) @ rot.T
    pos -= pos[0]
    mol.positions = pos
    return mol


def _binding_atoms_missing(path: Path, atoms: Atoms, shown: int = 40) -> str:
    symbols = atoms.get_chemical_symbols()
    listing = ", ".join(f"{i} {s}" for i, s in enumerate(symbols[:shown]))
    if len(symbols) > shown:
        listing += f", ... ({len(symbols) - shown} more)"
    return (
        f"adsorbate file {path} has {len(symbols)} atoms and no binding atoms were given: say "
        f"which atom(s) bind to the surface with --binding-atoms I[,J] (0-based indices; "
        f"binding_atoms= in Python). Atoms: {listing}"
    )


def load_adsorbate_file(path: str | os.PathLike, binding_atoms: list[int] | None) -> Adsorbate:
    """Read an adsorbate from a structure file (any ASE format).

    Args:
        path: structure file (xyz, extxyz, traj, POSCAR, ...).
        binding_atoms: 0-based indices of the atoms that bind to the surface. Required for a
            file with more than one atom (a structure file does not say which atoms bind);
            a single-atom file binds through that atom.

    Raises:
        FileNotFoundError / ValueError with the file name and the offending index.
    """
    from eqv2calc.io import read_structure_file

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"adsorbate file {p} does not exist")
    atoms = read_structure_file(p, index=-1, what="adsorbate file")[0]
    if len(atoms) == 0:
        raise ValueError(f"adsorbate file {p} has no atoms")
    if binding_atoms:
        idx = list(binding_atoms)
    elif len(atoms) == 1:
        idx = [0]
    else:
        raise ValueError(_binding_atoms_missing(p, atoms))
    for i in idx:
        if not 0 <= i < len(atoms):
            raise ValueError(
                f"--binding-atoms index {i} is out of range for {p} ({len(atoms)} atoms, "
                f"valid 0..{len(atoms) - 1})"
            )
    if len(set(idx)) != len(idx):
        raise ValueError(f"--binding-atoms has repeated indices: {idx}")
    mol = orient_adsorbate(atoms, idx)
    return Adsorbate(name=p.stem, atoms=mol, binding_indices=list(range(len(idx))))
