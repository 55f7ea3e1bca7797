"""Tests for eqv2calc.registry, eqv2calc.registry.download and the ``eqv2calc models`` command.

No test touches the network: downloads go through ``file://`` URLs and a local HTTP server
bound to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from eqv2calc import registry
from eqv2calc.checkpoint import names
from eqv2calc.cli import main as cli_main
from eqv2calc.cli.models import models_command
from eqv2calc.registry.download import DownloadError, download_file, sha256_of

DATA = Path(__file__).parent / "data" / "eqv2"
REPO_MODELS = Path(__file__).resolve().parents[1] / "eqv2calc" / "registry" / "models"

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _card(name: str, **overrides) -> dict:
    data = {
        "name": name,
        "title": f"test model {name}",
        "file_name": f"{name}.pt",
        "family": "oc20",
        "layout": "classic",
        "bundled": False,
        "training_data": "test data",
        "energy_kind": "adsorption",
        "energy_short": "adsorption",
        "energy_meaning": "test",
        "properties": ["energy", "forces"],
        "license": "see source",
        "url": "file:///nonexistent/never-used.pt",
    }
    data.update(overrides)
    return data


def _write_card(folder: Path, data: dict) -> Path:
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An isolated registry: its own cards folder and cache folder, online by default."""
    models = tmp_path / "models"
    cache = tmp_path / "cache"
    models.mkdir()
    monkeypatch.setenv(registry.ENV_MODELS_DIR, str(models))
    monkeypatch.setenv(registry.ENV_CACHE, str(cache))
    monkeypatch.delenv(registry.ENV_OFFLINE, raising=False)
    monkeypatch.delenv(registry.ENV_HF_TOKEN, raising=False)
    source = tmp_path / "source"
    source.mkdir()
    blob = source / "blob.pt"
    blob.write_bytes(PAYLOAD)
    good_sha = hashlib.sha256(PAYLOAD).hexdigest()
    _write_card(
        models,
        _card("demo-model", family="demo", layout=None, bundled=True, energy_kind="emt", url=None),
    )
    (models / "demo-model.pt").write_bytes(b"bundled")
    _write_card(
        models,
        _card(
            "eq2_test_31M",
            url=blob.as_uri(),
            sha256=good_sha,
            size_bytes=len(PAYLOAD),
            aliases=["EquiformerV2-Test-31M"],
        ),
    )
    _write_card(models, _card("eq2_bad_sha", url=blob.as_uri(), sha256="0" * 64))
    _write_card(models, _card("eq2_bad_size", url=blob.as_uri(), size_bytes=len(PAYLOAD) + 1))
    _write_card(models, _card("eq2_missing_source", url=(source / "absent.pt").as_uri()))

    class Env:
        pass

    e = Env()
    e.models, e.cache, e.source, e.blob, e.sha = models, cache, source, blob, good_sha
    return e


def _no_partials(folder: Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir() if p.name.endswith(".part")]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /ok.pt, /partial.pt (short body), /missing.pt (404), /gated.pt (401),
    /redirect.pt (302 to the second server's /ok.pt)."""

    seen_auth: list  # Authorization header of each request, per server (set by the fixture)
    redirect_to: str = ""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.seen_auth.append((self.path, self.headers.get("Authorization")))
        if self.path == "/ok.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/partial.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.close_connection = True
        elif self.path == "/gated.pt":
            self.send_error(401, "Unauthorized")
        elif self.path == "/redirect.pt":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404, "Not Found")


def _start_server(seen: list, redirect_to: str = ""):
    handler = type("H", (_Handler,), {"seen_auth": seen, "redirect_to": redirect_to})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return server, thread


@pytest.fixture
def http_servers():
    """Two local servers; the first redirects /redirect.pt to the second's /ok.pt."""
    seen_b: list = []
    server_b, thread_b = _start_server(seen_b)
    url_b = f"http://127.0.0.1:{server_b.server_address[1]}"
    seen_a: list = []
    server_a, thread_a = _start_server(seen_a, redirect_to=f"{url_b}/ok.pt")
    url_a = f"http://127.0.0.1:{server_a.server_address[1]}"
    try:
        yield url_a, seen_a, url_b, seen_b
    finally:
        for server, thread in ((server_a, thread_a), (server_b, thread_b)):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# the repository's cards
# --------------------------------------------------------------------------------------------


def test_repository_cards_parse_and_are_complete(monkeypatch):
    monkeypatch.delenv(registry.ENV_MODELS_DIR, raising=False)
    assert registry.models_dir().resolve() == REPO_MODELS.resolve()
    cards = registry.list_cards()
    files = sorted(p.name for p in REPO_MODELS.iterdir() if p.suffix in (".yaml", ".yml"))
    assert len(cards) == len(files)
    names = {c.name for c in cards}
    for expected in (
        "eq2_31M_ec4_allmd",
        "eq2_153M_ec4_allmd",
        "eq2_83M_2M",
        "eq2_121M_e4_f100_oc22_s2ef",
        "eqV2_31M_omat",
        "eqV2_86M_omat",
        "eqV2_153M_omat",
        "eqV2_31M_omat_mp_salex",
        "eqV2_86M_omat_mp_salex",
        "eqV2_153M_omat_mp_salex",
        "eqV2_31M_mp",
        "eqV2_dens_31M_mp",
        "eqV2_dens_86M_mp",
        "eqV2_dens_153M_mp",
        "odac_eqv2_31M",
        registry.DEFAULT_MODEL_NAME,
    ):
        assert expected in names
    assert len({c.file_name.casefold() for c in cards}) == len(cards)
    for card in cards:
        assert card.card_file is not None and card.card_file.stem == card.name
        assert "energy" in card.properties and card.energy_meaning and card.license
        if card.bundled:
            assert card.url is None
            continue
        assert card.url.startswith("https://") and card.url.endswith(card.file_name)
        assert card.layout in registry.LAYOUTS
        assert card.cutoff is not None and card.max_neighbors is not None
        assert card.strict_neighbor_cap is not None
        # the hydra heads carry stress, the classic OC20/OC22/ODAC models do not
        assert card.has_stress == card.layout.startswith("hydra")
        # the families whose energy users confuse
        expected_kind = {"oc20": "adsorption", "odac": "adsorption"}.get(card.family, "total")
        assert card.energy_kind == expected_kind
        assert card.gated == card.url.startswith("https://huggingface.co/")
        for acc in card.accuracy:
            assert acc.source and acc.dataset and acc.metric


def test_default_card_is_the_bundled_conservative_emt_model(monkeypatch):
    monkeypatch.delenv(registry.ENV_MODELS_DIR, raising=False)
    card = registry.get_card(registry.DEFAULT_MODEL_NAME)
    assert card.bundled and card.family == "demo" and card.energy_kind == "emt"
    assert registry.DEFAULT_MODEL_NAME == "eqv2calc-emt-conservative"
    demo = registry.get_card("demo")  # the first bundled model stays, by name
    assert demo.bundled and demo.name == "eqv2calc-demo-emt"
    assert registry.resolve_model("demo").name == "eqv2calc-demo-emt.pt"
    expected = REPO_MODELS / "eqv2calc-emt-conservative.pt"
    assert registry.default_model_path(check=False).resolve() == expected.resolve()
    if expected.is_file():
        assert registry.resolve_model(None).resolve() == expected.resolve()
    else:  # the demo checkpoint is trained separately and may not be there yet
        with pytest.raises(registry.BundledModelMissingError, match=re.escape(str(expected))):
            registry.resolve_model(None)


def _config_model(entry: dict) -> dict:
    """The training config of one released checkpoint, preferring the fairchem copy."""
    keys = sorted(entry, key=lambda k: not k.startswith("fairchem_repo/"))
    return entry[keys[0]]["model"]


def test_cards_match_released_training_configs(monkeypatch):
    """Graph and architecture fields on the cards agree with the released configs."""
    monkeypatch.delenv(registry.ENV_MODELS_DIR, raising=False)
    released = json.loads((DATA / "released_model_configs.json").read_text())
    by_file = {}
    for key, entry in released.items():
        file_name = next(tok for tok in key.split() if tok.endswith(".pt"))
        by_file[file_name] = _config_model(entry)
    checked = 0
    for file_name, model in by_file.items():
        card = next(c for c in registry.list_cards() if c.file_name == file_name)
        if "finetune_config" in model:  # the backbone comes from the starting checkpoint
            model = by_file[model["finetune_config"]["starting_checkpoint"]]
        backbone = names.our_option_names(model.get("backbone", model))  # fairchem's names
        assert card.cutoff == backbone["cutoff"], card.name
        assert card.max_neighbors == backbone["max_neighbors"], card.name
        # fairchem's default for the strict cap is True
        assert card.strict_neighbor_cap == backbone.get("strict_neighbor_cap", True), card.name
        assert card.num_elements == backbone["num_elements"], card.name
        assert card.architecture["num_layers"] == backbone["num_layers"], card.name
        assert card.architecture["lmax"] == backbone["lmax"], card.name
        assert card.architecture["mmax"] == backbone["mmax"], card.name
        assert card.architecture["sphere_channels"] == backbone["sphere_channels"], card.name
        expected_layout = "classic"
        if model["name"] == "hydra":
            expected_layout = "hydra-dens" if "DeNS" in backbone["model"] else "hydra"
        assert card.layout == expected_layout, card.name
        checked += 1
    assert checked == len(released) >= 10


# --------------------------------------------------------------------------------------------
# card parsing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown key"),
        ({"family": "oc21"}, "family"),
        ({"properties": ["energy", "charges"]}, "properties"),
        ({"sha256": "abc"}, "sha256"),
        ({"url": None}, "url"),
        ({"file_name": "sub/dir.pt"}, "file_name"),
        ({"cutoff": "twelve"}, "cutoff"),
        ({"accuracy": [{"metric": "force MAE", "value": 1.0}]}, "accuracy"),
    ],
)
def test_bad_cards_are_rejected_with_file_and_key(tmp_path, change, message):
    path = _write_card(tmp_path, _card("broken", **change))
    with pytest.raises(registry.CardError, match=message) as info:
        registry.load_card(path)
    assert str(path) in str(info.value)


def test_missing_required_key(tmp_path):
    data = _card("broken")
    del data["energy_meaning"]
    path = _write_card(tmp_path, data)
    with pytest.raises(registry.CardError, match="energy_meaning"):
        registry.load_card(path)


def test_duplicate_names_across_cards_are_rejected(env):
    _write_card(env.models, _card("other", aliases=["EQ2_TEST_31M"]))
    with pytest.raises(registry.CardError, match="eq2_test_31m"):
        registry.list_cards()


def test_card_for_file_matches_published_file_name(env, tmp_path):
    assert registry.card_for_file(tmp_path / "EQ2_TEST_31M.pt").name == "eq2_test_31M"
    assert registry.card_for_file(tmp_path / "eq2_test_31M.pth") is None


def test_card_to_dict_is_json_serialisable(env):
    card = registry.get_card("eq2_test_31M")
    data = json.loads(json.dumps(card.to_dict()))
    assert data["name"] == "eq2_test_31M" and data["sha256"] == env.sha


# --------------------------------------------------------------------------------------------
# resolution
# --------------------------------------------------------------------------------------------


def test_existing_path_is_returned_as_is(tmp_path, env):
    ckpt = tmp_path / "my model.pt"
    ckpt.write_bytes(b"x")
    assert registry.resolve_model(str(ckpt)) == ckpt
    assert registry.resolve_model(ckpt) == ckpt  # os.PathLike


def test_existing_file_wins_over_registry_name(tmp_path, env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("eq2_test_31M.pt").write_bytes(b"local")
    assert registry.resolve_model("eq2_test_31M.pt") == Path("eq2_test_31M.pt")
    assert not (env.cache / "eq2_test_31M.pt").exists()


@pytest.mark.parametrize("given", ["missing/dir/model.pt", "./model.pt", "nothing_here.pt"])
def test_missing_path_like_string_names_the_path(env, given):
    with pytest.raises(FileNotFoundError, match=re.escape(given)):
        registry.resolve_model(given)


def test_missing_pathlike_object(tmp_path, env):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        registry.resolve_model(tmp_path / "absent.pt")


def test_directory_is_not_a_checkpoint(tmp_path, env, monkeypatch):
    with pytest.raises(IsADirectoryError):
        registry.resolve_model(str(tmp_path))
    # a folder that happens to carry a registry name does not hide the registry entry
    monkeypatch.chdir(tmp_path)
    Path("demo-model").mkdir()
    assert registry.resolve_model("demo-model") == env.models / "demo-model.pt"


@pytest.mark.parametrize(
    "given",
    [
        "eq2_test_31M",
        "EQ2_TEST_31m",
        "eq2_test_31M.pt",
        "EQ2_test_31M.PT",
        "equiformerv2-test-31m",
        "  eq2_test_31M  ",
    ],
)
def test_registry_name_file_name_alias_and_case(env, given):
    cached = env.cache / "eq2_test_31M.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"already here")
    assert registry.resolve_model(given) == cached
    assert cached.read_bytes() == b"already here"  # no download happened


def test_unknown_name_suggests_close_matches(env):
    with pytest.raises(registry.UnknownModelError) as info:
        registry.resolve_model("eq2_tset_31M")
    assert "eq2_test_31M" in info.value.suggestions
    assert "eq2_test_31M" in str(info.value)
    with pytest.raises(registry.UnknownModelError) as info:
        registry.get_card("completely-different")
    assert info.value.suggestions == []


def test_unknown_name_suggestions_with_real_cards(monkeypatch):
    monkeypatch.delenv(registry.ENV_MODELS_DIR, raising=False)
    with pytest.raises(registry.UnknownModelError) as info:
        registry.get_card("eqv2_31M_omatt")
    assert info.value.suggestions[0] == "eqV2_31M_omat"


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path / "c"))
    assert registry.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(registry.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "xdg" / "eqv2calc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.cache_dir() == tmp_path / "home" / ".cache" / "eqv2calc"


def test_registry_name_resolves_into_the_cache_folder(env, tmp_path, monkeypatch):
    other = tmp_path / "other-cache"
    monkeypatch.setenv(registry.ENV_CACHE, str(other))
    path = registry.resolve_model("eq2_test_31M", progress=False)
    assert path == other / "eq2_test_31M.pt"
    assert path.read_bytes() == PAYLOAD


def test_default_model_is_bundled_file(env):
    expected = env.models / "demo-model.pt"
    assert registry.default_model_path() == expected
    assert registry.resolve_model(None) == expected
    assert registry.resolve_model("demo-model") == expected


def test_missing_bundled_file_is_a_clear_error(env):
    (env.models / "demo-model.pt").unlink()
    with pytest.raises(registry.BundledModelMissingError, match="bundled") as info:
        registry.resolve_model(None)
    assert str(env.models / "demo-model.pt") in str(info.value)
    with pytest.raises(registry.BundledModelMissingError):
        registry.fetch("demo-model")


# --------------------------------------------------------------------------------------------
# downloads
# --------------------------------------------------------------------------------------------


def test_download_through_file_url(env):
    path = registry.fetch("eq2_test_31M", progress=False)
    assert path == env.cache / "eq2_test_31M.pt"
    assert sha256_of(path) == env.sha
    assert _no_partials(env.cache)


def test_download_with_progress_bar(env, capsys):
    path = registry.fetch("eq2_test_31M", progress=True)
    assert path.read_bytes() == PAYLOAD


def test_sha256_mismatch_is_rejected_and_leaves_nothing(env):
    with pytest.raises(registry.ModelUnavailableError, match="SHA-256 mismatch") as info:
        registry.fetch("eq2_bad_sha", progress=False)
    assert not (env.cache / "eq2_bad_sha.pt").exists()
    assert _no_partials(env.cache)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value.__cause__, DownloadError)


def test_size_mismatch_is_rejected(env):
    with pytest.raises(registry.ModelUnavailableError, match="size mismatch"):
        registry.fetch("eq2_bad_size", progress=False)
    assert not (env.cache / "eq2_bad_size.pt").exists()
    assert _no_partials(env.cache)


def test_failed_forced_download_keeps_existing_file(env):
    target = env.cache / "eq2_bad_sha.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old but complete")
    assert registry.fetch("eq2_bad_sha") == target  # present: no download
    with pytest.raises(registry.ModelUnavailableError):
        registry.fetch("eq2_bad_sha", force=True, progress=False)
    assert target.read_bytes() == b"old but complete"
    assert _no_partials(env.cache)


def test_missing_source_message_has_url_and_path(env):
    card = registry.get_card("eq2_missing_source")
    with pytest.raises(registry.ModelUnavailableError) as info:
        registry.resolve_model("eq2_missing_source", progress=False)
    message = str(info.value)
    assert card.url in message
    assert str(env.cache / "eq2_missing_source.pt") in message
    assert _no_partials(env.cache)


def test_offline_does_not_download_and_says_where_to_put_the_file(env, monkeypatch):
    monkeypatch.setenv(registry.ENV_OFFLINE, "1")
    card = registry.get_card("eq2_test_31M")
    with pytest.raises(registry.ModelUnavailableError) as info:
        registry.resolve_model("eq2_test_31M")
    message = str(info.value)
    assert card.url in message
    assert str(env.cache / "eq2_test_31M.pt") in message
    assert registry.ENV_OFFLINE in message
    # the file:// source exists, so any download attempt would have succeeded
    assert not (env.cache / "eq2_test_31M.pt").exists()


def test_download_false_does_not_fetch(env):
    with pytest.raises(registry.ModelUnavailableError, match=re.escape(str(env.cache))):
        registry.resolve_model("eq2_test_31M", download=False)
    assert not (env.cache / "eq2_test_31M.pt").exists()


def test_http_download_sends_token_and_installs_file(env, http_servers, monkeypatch):
    url_a, seen_a, _, _ = http_servers
    _write_card(env.models, _card("eq2_http", url=f"{url_a}/ok.pt", sha256=env.sha))
    monkeypatch.setenv(registry.ENV_HF_TOKEN, "secret-token")
    path = registry.fetch("eq2_http", progress=False, timeout=10)
    assert path.read_bytes() == PAYLOAD
    assert seen_a == [("/ok.pt", "Bearer secret-token")]
    assert _no_partials(env.cache)


def test_http_redirect_to_other_origin_drops_token(env, http_servers, monkeypatch):
    url_a, seen_a, _, seen_b = http_servers
    _write_card(env.models, _card("eq2_redirect", url=f"{url_a}/redirect.pt"))
    monkeypatch.setenv(registry.ENV_HF_TOKEN, "secret-token")
    path = registry.fetch("eq2_redirect", progress=False, timeout=10)
    assert path.read_bytes() == PAYLOAD
    assert seen_a == [("/redirect.pt", "Bearer secret-token")]
    assert seen_b == [("/ok.pt", None)]


def test_http_truncated_transfer_leaves_no_file(env, http_servers):
    url_a, _, _, _ = http_servers
    _write_card(env.models, _card("eq2_partial", url=f"{url_a}/partial.pt"))
    with pytest.raises(registry.ModelUnavailableError, match="incomplete") as info:
        registry.fetch("eq2_partial", progress=False, timeout=10)
    assert f"{url_a}/partial.pt" in str(info.value)
    assert not (env.cache / "eq2_partial.pt").exists()
    assert _no_partials(env.cache)


def test_http_404_message(env, http_servers):
    url_a, _, _, _ = http_servers
    _write_card(env.models, _card("eq2_404", url=f"{url_a}/missing.pt"))
    with pytest.raises(registry.ModelUnavailableError, match="HTTP 404") as info:
        registry.fetch("eq2_404", progress=False, timeout=10)
    assert str(env.cache / "eq2_404.pt") in str(info.value)
    assert _no_partials(env.cache)


def test_gated_401_mentions_hf_token(env, http_servers):
    url_a, _, _, _ = http_servers
    _write_card(
        env.models,
        _card(
            "eq2_gated",
            url=f"{url_a}/gated.pt",
            gated=True,
            source_page="https://huggingface.co/example/repo",
        ),
    )
    with pytest.raises(registry.ModelUnavailableError) as info:
        registry.fetch("eq2_gated", progress=False, timeout=10)
    message = str(info.value)
    assert "HTTP 401" in message and "HF_TOKEN" in message
    assert "https://huggingface.co/example/repo" in message


def test_download_file_rejects_unsupported_scheme(tmp_path):
    with pytest.raises(DownloadError, match="only http"):
        download_file("ftp://example.org/x.pt", tmp_path / "x.pt", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_download_error(tmp_path):
    # a port that was free a moment ago: take one from a closed socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        download_file(f"http://127.0.0.1:{port}/x.pt", tmp_path / "x.pt", progress=False, timeout=5)
    assert f"http://127.0.0.1:{port}/x.pt" in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_table_marks_present_models(env):
    cached = env.cache / "eq2_test_31M.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    result = CliRunner().invoke(models_command, [])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert f"yes  {cached}" in lines["eq2_test_31M"]
    assert lines["eq2_bad_sha"].rstrip().endswith("no")
    assert str(env.models / "demo-model.pt") in lines["demo-model"]
    assert str(env.cache) in result.output


def test_cli_json_lists_every_card(env):
    result = CliRunner().invoke(models_command, ["--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["name"] for d in data] == [c.name for c in registry.list_cards()]
    entry = next(d for d in data if d["name"] == "eq2_test_31M")
    assert entry["present"] is False
    assert entry["local_path"] == str(env.cache / "eq2_test_31M.pt")


def test_cli_show_one_card_and_download(env):
    runner = CliRunner()
    result = runner.invoke(models_command, ["equiformerv2-test-31m"])
    assert result.exit_code == 0, result.output
    assert "eq2_test_31M" in result.output and "missing" in result.output
    result = runner.invoke(models_command, ["--download", "eq2_test_31M", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (env.cache / "eq2_test_31M.pt").read_bytes() == PAYLOAD
    result = runner.invoke(models_command, ["eq2_test_31M", "--json"])
    assert json.loads(result.output)["present"] is True


def test_cli_errors_are_one_line(env, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(models_command, ["eq2_tset_31M"])
    assert result.exit_code != 0
    assert "Did you mean: eq2_test_31M" in result.output
    monkeypatch.setenv(registry.ENV_OFFLINE, "1")
    result = runner.invoke(models_command, ["--download", "eq2_test_31M"])
    assert result.exit_code != 0
    assert str(env.cache / "eq2_test_31M.pt") in result.output


def test_cli_through_main_group_with_repository_cards(monkeypatch):
    monkeypatch.delenv(registry.ENV_MODELS_DIR, raising=False)
    result = CliRunner().invoke(cli_main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    names = [d["name"] for d in json.loads(result.output)]
    assert "eq2_31M_ec4_allmd" in names and "eqV2_31M_omat_mp_salex" in names
    help_text = CliRunner().invoke(cli_main, ["models", "--help"]).output
    for variable in ("EQV2CALC_CACHE", "EQV2CALC_OFFLINE", "HF_TOKEN"):
        assert variable in help_text


def test_cli_emt_and_download_only_options_are_refused(env):
    runner = CliRunner()
    result = runner.invoke(models_command, ["emt"])
    assert result.exit_code == 1 and "ASE's EMT potential, not a checkpoint" in result.output
    for option in ("--force", "--no-progress"):
        result = runner.invoke(models_command, [option])
        assert result.exit_code == 2 and "go with --download" in result.output
