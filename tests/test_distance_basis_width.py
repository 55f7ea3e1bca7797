"""``distance_basis_width``: eqv2calc's option for wider Gaussians in the distance basis.

The reference's 600 Gaussians are 2 centre spacings wide (0.015 Å at a 4.5 Å cutoff). A small
model trained on little data leaves the weights of the Gaussians between the distances it saw
where they started, and its energy gets meV bumps a few hundredths of an Å apart: a minimum's
curvature (a vibrational mode) comes out several times too large (issue 17). Wider Gaussians make
the radial functions smooth; ``widen_distance_basis`` moves a trained model to a wider basis as a
warm start for fine-tuning.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from torch import nn

from eqv2calc.calculator import EquiformerV2Calculator
from eqv2calc.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from eqv2calc.model.radial import GaussianDistanceBasis, RadialMLP, widen_distance_basis
from eqv2calc.testing import tiny_config, tiny_model

CUTOFF = 4.5  # Å
DISTANCES = torch.linspace(1.0, 3.5, 501, dtype=torch.float64)  # Å, well inside the basis


def dense(basis: GaussianDistanceBasis, distance: torch.Tensor) -> torch.Tensor:
    diff = distance.view(-1, 1) - basis.centres.to(distance.dtype).view(1, -1)
    return torch.exp(basis.coeff * diff.pow(2))


def test_wide_windowed_basis_equals_the_dense_gaussians():
    basis = GaussianDistanceBasis(0.0, CUTOFF, 600, 12.0).double()
    distance = torch.cat([torch.rand(500, dtype=torch.float64) * 4.6, torch.tensor([0.0, 4.5])])
    assert basis.width == 12.0
    assert (basis(distance) - dense(basis, distance)).abs().max() < 1e-20


@pytest.mark.parametrize("width", [2.0, 12.0])
def test_the_gaussians_sum_to_sqrt_two_pi_times_the_width(width):
    # Σ_k exp(−(d − kΔ)² / 2(wΔ)²) = √(2π)·w up to exp(−2π²w²) (Poisson summation): the premise
    # of widen_distance_basis's rescaling; the centres are float32 (as in the reference), whose
    # rounding (~1e-7 Å on a 0.0075 Å spacing) leaves ~1e-6 of unevenness
    basis = GaussianDistanceBasis(0.0, CUTOFF, 600, width).double()
    total = basis(DISTANCES).sum(dim=1)
    np.testing.assert_allclose(total.numpy(), math.sqrt(2 * math.pi) * width, rtol=1e-5)


class _Model(nn.Module):
    """What widen_distance_basis touches: ``backbone.distance_basis`` and a radial MLP reading it."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.distance_basis = GaussianDistanceBasis(0.0, CUTOFF, 600, 2.0).double()
        self.radial = RadialMLP([600 + 2 * 4, 3, 2]).double()


def _first_layer(model: _Model) -> torch.Tensor:
    """The first linear layer on the basis alone (element columns fed zeros), [D, 3]."""
    first = model.radial.net[0]
    basis = model.backbone.distance_basis(DISTANCES)
    return basis @ first.weight[:, :600].T


def test_widening_keeps_smooth_radial_functions_and_smooths_rough_ones():
    torch.manual_seed(0)
    model = _Model()
    first = model.radial.net[0]
    centres = model.backbone.distance_basis.centres.double()
    with torch.no_grad():  # channel 0, 1: smooth functions of distance; 2: random weights
        first.weight[0, :600] = torch.sin(centres)
        first.weight[1, :600] = torch.exp(-centres)
        first.weight[2, :600] = torch.randn(600, dtype=torch.float64)
    elements = first.weight[:, 600:].clone()
    second = model.radial.net[3].weight.clone()
    before = _first_layer(model)
    widen_distance_basis(model, 12.0)
    after = _first_layer(model)
    assert model.backbone.distance_basis.width == 12.0
    assert torch.equal(first.weight[:, 600:], elements)  # element columns untouched
    assert torch.equal(model.radial.net[3].weight, second)  # later layers untouched
    # smooth inputs: only smoothed over 0.09 Å (sin: factor exp(−σ²/2) ≈ 0.996)
    scale = before[:, :2].abs().max()
    assert (after[:, :2] - before[:, :2]).abs().max() < 1e-2 * scale
    # random weights: the second differences (curvature) shrink by far more than 10x
    rough = torch.diff(before[:, 2], n=2).abs().max()
    smooth = torch.diff(after[:, 2], n=2).abs().max()
    assert smooth < rough / 10


def test_widening_rescales_the_direct_heads_too():
    """The direct force head reads the backbone's basis through radial MLPs of its own."""
    model = tiny_model(tiny_config(), dtype=torch.float64)  # energy + direct forces heads
    radials = {name: m for name, m in model.named_modules() if isinstance(m, RadialMLP)}
    assert any(not name.startswith("backbone.") for name in radials)
    before = {name: m.net[0].weight.detach().clone() for name, m in radials.items()}
    widen_distance_basis(model, 12.0)
    for name, m in radials.items():
        torch.testing.assert_close(
            m.net[0].weight[:, :600], before[name][:, :600] * (2.0 / 12.0), rtol=0, atol=0
        )


@pytest.mark.parametrize("value", [0.0, -2.0, float("inf"), float("nan")])
def test_width_is_validated(value):
    with pytest.raises(ValueError, match="distance_basis_width must be a finite number > 0"):
        tiny_config(distance_basis_width=value)


def _trimer():
    from ase import Atoms

    return Atoms("HOC", positions=[[0, 0, 0], [1.5, 0.5, 0], [2.7, 0.2, 0.3]])


def test_width_survives_save_and_load_and_default_files_stay_fairchems(tmp_path):
    model = tiny_model(tiny_config(distance_basis_width=6.0), dtype=torch.float64)
    path = save_checkpoint(model, tmp_path / "wide.pt")
    data = torch.load(path, weights_only=False)
    assert data["config"]["eqv2calc"]["distance_basis_width"] == 6.0
    loaded = load_checkpoint(path, device="cpu").model
    assert loaded.config.distance_basis_width == 6.0
    assert loaded.backbone.distance_basis.width == 6.0
    # the same weights with the reference's width give another energy: the width is used
    narrow = tiny_model(tiny_config(), dtype=torch.float64)
    narrow.load_state_dict(model.state_dict())
    narrow_path = save_checkpoint(narrow, tmp_path / "narrow.pt")
    assert (
        "distance_basis_width"
        not in torch.load(narrow_path, weights_only=False)["config"]["eqv2calc"]
    )
    energies = []
    for p in (path, narrow_path):
        atoms = _trimer()
        atoms.calc = EquiformerV2Calculator(p, device="cpu", dtype="float64")
        energies.append(atoms.get_potential_energy())
    assert abs(energies[0] - energies[1]) > 1e-6


@pytest.mark.parametrize("value", [-1.0, float("inf"), "wide", True])
def test_bad_width_in_a_file_is_refused(tmp_path, value):
    path = save_checkpoint(tiny_model(tiny_config(distance_basis_width=6.0)), tmp_path / "w.pt")
    data = torch.load(path, weights_only=False)
    data["config"]["eqv2calc"]["distance_basis_width"] = value
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="distance_basis_width is"):
        load_checkpoint(tmp_path / "bad.pt", device="cpu")


def test_fine_tune_widens_the_basis_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from eqv2calc.cli import main

    frames = []
    for i in range(4):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True)  # Z ≤ 19 for the tiny model
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    write(tmp_path / "data.extxyz", frames)
    init = save_checkpoint(tiny_model(tiny_config(), dtype=torch.float32), tmp_path / "init.pt")
    args = ["train", "--train", str(tmp_path / "data.extxyz"), "--init", str(init)]
    args += ["--distance-basis-width", "12", "--epochs", "1", "--batch-size", "2"]
    args += ["--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "model.distance_basis_width: 2.0 -> 12.0" in result.output
    saved = load_checkpoint(tmp_path / "run" / "best.pt", device="cpu").model
    assert saved.config.distance_basis_width == 12.0
    assert saved.backbone.distance_basis.width == 12.0

    bad = CliRunner().invoke(main, [*args[:5], "--distance-basis-width", "0"])
    assert bad.exit_code == 2 and "--distance-basis-width" in bad.output
