"""The AdsorbML pipeline with EMT: ranking, top-k files, E_ads, reference hand-off, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ase.build import fcc100
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import read

from eqv2calc.adsorbml import AdsorbMLConfig, get_adsorbate, run_adsorbml
from eqv2calc.adsorbml.energies import OC20_GAS_REFS
from eqv2calc.adsorbml.slabs import prepare_slab
from eqv2calc.adsorbml.store import ResultStore, ResumeMismatchError


class CountingEMT(EMT):
    """EMT that counts its energy/force evaluations."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        super().calculate(atoms, properties, system_changes)


class AdsorptionEMT(EMT):
    """Pretends to predict adsorption energies, as OC20 checkpoints do."""

    energy_kind = "adsorption"


def _system():
    return prepare_slab(fcc100("Cu", size=(2, 2, 3), vacuum=7.0), "cu100")


def _cfg(**kw):
    base = dict(num_random=3, seed=0, fmax=0.05, steps=150, top_k=3, progress=False)
    base.update(kw)
    return AdsorbMLConfig(**base)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("adsorbml")
    ml, dft = CountingEMT(), CountingEMT()
    (outcome,) = run_adsorbml(
        _system(), get_adsorbate("O"), ml, out, _cfg(), dft_calculator=dft, dft_label="emt"
    )
    return out, outcome, ml.calls, dft.calls


def test_ranking_and_top_k_files(first_run):
    out, o, _, _ = first_run
    assert len(o.ml) == 3 + 3  # ontop, bridge, hollow + 3 random
    valid = [r for r in o.ml if r.valid]
    ranked_e = [o.record(p).e_ml for p in o.ranked]
    assert ranked_e == sorted(ranked_e)
    assert ranked_e[0] == pytest.approx(min(r.e_ml for r in valid))
    assert o.top_k == o.ranked[:3]
    for rank, pid in enumerate(o.top_k, start=1):
        xyz = out / "topk" / "cu100" / f"rank{rank}_pid{pid}.extxyz"
        poscar = out / "topk" / "cu100" / f"rank{rank}_pid{pid}.vasp"
        a = read(xyz)
        assert a.get_potential_energy() == pytest.approx(o.record(pid).e_ml)
        b = read(poscar, format="vasp")
        assert len(b) == len(a)
        # same fractional positions up to a lattice vector (0.9999999999999999 is 0.0)
        frac = b.get_scaled_positions(wrap=False) - a.get_scaled_positions(wrap=False)
        np.testing.assert_allclose(frac - np.round(frac), 0.0, atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    system = summary["systems"][0]
    assert [t["pid"] for t in system["top_k"]] == o.top_k
    assert system["placements"]["total"] == 6
    assert set(system["ml"]["anomalies"]) == {
        "desorbed",
        "dissociated",
        "surface_changed",
        "intercalated",
        "migrated",
    }
    assert (out / "energies.png").stat().st_size > 1000


def test_eads_and_reference_single_points(first_run):
    _, o, _, _ = first_run
    refs = o.gas_ml.refs
    for r in o.ml:
        assert r.e_ads == pytest.approx(r.e_ml - o.slab_energy_ml - refs["O"])
    # the reference (EMT) single point on each ML(EMT)-relaxed geometry gives the same energy
    assert [d.pid for d in o.dft] == o.top_k
    for d in o.dft:
        assert d.calls == 1 and d.mode == "sp"
        assert d.energy == pytest.approx(o.record(d.pid).e_ml, abs=1e-8)
        assert d.e_ads == pytest.approx(o.record(d.pid).e_ads, abs=1e-6)
    assert o.dft_adslab_calls == len(o.top_k)
    exhaustive, basis = o.exhaustive_estimate()
    assert exhaustive == pytest.approx(len(o.ml) * np.mean([r.steps + 1 for r in o.ml]))
    assert "proxy" in basis


def test_second_run_resumes_without_calculations(first_run):
    out, o, ml_calls, dft_calls = first_run
    assert ml_calls > 0 and dft_calls > 0
    ml, dft = CountingEMT(), CountingEMT()
    (again,) = run_adsorbml(
        _system(), get_adsorbate("O"), ml, out, _cfg(), dft_calculator=dft, dft_label="emt"
    )
    assert ml.calls == 0 and dft.calls == 0
    assert again.new_ml_relaxations == 0 and again.new_dft_calls == 0
    assert again.top_k == o.top_k
    assert [r.e_ml for r in again.ml] == [r.e_ml for r in o.ml]


def test_interrupted_run_redoes_only_missing_relaxations(tmp_path):
    cfg = _cfg()
    run_adsorbml(_system(), get_adsorbate("O"), CountingEMT(), tmp_path, cfg, write_outputs=False)
    store = ResultStore(tmp_path / "adsorbml.db")
    gone = [r.id for r in store.all("ml", "cu100")][:2]
    store.db.delete(gone)
    ml = CountingEMT()
    (o,) = run_adsorbml(_system(), get_adsorbate("O"), ml, tmp_path, cfg, write_outputs=False)
    assert o.new_ml_relaxations == 2
    assert ml.calls > 0
    assert len(o.ml) == 6


def test_changed_settings_are_refused(tmp_path):
    run_adsorbml(_system(), get_adsorbate("O"), EMT(), tmp_path, _cfg(), write_outputs=False)
    with pytest.raises(ResumeMismatchError, match="fmax"):
        run_adsorbml(
            _system(), get_adsorbate("O"), EMT(), tmp_path, _cfg(fmax=0.1), write_outputs=False
        )
    with pytest.raises(ResumeMismatchError, match="seed"):
        run_adsorbml(
            _system(), get_adsorbate("O"), EMT(), tmp_path, _cfg(seed=1), write_outputs=False
        )


def test_relaxation_mode_counts_ionic_steps(tmp_path):
    cfg = _cfg(num_random=1, top_k=2, dft_mode="rx", dft_fmax=0.05)
    dft = CountingEMT()
    (o,) = run_adsorbml(
        _system(),
        get_adsorbate("N"),
        EMT(),
        tmp_path,
        cfg,
        dft_calculator=dft,
        dft_label="emt",
        write_outputs=False,
    )
    assert len(o.dft) == 2
    for d in o.dft:
        assert d.mode == "rx" and d.calls >= 1 and d.converged
        assert d.anomalies == []
        # started from an EMT minimum: the EMT relaxation barely moves
        assert d.energy == pytest.approx(o.record(d.pid).e_ml, abs=5e-3)
    assert dft.calls >= o.dft_adslab_calls + o.dft_overhead_calls
    # the dense estimate uses the ML relaxations from the placements, not the short RX runs
    # that start from ML minima
    exhaustive, basis = o.exhaustive_estimate()
    assert "ML relaxations" in basis
    assert exhaustive == pytest.approx(len(o.ml) * np.mean([r.steps + 1 for r in o.ml]))


def test_adsorption_energy_models_need_no_references(tmp_path):
    (o,) = run_adsorbml(
        _system(),
        get_adsorbate("O"),
        AdsorptionEMT(),
        tmp_path,
        _cfg(num_random=0),
        write_outputs=False,
    )
    assert o.energy_kind == "adsorption" and o.gas_ml is None
    for r in o.ml:
        assert r.e_ads == r.e_ml and math.isfinite(r.e_ml)


class StandInDFT(Calculator):
    """Not EMT as far as the pipeline can tell (EMT's numbers underneath): OC20's gas
    references are refused for EMT itself."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        emt = EMT()
        work = self.atoms.copy()
        work.calc = emt
        self.results = {
            "energy": work.get_potential_energy(),
            "free_energy": work.get_potential_energy(),
            "forces": work.get_forces(apply_constraint=False),
        }


def test_gas_reference_mode_can_change_on_resume(tmp_path):
    cfg = _cfg(num_random=0)
    (a,) = run_adsorbml(
        _system(), get_adsorbate("O"), StandInDFT(), tmp_path, cfg, write_outputs=False
    )
    cfg_oc20 = _cfg(num_random=0, gas_refs="oc20")
    (b,) = run_adsorbml(
        _system(), get_adsorbate("O"), StandInDFT(), tmp_path, cfg_oc20, write_outputs=False
    )
    assert b.new_ml_relaxations == 0
    assert b.gas_ml.refs["O"] == OC20_GAS_REFS["O"] != a.gas_ml.refs["O"]
    r = b.record(b.ranked[0])
    assert r.e_ads == pytest.approx(r.e_ml - b.slab_energy_ml - OC20_GAS_REFS["O"])


def test_discard_unconverged_drops_relaxations_that_ran_out_of_steps(tmp_path):
    kept = _cfg(steps=3)
    (o,) = run_adsorbml(_system(), get_adsorbate("O"), EMT(), tmp_path, kept, write_outputs=False)
    unconverged = {r.pid for r in o.ml if not r.converged}
    assert unconverged  # 3 steps is not enough for every placement
    assert unconverged & set(o.ranked)  # kept by default, as in AdsorbML
    # the same results, read again with discard_unconverged: only converged ones are ranked
    strict = _cfg(steps=3, discard_unconverged=True)
    (s,) = run_adsorbml(_system(), get_adsorbate("O"), EMT(), tmp_path, strict, write_outputs=False)
    assert s.new_ml_relaxations == 0
    assert not unconverged & set(s.ranked)
    assert {r.pid for r in s.ml if r.valid} == {r.pid for r in o.ml if r.valid} - unconverged
