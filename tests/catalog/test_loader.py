"""The config dir: merged files, ${ENV} references, and errors that name file and key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.catalog import Catalog, ConfigError, hash_api_key, load_config

ROOT = Path(__file__).resolve().parents[2]

VERTICALS = """
verticals:
  auto_insurance:
    floor: "2.00"
    fields:
      age: {type: int, min: 16, max: 100, required: true, ping: true}
      credit: {type: enum, values: [excellent, good, fair, poor], ping: true}
      state_of_mind: {type: str}
"""

PUBLISHERS = f"""
publishers:
  - id: pub-1
    api_key_sha256: "{hash_api_key("k1")}"
    payout: {{revshare: "0.70"}}
"""


def write(tmp: Path, **files: str) -> Path:
    for name, text in files.items():
        (tmp / f"{name}.yaml").write_text(text)
    return tmp


def buyers(campaign_extra: str = "", secret: str = "s3cret-value") -> str:
    return f"""
buyers:
  - id: acme
    secret: {secret}
    ping_url: http://127.0.0.1:9001/ping
    post_url: http://127.0.0.1:9001/post
    campaigns:
      - id: acme-auto
        vertical: auto_insurance
{campaign_extra}
"""


def issues(tmp: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(tmp)
    return [str(i) for i in info.value.issues]


def test_the_example_config_loads() -> None:
    catalog = Catalog.load(ROOT / "config")
    assert set(catalog.verticals) == {"auto_insurance", "mortgage", "solar", "debt"}
    assert catalog.publisher_for_key("pub-1-demo-key") is not None
    assert catalog.publisher_for_key("wrong") is None
    assert catalog.targets["directmail-mortgage"].buyer.ping_url is None


def test_files_merge_and_money_is_cents(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, v=VERTICALS, p=PUBLISHERS, b=buyers()))
    assert config.verticals["auto_insurance"].floor == 200
    assert config.buyers[0].campaigns[0].id == "acme-auto"


def test_env_references_resolve_with_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_SECRET_T", "from-the-env-123")
    write(tmp_path, v=VERTICALS, p=PUBLISHERS, b=buyers(secret="${ACME_SECRET_T}"))
    assert load_config(tmp_path).buyers[0].secret == "from-the-env-123"
    write(tmp_path, b=buyers(secret="${NOT_SET_ANYWHERE_X:-fallback-secret}"))
    assert load_config(tmp_path).buyers[0].secret == "fallback-secret"


def test_missing_env_is_named(tmp_path: Path) -> None:
    write(tmp_path, v=VERTICALS, p=PUBLISHERS, b=buyers(secret="${NOT_SET_ANYWHERE_Y}"))
    found = issues(tmp_path)
    assert any(
        "b.yaml" in i and "buyers.[0].secret" in i and "NOT_SET_ANYWHERE_Y" in i for i in found
    ), found


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        (
            "        caps: {daily: -1}",
            "buyers[acme].campaigns[acme-auto].caps.daily",
            "greater than",
        ),
        (
            "        filters: {rules: [{field: shoe_size, op: eq, value: 3}]}",
            "buyers[acme].campaigns[acme-auto].filters.rules[0]",
            "unknown field 'shoe_size'",
        ),
        (
            "        filters: {rules: [{field: credit, op: gt, value: 3}]}",
            "buyers[acme].campaigns[acme-auto].filters.rules[0]",
            "numeric field",
        ),
        (
            "        filters: {rules: [{field: age, op: sideways, value: 3}]}",
            "buyers[acme].campaigns[acme-auto].filters.rules[0].op",
            "Input should be",
        ),
        (
            "        filters: {rules: [{field: credit, op: in, value: [great]}]}",
            "buyers[acme].campaigns[acme-auto].filters.rules[0]",
            "not one of",
        ),
        (
            "        filters: {states: [CA, XX]}",
            "buyers[acme].campaigns[acme-auto].filters.states",
            "XX",
        ),
        (
            "        filters: {radius: {zip: '00000', miles: 5}}",
            "buyers[acme].campaigns[acme-auto].filters.radius.zip",
            "unknown",
        ),
        (
            "        schedule: {tz: Mars/Olympus, hours: '08:00-20:00'}",
            "buyers[acme].campaigns[acme-auto].schedule.tz",
            "unknown time zone",
        ),
        (
            "        schedule: {hours: '20:00-08:00'}",
            "buyers[acme].campaigns[acme-auto].schedule.hours",
            "increasing",
        ),
        ("        price: 'ten dollars'", "buyers[acme].campaigns[acme-auto].price", "decimal"),
        (
            "        vertical_typo: 1",
            "buyers[acme].campaigns[acme-auto].vertical_typo",
            "Extra inputs",
        ),
    ],
)
def test_each_error_names_file_and_key(tmp_path: Path, extra: str, key: str, words: str) -> None:
    write(tmp_path, v=VERTICALS, p=PUBLISHERS, b=buyers(extra))
    found = issues(tmp_path)
    assert any(i.startswith("b.yaml: ") and key in i and words in i for i in found), found


def test_cross_file_problems(tmp_path: Path) -> None:
    dup = PUBLISHERS.replace(
        "publishers:\n",
        'publishers:\n  - id: pub-1\n    api_key_sha256: "'
        + "0" * 64
        + "\"\n    payout: {fixed: '8.00'}\n",
    )
    write(
        tmp_path,
        v=VERTICALS,
        p=dup,
        b=buyers().replace("vertical: auto_insurance", "vertical: boats"),
    )
    found = issues(tmp_path)
    assert any("p.yaml" in i and "publisher id 'pub-1' is used twice" in i for i in found), found
    assert any("b.yaml" in i and "unknown vertical 'boats'" in i for i in found), found


def test_post_only_buyer_needs_a_price(tmp_path: Path) -> None:
    text = buyers().replace("    ping_url: http://127.0.0.1:9001/ping\n", "")
    write(tmp_path, v=VERTICALS, p=PUBLISHERS, b=text)
    assert any("needs a fixed 'price'" in i for i in issues(tmp_path))


def test_bad_yaml_and_unknown_section(tmp_path: Path) -> None:
    write(tmp_path, v=VERTICALS, p=PUBLISHERS, b="buyers: [\n", x="sellers: []\n")
    found = issues(tmp_path)
    assert any(i.startswith("b.yaml: (top): not valid YAML") for i in found), found
    assert any(i.startswith("x.yaml: sellers: unknown section") for i in found), found


def test_check_config_command(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "check-config", str(ROOT / "config")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    write(tmp_path, v=VERTICALS, p=PUBLISHERS, b=buyers("        caps: {daily: -1}"))
    bad = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "check-config", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "b.yaml: buyers[acme].campaigns[acme-auto].caps.daily:" in bad.stderr
    assert "1 error(s)" in bad.stderr
    # No DIR: ./config of the folder it runs in (SPEC §1), here the broken one.
    (tmp_path / "config").mkdir()
    for part in tmp_path.glob("*.yaml"):
        part.rename(tmp_path / "config" / part.name)
    default = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "EXCHANGE_CONFIG_DIR"},
    )
    assert default.returncode == 1 and "1 error(s)" in default.stderr, default.stderr


def test_an_overflowing_amount_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    write(tmp_path, v=VERTICALS.replace('"2.00"', '"1e999999"'), p=PUBLISHERS, b=buyers())
    found = issues(tmp_path)
    assert len(found) == 1 and "floor" in found[0] and "implausibly large" in found[0], found
