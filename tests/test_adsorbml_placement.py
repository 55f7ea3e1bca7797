"""Placement: heuristic sites, distinct random sites, seed reproducibility, minimum distance, tilt."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import fcc100, fcc111
from ase.data import covalent_radii
from ase.geometry import get_distances

from eqv2calc.adsorbml.adsorbates import get_adsorbate
from eqv2calc.adsorbml.placement import (
    PlacementError,
    generate_placements,
    heuristic_sites,
    min_pair_ratio,
    random_sites,
)
from eqv2calc.adsorbml.slabs import prepare_slab


@pytest.fixture(scope="module")
def cu100():
    return prepare_slab(fcc100("Cu", size=(3, 3, 3), vacuum=7.0), "cu100").atoms


def test_fcc100_heuristic_sites(cu100):
    sites = heuristic_sites(cu100)
    kinds = sorted(k for k, _ in sites)
    # fcc(100) has exactly one on-top, one bridge and one four-fold hollow site
    assert kinds == ["bridge", "hollow", "ontop"]
    top = cu100.positions[cu100.get_tags() == 1].copy()
    top[:, 2] = 0.0
    d_nn = 3.61 / np.sqrt(2)  # ASE's Cu lattice constant
    for kind, xy in sites:
        _, d = get_distances([[xy[0], xy[1], 0.0]], top, cell=cu100.cell, pbc=[True, True, False])
        expected = {"ontop": 0.0, "bridge": d_nn / 2, "hollow": d_nn / np.sqrt(2)}[kind]
        assert d.min() == pytest.approx(expected, abs=0.02), kind


def test_fcc111_has_two_hollows():
    slab = prepare_slab(fcc111("Pt", size=(3, 3, 3), vacuum=7.0), "pt111").atoms
    kinds = [k for k, _ in heuristic_sites(slab)]
    assert kinds.count("ontop") == 1
    assert kinds.count("bridge") == 1
    assert kinds.count("hollow") == 2  # fcc and hcp


def test_random_sites_are_distinct(cu100):
    rng = np.random.default_rng(3)
    sites = np.array(random_sites(cu100, 60, rng, min_separation=0.5))
    assert len(sites) == 60
    pts = np.c_[sites, np.zeros(len(sites))]
    _, d = get_distances(pts, cell=cu100.cell, pbc=[True, True, False])
    d = d + np.eye(len(sites)) * 99
    assert d.min() >= 0.5 - 1e-9
    # all inside the surface cell
    frac = np.linalg.solve(cu100.cell[:2, :2].T, sites.T).T
    assert np.all((frac >= -1e-9) & (frac < 1 + 1e-9))


def test_random_sites_stop_when_the_cell_is_full(cu100):
    rng = np.random.default_rng(0)
    sites = random_sites(cu100, 10_000, rng, min_separation=2.0)
    # a 7.66 Å square cell cannot hold more than ~ (7.66/2)^2 * 2 points 2 Å apart
    assert 5 < len(sites) < 40


def test_seed_reproducibility(cu100):
    ads = get_adsorbate("*OH")
    a = generate_placements(cu100, ads, num_random=8, seed=7)
    b = generate_placements(cu100, ads, num_random=8, seed=7)
    c = generate_placements(cu100, ads, num_random=8, seed=8)
    assert len(a) == len(b) == len(c) == 3 + 8
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.atoms.positions, pb.atoms.positions)
    rand_a = np.array([p.site for p in a if p.site_type == "random"])
    rand_c = np.array([p.site for p in c if p.site_type == "random"])
    assert not np.allclose(rand_a, rand_c)


@pytest.mark.parametrize("name", ["O", "*CO", "*OCH2CH3", "*NO2NO2"])
def test_min_distance_tilt_tags(cu100, name):
    ads = get_adsorbate(name)
    placements = generate_placements(cu100, ads, num_random=10, seed=1, max_tilt=20.0)
    n_slab = len(cu100)
    for p in placements:
        atoms = p.atoms
        assert len(atoms) == n_slab + len(ads.atoms)
        np.testing.assert_array_equal(atoms.get_tags()[n_slab:], 2)
        np.testing.assert_array_equal(atoms.get_tags()[:n_slab], cu100.get_tags())
        assert (
            atoms.constraints[0].get_indices().tolist()
            == cu100.constraints[0].get_indices().tolist()
        )
        # no adsorbate atom closer than 0.9 x covalent radii sum to the slab (independent check)
        _, d = get_distances(
            atoms.positions[n_slab:], atoms.positions[:n_slab], cell=atoms.cell, pbc=atoms.pbc
        )
        rsum = (
            covalent_radii[atoms.numbers[n_slab:]][:, None]
            + covalent_radii[atoms.numbers[:n_slab]][None, :]
        )
        assert (d / rsum).min() >= 0.9 - 1e-9
        assert min_pair_ratio(atoms, n_slab) >= 0.9 - 1e-9
        assert 0.0 <= p.tilt <= 20.0 + 1e-9
        if p.lift == 0.0:
            # the binding atom touches the slab: nearest slab atom at the covalent radii sum
            k = 0
            assert (d[k] / rsum[k]).min() == pytest.approx(1.0, abs=1e-6)


def test_tilt_bound_on_a_linear_molecule(cu100):
    placements = generate_placements(
        cu100, get_adsorbate("CO"), num_random=40, seed=2, max_tilt=20.0
    )
    for p in placements:
        v = p.atoms.positions[-1] - p.atoms.positions[-2]  # C -> O
        angle = np.degrees(np.arccos(v[2] / np.linalg.norm(v)))
        assert angle <= 20.0 + 1e-6
        assert angle == pytest.approx(p.tilt, abs=1e-6)
    assert max(p.tilt for p in placements) > 10.0  # tilts are actually drawn


def test_no_surface_atoms_is_an_error(cu100):
    slab = cu100.copy()
    slab.set_tags(0)
    with pytest.raises(PlacementError, match="no surface atoms"):
        generate_placements(slab, get_adsorbate("O"), num_random=2)


@pytest.mark.parametrize("name", ["*N*N", "*CH2*O"])
def test_bidentate_binding_atoms_on_two_sites(name):
    slab = prepare_slab(fcc111("Cu", size=(3, 3, 3), vacuum=7.0), "cu111").atoms
    ads = get_adsorbate(name)
    assert len(ads.binding_indices) == 2
    placements = generate_placements(slab, ads, num_random=6, seed=3, max_tilt=15.0)
    n = len(slab)
    b0, b1 = (n + i for i in ads.binding_indices)
    pairs = [p for p in placements if p.site_type != "random"]
    assert pairs and all("+" in p.site_type for p in pairs)
    # several site-pair kinds, not one orientation repeated
    assert len({p.site_type for p in pairs}) >= 3
    # every (site, periodic image of a site) pair: midpoints and unit directions
    every = np.array([xy for _, xy in heuristic_sites(slab, symm_reduce=0.0)])
    cell2 = np.asarray(slab.cell)[:2, :2]
    shifts = np.array([sa * cell2[0] + sb * cell2[1] for sa in (-1, 0, 1) for sb in (-1, 0, 1)])
    images = (every[:, None, :] + shifts[None, :, :]).reshape(-1, 2)
    vec = images[None, :, :] - every[:, None, :]
    length = np.linalg.norm(vec, axis=-1)
    keep = length > 0.3
    mids = (0.5 * (images[None, :, :] + every[:, None, :]))[keep]
    dirs = vec[keep] / length[keep][:, None]
    for p in placements:
        pos = p.atoms.positions
        # tilts turn the molecule about the binding axis: both binding atoms stay level
        assert pos[b0, 2] == pytest.approx(pos[b1, 2], abs=1e-6)
        _, d = get_distances(pos[[b0, b1]], pos[:n], cell=p.atoms.cell, pbc=p.atoms.pbc)
        rsum = covalent_radii[p.atoms.numbers[[b0, b1]]][:, None] + covalent_radii[slab.numbers]
        ratio = (d / rsum).min(axis=1)
        assert ratio.min() >= 0.9 - 1e-9
        if p.lift == 0.0:
            assert ratio.min() == pytest.approx(1.0, abs=1e-6)  # the lower one touches
        if p.site_type == "random":
            continue
        # the binding pair is centred between two sites, along the line joining them
        mid = 0.5 * (pos[b0, :2] + pos[b1, :2])
        u = pos[b1, :2] - pos[b0, :2]
        u /= np.linalg.norm(u)
        same_mid = np.all(np.abs(mids - mid) < 1e-6, axis=1)
        parallel = np.abs(np.abs(dirs @ u) - 1.0) < 1e-6
        assert np.any(same_mid & parallel), p.site_type


def test_bidentate_placements_are_reproducible():
    slab = prepare_slab(fcc111("Pt", size=(3, 3, 3), vacuum=7.0), "pt111").atoms
    a = generate_placements(slab, get_adsorbate("*N*NO"), num_random=4, seed=5)
    b = generate_placements(slab, get_adsorbate("*N*NO"), num_random=4, seed=5)
    assert [p.site_type for p in a] == [p.site_type for p in b]
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pa.atoms.positions, pb.atoms.positions)
