"""The fleet reads an exchange config dir: URLs, secrets, timeouts and behaviour by buyer id."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from exchange.catalog.loader import load_config
from loadtests.buyer import sign_headers
from loadtests.config import buyers_from_config, resolve_env
from loadtests.fleet import specs_from_config, start_fleet
from loadtests.procs import free_port
from loadtests.stack import Timing, write_config

SETTINGS = "settings: {tmax_ms: 200, post_timeout_ms: 900, deadline_ms: 3000}\n"


def _buyers_yaml(port_a: int, port_b: int) -> str:
    return f"""
buyers:
  - id: acme
    secret: ${{LT_ACME_SECRET:-acme-default}}
    ping_url: http://127.0.0.1:{port_a}/ping
    post_url: http://127.0.0.1:{port_a}/post
    timeout_ms: 250
    campaigns: [{{id: acme-auto, vertical: auto_insurance}}, {{id: acme-debt, vertical: debt}}]
  - id: slowpoke
    secret: plain
    ping_url: http://127.0.0.1:{port_b}/slow/ping
    post_url: http://127.0.0.1:{port_b}/slow/post
    timeout_ms: 150
    campaigns: [{{id: slow-auto, vertical: auto_insurance}}]
"""


MORE_BUYERS = """
buyers:
  - {id: flaky-finance, secret: s, ping_url: "http://127.0.0.1:1/ping", post_url: "http://127.0.0.1:1/post"}
  - {id: picky, secret: s, ping_url: "http://127.0.0.1:2/ping", post_url: "http://127.0.0.1:2/post"}
  - {id: hangman, secret: s, ping_url: "http://127.0.0.1:3/ping", post_url: "http://127.0.0.1:3/post"}
  - {id: mailer, secret: s, post_url: "http://127.0.0.1:4/post"}
"""


def _write(tmp_path: Path, port_a: int = 9901, port_b: int = 9902) -> Path:
    (tmp_path / "settings.yaml").write_text(SETTINGS)
    (tmp_path / "buyers.yaml").write_text(_buyers_yaml(port_a, port_b))
    (tmp_path / "more.yaml").write_text(MORE_BUYERS)
    return tmp_path


def test_env_references_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LT_SET", "from-env")
    monkeypatch.delenv("LT_UNSET", raising=False)
    assert resolve_env("${LT_SET:-dflt}") == "from-env"
    assert resolve_env("${LT_UNSET:-dflt}") == "dflt"
    assert resolve_env("a-${LT_SET}-b-${LT_UNSET}") == "a-from-env-b-"


def test_buyers_merge_across_files_with_secrets_and_clipped_timeouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LT_ACME_SECRET", raising=False)
    buyers = {b.buyer_id: b for b in buyers_from_config(_write(tmp_path))}
    assert set(buyers) == {"acme", "slowpoke", "flaky-finance", "picky", "hangman", "mailer"}
    assert buyers["acme"].secret == "acme-default"
    assert buyers["acme"].timeout_ms == 200  # never past tmax_ms
    assert buyers["acme"].campaigns == (("acme-auto", "auto_insurance"), ("acme-debt", "debt"))
    monkeypatch.setenv("LT_ACME_SECRET", "real-secret")
    assert buyers_from_config(tmp_path)[0].secret == "real-secret"


def test_behaviour_follows_the_buyer_id(tmp_path: Path) -> None:
    specs = {s.buyer_id: s for s in specs_from_config(_write(tmp_path))}
    assert specs["acme"].mode == "normal" and specs["acme"].reject_rate == 0
    assert specs["slowpoke"].mode == "slow" and specs["slowpoke"].timeout_ms == 150
    assert specs["flaky-finance"].mode == "flaky"
    assert specs["picky"].mode == "normal" and specs["picky"].reject_rate == 0.6
    assert specs["hangman"].mode == "hang"
    assert specs["mailer"].ping_path is None and specs["mailer"].post_path == "/post"
    assert (specs["slowpoke"].port, specs["slowpoke"].ping_path) == (9902, "/slow/ping")


def test_ping_and_post_on_different_hosts_are_refused(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "buyers: [{id: x, ping_url: 'http://127.0.0.1:1/ping', post_url: 'http://127.0.0.1:2/post'}]"
    )
    with pytest.raises(ValueError, match="share host:port"):
        specs_from_config(tmp_path)


async def test_fleet_serves_the_configured_urls_and_checks_their_secrets(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    (tmp_path / "settings.yaml").write_text(SETTINGS)
    (tmp_path / "buyers.yaml").write_text(_buyers_yaml(port_a, port_b))
    specs = specs_from_config(tmp_path, bid_probability=1.0)
    ping = orjson.dumps({"ping_id": "p", "vertical": "auto_insurance", "lead": {}})
    async with await start_fleet(specs) as fleet, aiohttp.ClientSession() as http:
        assert fleet.ping_url("acme") == f"http://127.0.0.1:{port_a}/ping"
        headers = sign_headers("acme-default", ping)
        async with http.post(f"http://127.0.0.1:{port_a}/ping", data=ping, headers=headers) as r:
            assert r.status == 200 and (await r.json())["bid"] is True
        headers = sign_headers("plain", ping)
        async with http.post(
            f"http://127.0.0.1:{port_b}/slow/ping", data=ping, headers=headers
        ) as r:
            assert r.status == 200
        stats = fleet.stats()
    assert stats["acme"].pings == 1 and stats["slowpoke"].pings == 1
    assert stats["acme"].bad_signatures == 0 and stats["slowpoke"].bad_signatures == 0


def test_a_bench_config_with_a_daily_cap_caps_every_campaign_and_loads(tmp_path: Path) -> None:
    ready = {
        "buyers": {
            b: {
                "ping_url": f"http://127.0.0.1:9/{b}/ping",
                "post_url": f"http://127.0.0.1:9/{b}/post",
            }
            for b in ("b01", "b02")
        }
    }
    capped = load_config(write_config(tmp_path / "capped", ready, Timing(daily_cap=1_000_000)))
    plain = load_config(write_config(tmp_path / "plain", ready, Timing()))
    assert [(c.id, c.caps.daily) for b in capped.buyers for c in b.campaigns] == [
        ("b01-auto", 1_000_000),
        ("b02-auto", 1_000_000),
    ]
    assert [c.caps.daily for b in plain.buyers for c in b.campaigns] == [None, None]
