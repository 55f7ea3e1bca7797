"""AdsorbML anomaly filters for relaxed adslabs.

Definitions follow AdsorbML (Lan et al., npj Comput. Mater. 2023) and the conventions of the
OC20 data tools: two atoms are bonded when their distance (with periodic images) is below
``m·(rᵢ + rⱼ) + 2·skin`` with ASE covalent radii ``r`` (ASE's "natural cutoffs"), a multiplier
``m`` and ASE ``NeighborList``'s default skin of 0.3 Å per atom, i.e. ``d < m·(rᵢ + rⱼ) + 0.6 Å``.
Tags: 0 sub-surface, 1 surface, 2 adsorbate.

* desorbed: no adsorbate atom is bonded to any slab atom (m = 1.5);
* dissociated: the adsorbate's own bond graph (m = 1.0) differs between the initial placement
  and the relaxed structure;
* surface_changed: the slab's bond graph in the relaxed adslab has a bond (m = 1.0) that the
  relaxed clean slab lacks even with m = 1.5, or vice versa (a reconstruction that invalidates
  the clean-slab reference);
* intercalated: an adsorbate atom is bonded (m = 1.0) to a sub-surface (tag 0) atom;
* migrated (reported, not discarded by default): a binding atom ended on another site type
  than the one it was placed on. The site type of an atom (:func:`site_type`) is the number of
  slab atoms whose distance to it is within ``site_tolerance`` (default 1.2) × the nearest
  slab-atom distance: 1 ``ontop``, 2 ``bridge``, 3 or more ``hollow``; it is computed the same
  way for the placed and the relaxed structure, so a random placement has a site type too.

:data:`ANOMALY_KINDS` are the AdsorbML filters (discarded); :data:`REPORTED_KINDS` are flagged
and counted but kept unless the caller discards them (``AdsorbMLConfig.discard_migrated``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

__all__ = [
    "ALL_KINDS",
    "ANOMALY_KINDS",
    "REPORTED_KINDS",
    "AnomalyReport",
    "bond_matrix",
    "detect_anomalies",
    "site_type",
]

#: AdsorbML's anomalies: a configuration with any of them is discarded.
ANOMALY_KINDS: tuple[str, ...] = ("desorbed", "dissociated", "surface_changed", "intercalated")
#: Reported and counted, kept by default.
REPORTED_KINDS: tuple[str, ...] = ("migrated",)
ALL_KINDS: tuple[str, ...] = ANOMALY_KINDS + REPORTED_KINDS
NEIGHBORLIST_SKIN = 0.3  # Å per atom, ASE NeighborList default


@dataclass
class AnomalyReport:
    """Anomaly flags for one relaxed adslab, with a reason for each flag raised."""

    flags: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ALL_KINDS, False))
    reasons: list[str] = field(default_factory=list)
    placed_site: str | None = None
    final_site: str | None = None

    @property
    def is_anomalous(self) -> bool:
        """True when an AdsorbML anomaly (:data:`ANOMALY_KINDS`) is flagged; migration alone is
        not one."""
        return any(self.flags[k] for k in ANOMALY_KINDS)

    @property
    def kinds(self) -> list[str]:
        """Every flagged kind (anomalies and reported kinds such as ``migrated``)."""
        return [k for k in ALL_KINDS if self.flags.get(k)]

    def label(self) -> str:
        """Comma-separated flagged kinds, or "none"."""
        return ",".join(self.kinds) or "none"


def bond_matrix(
    atoms: Atoms, multiplier: float = 1.0, skin: float = NEIGHBORLIST_SKIN
) -> np.ndarray:
    """Boolean (N, N) bond matrix: i–j bonded if some periodic image is closer than
    ``multiplier·(rᵢ + rⱼ) + 2·skin`` (Å, ASE covalent radii)."""
    n = len(atoms)
    mat = np.zeros((n, n), dtype=bool)
    if n == 0:
        return mat
    cut = covalent_radii[atoms.numbers] * multiplier + skin
    i, j = neighbor_list("ij", atoms, cut, self_interaction=False)
    mat[i, j] = True
    return mat


def site_type(atoms: Atoms, index: int, slab_indices: np.ndarray, tolerance: float = 1.2) -> str:
    """Site type of atom ``index`` over the slab atoms ``slab_indices``: ``ontop``, ``bridge``
    or ``hollow`` by how many slab atoms lie within ``tolerance`` × the nearest slab-atom
    distance (periodic images included; 1, 2, 3+)."""
    slab_indices = np.asarray(slab_indices)
    if len(slab_indices) == 0:
        raise ValueError("site_type needs slab atoms")
    d = atoms.get_distances(index, slab_indices, mic=bool(np.any(atoms.pbc)))
    n_near = int(np.sum(d <= tolerance * float(d.min()) + 1e-9))
    return "ontop" if n_near == 1 else "bridge" if n_near == 2 else "hollow"


def _pairs(mat: np.ndarray, idx: np.ndarray, symbols: list[str], limit: int = 4) -> str:
    ii, jj = np.nonzero(np.triu(mat))
    items = [f"{symbols[a]}{idx[a]}-{symbols[b]}{idx[b]}" for a, b in zip(ii, jj)]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def detect_anomalies(
    initial: Atoms,
    final: Atoms,
    final_slab: Atoms | None = None,
    tags: np.ndarray | None = None,
    *,
    desorption_multiplier: float = 1.5,
    surface_change_multiplier: float = 1.5,
    skin: float = NEIGHBORLIST_SKIN,
    binding: list[int] | None = None,
    site_tolerance: float = 1.2,
) -> AnomalyReport:
    """Flag the AdsorbML anomalies of one relaxation (see module docstring).

    Args:
        initial: the adslab as placed (before relaxation).
        final: the relaxed adslab (same atoms, same order).
        final_slab: the relaxed clean slab (the slab atoms of ``final``, same order). None uses
            the slab part of ``initial``.
        tags: OC20 tags (default: ``initial.get_tags()``).
        desorption_multiplier, surface_change_multiplier: the cushion m for those two tests.
        skin: per-atom skin (Å) added to every cutoff.
        binding: indices (into the adslab) of the binding atoms whose site type is compared
            for ``migrated``; default the first adsorbate atom.
        site_tolerance: distance factor of :func:`site_type`.
    """
    if len(initial) != len(final):
        raise ValueError(f"initial ({len(initial)} atoms) and final ({len(final)} atoms) differ")
    tags = np.asarray(initial.get_tags() if tags is None else tags)
    ads = np.flatnonzero(tags == 2)
    slab_idx = np.flatnonzero(tags != 2)
    sub = np.flatnonzero(tags == 0)
    if len(ads) == 0:
        raise ValueError("no adsorbate atoms (tag 2) in the adslab")
    if final_slab is None:
        final_slab = initial[slab_idx]
    if len(final_slab) != len(slab_idx):
        raise ValueError(
            f"relaxed clean slab has {len(final_slab)} atoms, the adslab's slab part {len(slab_idx)}"
        )
    report = AnomalyReport()
    symbols = final.get_chemical_symbols()

    # desorbed
    loose = bond_matrix(final, desorption_multiplier, skin)
    if not loose[np.ix_(ads, slab_idx)].any():
        zgap = final.positions[ads, 2].min() - final.positions[slab_idx, 2].max()
        report.flags["desorbed"] = True
        report.reasons.append(
            f"desorbed: no adsorbate atom within {desorption_multiplier}x covalent radii "
            f"(+{2 * skin:.1f} Å) of a slab atom; lowest adsorbate atom {zgap:.2f} Å above the top "
            "slab atom"
        )

    # dissociated
    g0 = bond_matrix(initial[ads], 1.0, skin)
    g1 = bond_matrix(final[ads], 1.0, skin)
    if not np.array_equal(g0, g1):
        ads_symbols = [symbols[a] for a in ads]
        broken = _pairs(g0 & ~g1, ads, ads_symbols)
        formed = _pairs(g1 & ~g0, ads, ads_symbols)
        parts = []
        if broken:
            parts.append(f"broken {broken}")
        if formed:
            parts.append(f"formed {formed}")
        report.flags["dissociated"] = True
        report.reasons.append("dissociated: adsorbate bonds changed: " + "; ".join(parts))

    # surface changed
    slab_part = final[slab_idx]
    a_tight = bond_matrix(slab_part, 1.0, skin)
    a_loose = bond_matrix(slab_part, surface_change_multiplier, skin)
    s_tight = bond_matrix(final_slab, 1.0, skin)
    s_loose = bond_matrix(final_slab, surface_change_multiplier, skin)
    new_bonds = a_tight & ~s_loose
    lost_bonds = s_tight & ~a_loose
    if new_bonds.any() or lost_bonds.any():
        slab_symbols = [symbols[a] for a in slab_idx]
        parts = []
        if new_bonds.any():
            parts.append(f"new {_pairs(new_bonds, slab_idx, slab_symbols)}")
        if lost_bonds.any():
            parts.append(f"lost {_pairs(lost_bonds, slab_idx, slab_symbols)}")
        report.flags["surface_changed"] = True
        report.reasons.append(
            "surface_changed: slab bonds differ from the relaxed clean slab: " + "; ".join(parts)
        )

    # intercalated
    if len(sub):
        tight = bond_matrix(final, 1.0, skin)
        hit = tight[np.ix_(ads, sub)]
        if hit.any():
            a, b = np.argwhere(hit)[0]
            report.flags["intercalated"] = True
            report.reasons.append(
                f"intercalated: adsorbate atom {symbols[ads[a]]}{ads[a]} is bonded to sub-surface "
                f"atom {symbols[sub[b]]}{sub[b]} (tag 0)"
            )

    # migrated (reported, kept by default)
    bind = [int(ads[0])] if not binding else [int(b) for b in binding]
    for b in bind:
        if b not in set(ads.tolist()):
            raise ValueError(f"binding atom {b} is not an adsorbate atom (tag 2)")
    placed = [site_type(initial, b, slab_idx, site_tolerance) for b in bind]
    ended = [site_type(final, b, slab_idx, site_tolerance) for b in bind]
    report.placed_site, report.final_site = "+".join(placed), "+".join(ended)
    if placed != ended:
        report.flags["migrated"] = True
        report.reasons.append(
            f"migrated: binding atom(s) placed on {report.placed_site}, relaxed to "
            f"{report.final_site}"
        )
    return report
