"""AdsorbML: find the lowest-energy adsorbate configuration with an ML potential, then hand the
best few to a reference (DFT) method.

Workflow (Lan et al., "AdsorbML", npj Comput. Mater. 9, 172 (2023)): place the adsorbate on
every heuristic and many random surface sites, relax all placements with the ML model, drop
anomalous results (desorbed, dissociated, surface changed, intercalated; "migrated" to another
site type is reported and kept), merge duplicates, rank by ML energy and run the reference
method on the top k only; its cost is counted in ionic steps and estimated SCF steps.

Modules: :mod:`~eqv2calc.adsorbml.adsorbates` (library), :mod:`~eqv2calc.adsorbml.slabs`
(inputs), :mod:`~eqv2calc.adsorbml.placement`, :mod:`~eqv2calc.adsorbml.anomalies`,
:mod:`~eqv2calc.adsorbml.dedup`, :mod:`~eqv2calc.adsorbml.energies`,
:mod:`~eqv2calc.adsorbml.reference`, :mod:`~eqv2calc.adsorbml.cost`,
:mod:`~eqv2calc.adsorbml.vasp_inputs` (OC20 VASP folders), :mod:`~eqv2calc.adsorbml.store`,
:mod:`~eqv2calc.adsorbml.report`, :mod:`~eqv2calc.adsorbml.pipeline`.
Takes any ASE calculator; never imports the model. Units: eV, Å, eV/Å.
"""

from __future__ import annotations

from eqv2calc.adsorbml.adsorbates import (
    Adsorbate,
    UnknownAdsorbateError,
    get_adsorbate,
    list_adsorbates,
    load_adsorbate_file,
)
from eqv2calc.adsorbml.anomalies import AnomalyReport, detect_anomalies
from eqv2calc.adsorbml.dedup import deduplicate
from eqv2calc.adsorbml.pipeline import AdsorbMLConfig, SystemOutcome, run_adsorbml
from eqv2calc.adsorbml.placement import Placement, generate_placements
from eqv2calc.adsorbml.slabs import SlabSystem, read_slab, slabs_from_bulk

__all__ = [
    "Adsorbate",
    "AdsorbMLConfig",
    "AnomalyReport",
    "Placement",
    "SlabSystem",
    "SystemOutcome",
    "UnknownAdsorbateError",
    "deduplicate",
    "detect_anomalies",
    "generate_placements",
    "get_adsorbate",
    "list_adsorbates",
    "load_adsorbate_file",
    "read_slab",
    "run_adsorbml",
    "slabs_from_bulk",
]
