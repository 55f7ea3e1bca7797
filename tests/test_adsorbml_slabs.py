"""Slab inputs: surface detection, fixed layers, file handling and slabs cut from a bulk."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, fcc100, fcc110, fcc111, fcc211
from ase.constraints import FixAtoms
from ase.io import write

from eqv2calc.adsorbml.slabs import (
    SlabInputError,
    detect_surface_tags,
    prepare_slab,
    read_slab,
    slabs_from_bulk,
)


def _fixed(atoms):
    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.get_indices()] = True
    return mask


@pytest.mark.parametrize("builder", [fcc100, fcc111])
def test_close_packed_facets_expose_the_top_layer_only(builder):
    slab = builder("Cu", size=(2, 2, 4), vacuum=6.0)
    top_layer = slab.get_tags() == 1  # ASE numbers layers from the top
    tags = detect_surface_tags(slab)
    np.testing.assert_array_equal(tags == 1, top_layer)


def test_open_and_stepped_facets_expose_lower_rows():
    # fcc(110): the trough atoms of the second layer are exposed as well
    slab = fcc110("Cu", size=(2, 2, 4), vacuum=6.0)
    tags = detect_surface_tags(slab)
    np.testing.assert_array_equal(tags == 1, np.isin(slab.get_tags(), [1, 2]))
    # fcc(211): step edge, terrace and step foot (three rows at different heights)
    slab = fcc211("Pt", size=(3, 2, 4), vacuum=6.0)
    tags = detect_surface_tags(slab)
    z = slab.positions[:, 2]
    heights = np.unique(np.round(z[tags == 1], 2))
    all_heights = np.unique(np.round(z, 2))
    np.testing.assert_allclose(heights, all_heights[-3:])  # the three topmost rows
    assert tags.sum() == 6  # 2 atoms per row in a 3x2 cell


def test_surface_depth_override():
    slab = fcc100("Cu", size=(2, 2, 4), vacuum=6.0)
    tags = detect_surface_tags(slab, surface_depth=2.0)  # layers 1.8 Å apart: two layers
    np.testing.assert_array_equal(tags == 1, np.isin(slab.get_tags(), [1, 2]))


def test_prepare_slab_tags_and_fixes_subsurface():
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=6.0)
    system = prepare_slab(slab, "cu")
    tags = system.atoms.get_tags()
    assert set(np.unique(tags)) == {0, 1}
    np.testing.assert_array_equal(_fixed(system.atoms), tags == 0)
    assert any("ignored tags" in n for n in system.notes)  # ASE layer numbers are not OC20 tags
    # --fix-below overrides the fixed set
    zcut = slab.positions[:, 2].min() + 0.5
    system = prepare_slab(slab, "cu", fix_below=zcut)
    np.testing.assert_array_equal(_fixed(system.atoms), slab.positions[:, 2] < zcut)


def test_extxyz_keeps_tags_and_constraints(tmp_path):
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=6.0)
    tags = np.zeros(len(slab), dtype=int)
    tags[-2:] = 1  # deliberately unusual: only two surface atoms
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(indices=[0, 1]))
    slab.info.pop("adsorbate_info", None)
    path = tmp_path / "slab.extxyz"
    write(path, slab)
    system = read_slab(path)
    np.testing.assert_array_equal(system.atoms.get_tags(), tags)
    np.testing.assert_array_equal(np.flatnonzero(_fixed(system.atoms)), [0, 1])


def test_cif_gets_detection(tmp_path):
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.pbc = True
    path = tmp_path / "slab.cif"
    write(path, slab)
    system = read_slab(path)
    top = slab.positions[:, 2] > slab.positions[:, 2].max() - 0.1
    np.testing.assert_array_equal(system.atoms.get_tags() == 1, top)
    assert _fixed(system.atoms).sum() == (~top).sum()


def test_bad_slabs_are_rejected(tmp_path):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    with pytest.raises(SlabInputError, match="vacuum"):
        prepare_slab(cu, "bulk")
    tilted = fcc100("Cu", size=(2, 2, 3), vacuum=6.0)
    tilted.rotate(30, "x", rotate_cell=True)
    with pytest.raises(SlabInputError, match="xy plane"):
        prepare_slab(tilted, "tilted")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_slab(tmp_path / "nope.cif")


def test_slabs_from_bulk(tmp_path):
    path = tmp_path / "cu.cif"
    write(path, bulk("Cu", "fcc", a=3.6, cubic=True))
    systems = slabs_from_bulk(path, (1, 0, 0), min_thickness=5.0, vacuum=10.0, min_size=7.0)
    assert len(systems) >= 1
    for s in systems:
        a = s.atoms
        assert np.all(a.cell.lengths()[:2] >= 7.0 - 1e-6)
        assert abs(a.cell[0, 2]) < 1e-6 and abs(a.cell[1, 2]) < 1e-6
        assert a.get_tags().sum() > 0
        assert _fixed(a).sum() > 0
        z = a.positions[:, 2]
        assert z.max() - z.min() >= 5.0 - 0.5
        assert s.name.startswith("Cu_100_t")


def test_slab_split_across_the_boundary_is_made_contiguous():
    slab = fcc100("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.pbc = True
    shifted = slab.copy()
    shifted.positions[:, 2] -= slab.positions[:, 2].min() + 1.0  # bottom layer wraps to the top
    shifted.wrap()
    system = prepare_slab(shifted, "cu")
    assert any("contiguous" in n for n in system.notes)
    z = system.atoms.positions[:, 2]
    np.testing.assert_allclose(
        np.sort(z) - z.min(), np.sort(slab.positions[:, 2]) - slab.positions[:, 2].min(), atol=1e-8
    )
    np.testing.assert_array_equal(system.atoms.get_tags() == 1, z > z.max() - 0.1)
