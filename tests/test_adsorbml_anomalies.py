"""Anomaly filters on hand-built relaxed structures (desorbed, dissociated, surface changed,
intercalated) and a normal case; the bond convention against ASE's own NeighborList."""

from __future__ import annotations

import numpy as np
import pytest
from ase import neighborlist
from ase.build import fcc100
from ase.data import covalent_radii
from ase.neighborlist import natural_cutoffs

from eqv2calc.adsorbml.adsorbates import get_adsorbate
from eqv2calc.adsorbml.anomalies import bond_matrix, detect_anomalies, site_type
from eqv2calc.adsorbml.placement import heuristic_sites, place_adsorbate
from eqv2calc.adsorbml.slabs import prepare_slab


@pytest.fixture(scope="module")
def slab():
    return prepare_slab(fcc100("Cu", size=(2, 2, 3), vacuum=7.0), "cu").atoms


def _at_site(slab, name, kind):
    xy = dict((k, v) for k, v in heuristic_sites(slab))[kind]
    return place_adsorbate(slab, get_adsorbate(name), xy, 0.0, 0.0, 0.0)


def test_normal_case_has_no_anomaly(slab):
    initial = _at_site(slab, "*OH", "bridge")
    final = initial.copy()
    final.positions[-2:, 2] -= 0.1  # settles a little
    final.positions[: len(slab)] += np.random.default_rng(0).normal(0, 0.03, (len(slab), 3))
    rep = detect_anomalies(initial, final, slab)
    assert not rep.is_anomalous
    assert rep.label() == "none" and rep.reasons == []


def test_desorbed(slab):
    initial = _at_site(slab, "O", "hollow")
    final = initial.copy()
    final.positions[-1, 2] += 4.0
    rep = detect_anomalies(initial, final, slab)
    assert rep.kinds == ["desorbed"]
    assert "desorbed" in rep.reasons[0]


def test_desorption_threshold_is_1p5_radii_plus_skin(slab):
    initial = _at_site(slab, "O", "ontop")
    surface = initial.positions[: len(slab)][slab.get_tags() == 1]
    top = surface[np.argmin(np.linalg.norm(surface[:, :2] - initial.positions[-1, :2], axis=1))]
    limit = 1.5 * (covalent_radii[8] + covalent_radii[29]) + 0.6
    for d, expected in ((limit - 0.01, False), (limit + 0.01, True)):
        final = initial.copy()
        final.positions[-1] = top + [0.0, 0.0, d]
        assert detect_anomalies(initial, final, slab).flags["desorbed"] is expected


def test_dissociated(slab):
    initial = _at_site(slab, "*OH", "hollow")
    final = initial.copy()
    final.positions[-1] = final.positions[-2] + [1.8, 0.2, -0.3]  # H leaves O, stays on the surface
    rep = detect_anomalies(initial, final, slab)
    assert rep.kinds == ["dissociated"]
    assert "broken O" in rep.reasons[0] and "H" in rep.reasons[0]


def test_intercalated(slab):
    initial = _at_site(slab, "O", "hollow")
    final = initial.copy()
    n = len(slab)
    top_z = slab.positions[slab.get_tags() == 1, 2].max()
    final.positions[-1, 2] = top_z - 0.9  # pushed into the first layer, above a sub-surface atom
    rep = detect_anomalies(initial, final, slab)
    assert "intercalated" in rep.kinds
    assert "sub-surface" in " ".join(rep.reasons)
    assert "desorbed" not in rep.kinds
    # the sub-surface partner named in the reason is a tag-0 atom
    assert all(
        slab.get_tags()[int(tok.split("Cu")[1])] == 0
        for tok in rep.reasons[-1].split()
        if tok.startswith("Cu")
    )
    assert final.get_tags()[-1] == 2 and len(final) == n + 1


def test_surface_changed(slab):
    initial = _at_site(slab, "O", "hollow")
    surf = np.flatnonzero(slab.get_tags() == 1)[0]
    final = initial.copy()
    final.positions[surf, 2] += 2.5  # a surface atom pops out
    rep = detect_anomalies(initial, final, slab)
    assert "surface_changed" in rep.kinds
    assert "lost" in rep.reasons[-1]
    # small relaxations of the surface are not a change
    final = initial.copy()
    final.positions[surf, 2] += 0.2
    assert not detect_anomalies(initial, final, slab).flags["surface_changed"]


def test_surface_change_compares_with_the_relaxed_clean_slab(slab):
    # if the clean slab itself relaxed the same way, the adslab surface is not "changed"
    initial = _at_site(slab, "O", "hollow")
    surf = np.flatnonzero(slab.get_tags() == 1)[0]
    final = initial.copy()
    final.positions[surf, 2] += 2.5
    relaxed_slab = slab.copy()
    relaxed_slab.positions[surf, 2] += 2.5
    assert not detect_anomalies(initial, final, relaxed_slab).flags["surface_changed"]


@pytest.mark.parametrize("mult", [1.0, 1.5])
def test_bond_matrix_matches_ase_neighborlist(slab, mult):
    atoms = _at_site(slab, "*CH2OH", "bridge")
    atoms.rattle(0.2, seed=1)
    nl = neighborlist.NeighborList(
        natural_cutoffs(atoms, mult=mult), self_interaction=False, bothways=True
    )
    nl.update(atoms)
    ref = neighborlist.get_connectivity_matrix(nl.nl).toarray() > 0
    np.testing.assert_array_equal(bond_matrix(atoms, mult), ref)


def test_site_type_of_the_heuristic_sites(slab):
    n = len(slab)
    for kind in ("ontop", "bridge", "hollow"):
        atoms = _at_site(slab, "O", kind)
        assert site_type(atoms, n, np.arange(n)) == kind


def test_migrated_is_reported_not_an_anomaly(slab):
    initial = _at_site(slab, "*CO", "ontop")
    hollow = _at_site(slab, "*CO", "hollow")
    final = initial.copy()
    final.positions[len(slab) :] = hollow.positions[len(slab) :]  # slid into the hollow
    rep = detect_anomalies(initial, final, slab)
    assert rep.kinds == ["migrated"]
    assert not rep.is_anomalous
    assert (rep.placed_site, rep.final_site) == ("ontop", "hollow")
    assert "placed on ontop, relaxed to hollow" in rep.reasons[0]
    # staying on the same site type is not a migration
    settled = initial.copy()
    settled.positions[len(slab) :, 2] -= 0.1
    assert detect_anomalies(initial, settled, slab).kinds == []


def test_migration_of_a_bidentate_adsorbate_checks_both_binding_atoms(slab):
    n = len(slab)
    initial = _at_site(slab, "*N*N", "hollow")
    binding = [n, n + 1]
    kinds = [site_type(initial, b, np.arange(n)) for b in binding]
    assert kinds[1] != "ontop"
    final = initial.copy()
    # move only the second binding atom onto an on-top position of another surface atom
    surface = np.flatnonzero(slab.get_tags() == 1)
    target = next(
        s for s in surface if np.linalg.norm(slab.positions[s, :2] - initial.positions[n, :2]) > 1.0
    )
    final.positions[n + 1, :2] = slab.positions[target, :2]
    rep = detect_anomalies(initial, final, slab, binding=binding)
    assert site_type(final, n + 1, np.arange(n)) == "ontop"
    assert rep.flags["migrated"]
    assert rep.placed_site == "+".join(kinds) and rep.final_site.endswith("+ontop")
    # by default only the first binding atom is compared, and it did not move
    assert not detect_anomalies(initial, final, slab).flags["migrated"]
    with pytest.raises(ValueError, match="not an adsorbate atom"):
        detect_anomalies(initial, final, slab, binding=[0])
