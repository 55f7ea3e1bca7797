"""CampaignOptions: the campaign options of a command as one object."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from eqv2calc.cli.campaign import CAMPAIGN_KEYS, CampaignOptions, campaign_options


def _command(seen: list) -> click.Command:
    @click.command()
    @click.option("--other", default="x")
    @campaign_options
    def cmd(*, other: str, campaign: CampaignOptions) -> None:
        seen.append((other, campaign))

    return cmd


def test_command_receives_one_frozen_options_object():
    seen: list = []
    args = ["--other", "y", "--executor", "ray", "--ray-address", "auto", "--workers", "3"]
    args += ["--gpus-per-worker", "0.5", "--shard", "1/4", "--retry-failed"]
    result = CliRunner().invoke(_command(seen), args)
    assert result.exit_code == 0, result.output
    other, opts = seen[0]
    assert other == "y"
    assert opts == CampaignOptions(
        executor="ray",
        ray_address="auto",
        workers=3,
        gpus_per_worker=0.5,
        shard="1/4",
        retry_failed=True,
    )
    assert opts.requested and not opts.in_process
    assert opts.shard_range == (1, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.workers = 4  # type: ignore[misc]


def test_defaults_are_no_campaign():
    seen: list = []
    result = CliRunner().invoke(_command(seen), [])
    assert result.exit_code == 0, result.output
    opts = seen[0][1]
    assert opts == CampaignOptions()
    assert not opts.requested and opts.in_process and opts.shard_range is None
    assert CAMPAIGN_KEYS == tuple(f.name for f in dataclasses.fields(CampaignOptions))


@pytest.mark.parametrize(
    ("options", "requested", "in_process"),
    [
        ({"executor": "local"}, True, True),
        ({"shard": "0/2"}, True, True),
        ({"workers": 2}, True, False),
        ({"ray_address": "auto"}, True, False),
        ({"executor": "ray"}, True, False),
        ({"retry_failed": True}, False, True),
        ({"gpus_per_worker": 1.0}, False, True),
    ],
)
def test_requested_and_in_process(options, requested, in_process):
    opts = CampaignOptions(**options)
    assert opts.requested is requested
    assert opts.in_process is in_process


def test_malformed_shard_is_a_usage_error():
    seen: list = []
    result = CliRunner().invoke(_command(seen), ["--shard", "2/2"])
    assert result.exit_code == 2
    assert "--shard" in result.output
    assert seen == []
