"""Reference-cost accounting: ionic steps and the documented SCF-step model."""

from __future__ import annotations

import math

import pytest

from eqv2calc.adsorbml.cost import SCFModel, account, dense_estimate, speedup


def test_scf_model_formula():
    m = SCFModel(first=30, later=5)
    assert m.scf_steps(1) == 30  # a single point
    assert m.scf_steps(11) == 30 + 10 * 5  # a relaxation of 11 ionic steps
    assert m.scf_steps(0) == 0
    with pytest.raises(ValueError, match="positive"):
        SCFModel(first=0, later=5)


def test_account_single_points_and_relaxations():
    m = SCFModel(first=20, later=4)
    sp = account([1, 1, 1], m)
    assert (sp.calculations, sp.ionic_steps, sp.scf_steps) == (3, 3, 60)
    rx = account([5, 1, 10], m)
    assert rx.ionic_steps == 16
    assert rx.scf_steps == (20 + 4 * 4) + 20 + (20 + 9 * 4)


def test_dense_estimate_and_speedup():
    m = SCFModel(first=20, later=4)
    d = dense_estimate(50, 11.0, m)
    assert d.ionic_steps == 550 and d.scf_steps == 50 * (20 + 10 * 4)
    assert speedup(d.ionic_steps, 5) == 110
    # the SCF speed-up of single points is smaller than the ionic one (a SP costs `first`)
    sp = account([1] * 5, m)
    assert speedup(d.scf_steps, sp.scf_steps) < speedup(d.ionic_steps, sp.ionic_steps)
    assert math.isnan(speedup(d.ionic_steps, 0))
    assert math.isnan(dense_estimate(5, float("nan"), m).ionic_steps)
