"""The training-data recipe of the default model leaves the check's held-out systems out (issue 17)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

EMT = pytest.importorskip("ase.calculators.emt").EMT
RECIPE = Path(__file__).resolve().parents[1] / "models" / "train_default"
sys.path.append(str(RECIPE))
import check_physics  # noqa: E402
import generate_data  # noqa: E402
import physics_data  # noqa: E402


def test_check_uses_the_held_out_list_of_the_recipe():
    assert check_physics.HOPS["held-out"] is physics_data.HELD_OUT


@pytest.mark.parametrize(("metal", "facet", "name"), physics_data.HELD_OUT)
def test_held_out_pairs_are_recognised_at_any_site(metal, facet, name):
    rng = np.random.default_rng(0)
    slab = generate_data._place(generate_data._slab(metal, facet, rng), name, rng, (1.0, 2.0))
    assert generate_data._held_out(slab, physics_data.HELD_OUT)
    other = generate_data._place(generate_data._slab(metal, facet, rng), "OH", rng, (1.0, 2.0))
    assert not generate_data._held_out(other, physics_data.HELD_OUT)
    hop_start, hop_end = physics_data._endpoints(metal, facet, name)
    assert generate_data._held_out(hop_start, physics_data.HELD_OUT)
    assert generate_data._held_out(hop_end, physics_data.HELD_OUT)


def test_other_facet_of_a_held_out_metal_is_kept():
    start, _ = physics_data._endpoints("Cu", "111", "O")
    assert not generate_data._held_out(start, physics_data.HELD_OUT)


def test_adsorbate_force_weights_only_on_adsorbate_atoms():
    rng = np.random.default_rng(1)
    slab = generate_data._place(generate_data._slab("Pt", "111", rng), "CO", rng, (1.5, 2.0))
    bulk = generate_data._bulk_cell("Pt", rng)
    generate_data._set_adsorbate_weights([slab, bulk], 4.0)
    symbols = np.array(slab.get_chemical_symbols())
    np.testing.assert_array_equal(slab.arrays["force_weights"], np.where(symbols == "Pt", 1.0, 4.0))
    np.testing.assert_array_equal(bulk.arrays["force_weights"], np.ones(len(bulk)))


def test_mixed_hollow_frames_are_never_a_pure_surface():
    """alloy_hollow_frames: every top layer holds two metals, so no frame is a held-out pair."""
    frames = physics_data.alloy_hollow_frames(np.random.default_rng(3), 4)
    assert len(frames) == 4 * 6
    for atoms in frames:
        assert not generate_data._held_out(atoms, physics_data.HELD_OUT)
        slab = atoms[:-1]
        z = slab.positions[:, 2]
        top = set(np.array(slab.get_chemical_symbols())[z > z.max() - 0.5])
        host, rest = atoms.info["surface"].split("/")
        assert top == {host, rest.split("(")[0]}
        assert atoms.info["adsorbate"] == atoms.get_chemical_symbols()[-1]
    minimum, moved = frames[0], frames[1]
    step = np.linalg.norm(moved.positions[-1] - minimum.positions[-1])
    assert 0.03 <= step <= 0.2
    np.testing.assert_allclose(moved.positions[:-1], minimum.positions[:-1])


def test_open_facet_frames_are_relaxed_110_211_minima_with_small_moves():
    """open_facet_frames: (110)/(211) slabs only (never a held-out (100)/(111) pair), the adsorbate
    relaxed by EMT at its minimum, then moved 0.03–0.2 Å with the slab unchanged."""
    frames = physics_data.open_facet_frames(np.random.default_rng(5), 3)
    assert len(frames) == 3 * 6
    for atoms in frames:
        assert not generate_data._held_out(atoms, physics_data.HELD_OUT)
        assert atoms.info["surface"].endswith(("(110)", "(211)"))
        assert atoms.info["adsorbate"] == atoms.get_chemical_symbols()[-1]
    for minimum, moved in zip(frames[::6], frames[1::6], strict=True):
        relaxed = minimum.copy()
        relaxed.calc = EMT()
        assert np.linalg.norm(relaxed.get_forces(), axis=1).max() <= 0.01  # BFGS fmax, eV/Å
        step = np.linalg.norm(moved.positions[-1] - minimum.positions[-1])
        assert 0.03 <= step <= 0.2
        np.testing.assert_allclose(moved.positions[:-1], minimum.positions[:-1])


def test_lateral_scan_frames_hold_the_adsorbate_laterally_and_relax_the_rest():
    """lateral_scan_frames: (100)/(111) slabs, never a held-out pair; at each point the slab and the
    adsorbate's height are relaxed (EMT) while its x, y stay where they were put, so its lateral
    force is the landscape's slope there; then one 0.03–0.15 Å move with the slab unchanged."""
    frames = physics_data.lateral_scan_frames(np.random.default_rng(7), 12)
    assert len(frames) == 12 * 2
    lateral = []
    for atoms in frames:
        assert not generate_data._held_out(atoms, physics_data.HELD_OUT)
        assert atoms.info["surface"].endswith(("(100)", "(111)"))
        assert atoms.info["adsorbate"] == atoms.get_chemical_symbols()[-1]
    for point, moved in zip(frames[::2], frames[1::2], strict=True):
        free = point.copy()
        free.set_constraint()
        free.calc = EMT()
        forces = free.get_forces()
        fixed = point.constraints[0].get_indices()
        slab_free = np.setdiff1d(np.arange(len(point) - 1), fixed)
        assert np.linalg.norm(forces[slab_free], axis=1).max() <= 0.02  # BFGS fmax, eV/Å
        assert abs(forces[-1, 2]) <= 0.02
        lateral.append(np.linalg.norm(forces[-1, :2]))
        step = np.linalg.norm(moved.positions[-1] - point.positions[-1])
        assert 0.03 <= step <= 0.15
        np.testing.assert_allclose(moved.positions[:-1], point.positions[:-1])
    assert max(lateral) > 0.05  # off the minima: the lateral slope is what these frames carry


def test_lateral_scans_give_h_about_half_the_points():
    rng = np.random.default_rng(11)
    names = [physics_data.lateral_scan_minimum(rng).get_chemical_symbols()[-1] for _ in range(40)]
    assert 10 <= names.count("H") <= 30
    assert set(names) <= {"H", "O", "N", "C"}
