"""Deduplication of relaxed configurations that reached the same minimum."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import fcc100

from eqv2calc.adsorbml.adsorbates import get_adsorbate
from eqv2calc.adsorbml.dedup import deduplicate
from eqv2calc.adsorbml.placement import place_adsorbate
from eqv2calc.adsorbml.slabs import prepare_slab

A = 3.61
D_NN = A / np.sqrt(2)


@pytest.fixture(scope="module")
def slab():
    return prepare_slab(fcc100("Cu", size=(2, 2, 3), vacuum=7.0, a=A), "cu").atoms


def _o_at(slab, xy):
    return place_adsorbate(slab, get_adsorbate("O"), np.asarray(xy, float), 0.0, 0.0, 0.0)


def test_translated_supercell_copy_is_merged(slab):
    hollow = np.array([D_NN / 2, D_NN / 2])
    a = _o_at(slab, hollow)
    b = _o_at(slab, hollow + slab.cell[0, :2])  # one full supercell vector away (wraps)
    groups = deduplicate([a, b], [1.0, 1.0 + 1e-4], len(slab))
    assert groups == [[0, 1]]


def test_equivalent_hollows_need_slab_symmetry(slab):
    h1 = np.array([D_NN / 2, D_NN / 2])
    h2 = h1 + np.array([D_NN, 0.0])  # the neighbouring hollow of the 2x2 cell
    a, b = _o_at(slab, h1), _o_at(slab, h2)
    # not a supercell translation: separate without symmetry, merged with the clean slab's symmetry
    assert deduplicate([a, b], [1.0, 1.0], len(slab)) == [[0], [1]]
    assert deduplicate([a, b], [1.0, 1.0], len(slab), slab) == [[0, 1]]


def test_different_sites_and_energies_stay_apart(slab):
    hollow = _o_at(slab, [D_NN / 2, D_NN / 2])
    bridge = _o_at(slab, [D_NN / 2, 0.0])
    top = _o_at(slab, [0.0, 0.0])
    again = hollow.copy()
    again.positions[-1] += [0.05, -0.05, 0.02]  # within the position tolerance
    far_energy = hollow.copy()
    structures = [hollow, bridge, top, again, far_energy]
    energies = [-1.0, -1.0, -0.5, -0.995, -0.9]
    groups = deduplicate(structures, energies, len(slab), slab, position_tol=0.25, energy_tol=0.02)
    # lowest-energy member first; groups ordered by energy
    assert groups[0][0] in (0, 1)
    flat = sorted(i for g in groups for i in g)
    assert flat == [0, 1, 2, 3, 4]
    as_sets = [set(g) for g in groups]
    assert {0, 3} in as_sets  # same hollow, energy within 0.02 eV
    assert {1} in as_sets and {2} in as_sets  # other sites
    assert {4} in as_sets  # same place but 0.1 eV higher: a different minimum


def test_mismatched_lengths_raise(slab):
    with pytest.raises(ValueError, match="energies"):
        deduplicate([_o_at(slab, [0, 0])], [], len(slab))
