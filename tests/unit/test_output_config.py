"""The output sections of the site file: typed, optional, secrets kept secret; the wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from facility_agent.config.outputs import OutboxConfig, redact_url
from facility_agent.config.site import ConfigError, parse_site
from facility_agent.sinks.assemble import build_outputs, feeds_from

SITE = """
site: lab1
state_dir: {state}
mqtt: {{host: 127.0.0.1, homeassistant: {{enabled: true}}}}
influxdb: {{url: "http://127.0.0.1:8086", token: "${{TOKEN}}", org: site, bucket: facility}}
prometheus: {{listen: "127.0.0.1:0"}}
notify:
  - {{url: "matrix://bot:${{PW}}@127.0.0.1:8008/#alerts", min_severity: critical,
     allow_commands: ["@alice:localhost"]}}
  - {{url: "mailto://127.0.0.1:2525?to=ops@example.com", name: mail, group_wait: 500ms}}
outbox: {{max_bytes: 64MB, max_age: 24h}}
topology: {{pdu-a: [ups-a], srv-01: [pdu-a, pdu-b]}}
"""


def test_sections_are_typed_and_secrets_hidden(tmp_path: Path) -> None:
    env = {"TOKEN": "tok-123", "PW": "hunter2"}
    cfg = parse_site(SITE.format(state=tmp_path), env=env)
    assert cfg.influxdb is not None and cfg.influxdb.token is not None
    assert cfg.influxdb.token.get_secret_value() == "tok-123"
    assert "tok-123" not in repr(cfg) and "hunter2" not in repr(cfg)
    assert cfg.notify is not None and cfg.notify[0].min_severity == "critical"
    assert cfg.notify[1].group_wait == 0.5 and cfg.notify[1].name == "mail"
    assert cfg.outbox.max_bytes == 64 * 1000**2 and cfg.outbox.max_age == 86400
    assert cfg.mqtt is not None and cfg.mqtt.homeassistant.enabled
    assert cfg.prometheus is not None and cfg.prometheus.port == 0


def test_all_optional() -> None:
    cfg = parse_site("site: lab1\n")
    assert cfg.influxdb is None and cfg.prometheus is None and cfg.notify is None
    assert cfg.outbox.enabled and cfg.outbox.path is None


def test_bad_values_are_reported_with_their_path() -> None:
    text = """
site: lab1
influxdb: {url: "ftp://x", bucket: b}
prometheus: {listen: "everywhere"}
notify: [{url: "json://x", min_severity: loud, colour: red}]
outbox: {max_bytes: lots}
"""
    with pytest.raises(ConfigError) as err:
        parse_site(text)
    paths = {p.path for p in err.value.problems}
    assert {"influxdb.url", "prometheus.listen", "notify[0].min_severity"} <= paths
    assert {"notify[0].colour", "outbox.max_bytes"} <= paths


def test_redact_url_keeps_no_credentials() -> None:
    assert (
        redact_url("matrix://bot:hunter2@m.example.org:8448/#a") == "matrix://m.example.org:8448/…"
    )
    assert redact_url("tgram://123456:ABC-secret/456") == "tgram://…"
    assert redact_url("slack://TA/TB/TC") == "slack://…"
    assert "tok" not in redact_url("https://h/x?token=tok")


def test_sizes() -> None:
    assert OutboxConfig(max_bytes="1GiB").max_bytes == 1024**3
    assert OutboxConfig(max_bytes="512MB").max_bytes == 512 * 1000**2
    assert OutboxConfig(max_bytes=65536).max_bytes == 65536
    for bad in ("many", 100):
        with pytest.raises(ValidationError):
            OutboxConfig(max_bytes=bad)


def test_topology_becomes_feeds() -> None:
    feeds = feeds_from({"pdu-a": ["ups-a"], "srv-01": ["pdu-a", "pdu-b"]})
    assert feeds == {"ups-a": ["pdu-a"], "pdu-a": ["srv-01"], "pdu-b": ["srv-01"]}


def test_build_outputs_shares_one_outbox(tmp_path: Path) -> None:
    cfg = parse_site(SITE.format(state=tmp_path), env={"TOKEN": "t", "PW": "p"})
    sinks = build_outputs(cfg)
    names = [getattr(s, "name", "") for s in sinks]
    assert names == ["mqtt", "influxdb", "notify", "prometheus"]
    boxes = {id(getattr(s, "outbox", None)) for s in sinks}
    assert len(boxes) == 1
    assert sinks[1].outbox.path == tmp_path / "outbox.sqlite"  # type: ignore[attr-defined]
