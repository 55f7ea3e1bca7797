"""Campaigns: many work items, a ledger in a real database, local and Ray executors, shards.

A campaign runs one task (relax, eval, AdsorbML) over many items. Every item is recorded in
one SQLite ledger in the output folder (:mod:`~eqv2calc.campaigns.ledger`), keyed by its name,
a content hash of its input and the settings, with its state, result and provenance; the same command
run again continues where the last one stopped. Items run in-process
(:class:`~eqv2calc.campaigns.executors.LocalExecutor`) or on Ray actors
(:class:`~eqv2calc.campaigns.executors.RayExecutor`, ``pip install 'eqv2calc[ray]'``);
``shard=(I, N)`` runs a deterministic slice for SLURM arrays, and
:func:`~eqv2calc.campaigns.report.merge_ledgers` combines the shard ledgers.
"""

from __future__ import annotations

from eqv2calc.campaigns.executors import LocalExecutor, RayExecutor, RayNotInstalled
from eqv2calc.campaigns.ledger import ItemSpec, Ledger, LedgerError, SettingsMismatchError
from eqv2calc.campaigns.lock import CampaignLocked
from eqv2calc.campaigns.runner import CampaignReport, parse_shard, run_campaign
from eqv2calc.campaigns.tasks import AdsorbMLTask, EvalTask, RelaxTask
from eqv2calc.campaigns.worker import CalculatorSpec, CampaignWorker, Outcome

__all__ = [
    "AdsorbMLTask",
    "CalculatorSpec",
    "CampaignLocked",
    "CampaignReport",
    "CampaignWorker",
    "EvalTask",
    "ItemSpec",
    "Ledger",
    "LedgerError",
    "LocalExecutor",
    "Outcome",
    "RayExecutor",
    "RayNotInstalled",
    "RelaxTask",
    "SettingsMismatchError",
    "parse_shard",
    "run_campaign",
]
