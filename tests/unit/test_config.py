"""Site-file validation: good files load; each kind of bad input is reported with its key path
and line, all problems at once, never a traceback, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facility_agent.config.site import ConfigError, load_site, parse_site
from facility_agent.core.driver import DeviceConfig, Driver
from facility_agent.core.model import Sample


class _FakeDriver(Driver):
    name = "fake"

    async def poll(self) -> Sample:  # pragma: no cover - never polled here
        raise NotImplementedError


def drivers() -> dict[str, type[Driver]]:
    return {"fake": _FakeDriver}


def parse(text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_site(textwrap.dedent(text), "site.yaml", env=env or {}, drivers=drivers)


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return [str(p) for p in info.value.problems]


def test_minimal_site_loads_with_defaults() -> None:
    site = parse(
        """
        site: lab1
        mqtt: {host: 127.0.0.1}
        devices:
          - {id: ups-a, driver: fake, interval: 500ms}
          - {id: ups-b, driver: fake, interval: 2}
          - {id: ups-c, driver: fake, interval: 1m, timeout: 2s}
        """
    )
    assert site.site == "lab1"
    assert site.mqtt is not None
    assert site.mqtt.port == 1883 and site.mqtt.prefix == "facility"
    assert site.mqtt.heartbeat == 60.0
    assert [d.interval for d in site.devices] == [0.5, 2.0, 60.0]
    assert site.devices[0].poll_timeout == 0.5
    assert site.devices[2].poll_timeout == 2.0
    assert isinstance(site.devices[0], DeviceConfig)


def test_every_problem_is_listed_with_path_and_line() -> None:
    found = problems(
        """
        site: Lab 1
        mqtt:
          host: 127.0.0.1
          port: not-a-port
          colour: blue
        devices:
          - id: ups-a
            driver: fake
            interval: soon
          - id: ups-a
            driver: fake
          - id: x
            driver: nosuch
          - driver: fake
        """
    )
    assert found == [
        "site (line 2): may only hold lowercase letters, digits, '-' and '_'",
        "mqtt.port (line 5): Input should be a valid integer, unable to parse string as an integer",
        "mqtt.colour (line 6): unknown key",
        "devices[0].interval (line 10): 'soon' is not a duration: use a number of "
        "seconds or '500ms', '2s', '1m', '1h'",
        "devices[1].id (line 11): duplicate device id 'ups-a' (also devices[0])",
        "devices[2].driver (line 14): unknown driver 'nosuch' (installed: fake)",
        "devices[3].id (line 15): required key is missing",
    ]


def test_yaml_syntax_error_gives_line() -> None:
    found = problems("site: lab1\ndevices: [\n  {id: a\n")
    assert len(found) == 1
    assert "not valid YAML" in found[0] and "line" in found[0]


def test_not_a_mapping() -> None:
    assert problems("- a\n- b\n") == [
        "<file> (line 1): the site file must be a mapping (site:, devices: ...)"
    ]


def test_env_secret_is_substituted_and_never_shown() -> None:
    site = parse(
        """
        site: lab1
        mqtt: {host: 127.0.0.1, username: agent, password: "${MQTT_PW}"}
        """,
        env={"MQTT_PW": "s3cret-value"},
    )
    assert site.mqtt is not None and site.mqtt.password is not None
    assert site.mqtt.password.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(site)
    assert "s3cret-value" not in str(site.model_dump())


def test_missing_env_secret_names_the_variable() -> None:
    assert problems(
        """
        site: lab1
        mqtt: {host: 127.0.0.1, password: "${MQTT_PW}"}
        """
    ) == [
        "mqtt.password (line 3): environment variable MQTT_PW is not set (export it, or "
        "for the service put MQTT_PW=... in /etc/facility-agent/env)"
    ]


def test_file_secret(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    (tmp_path / "site.yaml").write_text("site: lab1\nmqtt: {host: h, password: '${file:pw}'}\n")
    site = load_site(tmp_path / "site.yaml", env={})
    assert site.mqtt is not None and site.mqtt.password is not None
    assert site.mqtt.password.get_secret_value() == "from-file"


def test_literal_dollar_brace_is_escaped() -> None:
    site = parse("site: lab1\nmqtt: {host: h, username: '$${NOT_A_VAR}'}\n")
    assert site.mqtt is not None and site.mqtt.username == "${NOT_A_VAR}"


def test_bad_prefix_and_tls_flag() -> None:
    site = parse("site: lab1\nmqtt: {host: h, tls: true}\n")
    assert site.mqtt is not None and site.mqtt.tls is not None
    assert problems("site: lab1\nmqtt: {host: h, prefix: 'a/#'}\n")[0].startswith("mqtt.prefix")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_site(tmp_path / "missing.yaml")
    assert "cannot read the file" in info.value.render()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facility_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "site: lab1\nmqtt: {host: 127.0.0.1}\n"
        "devices:\n  - {id: ups-a, driver: nut, host: 127.0.0.1, ups: ups-a}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: lab1\ndevices:\n  - {id: ups-a, driver: nut, port: x}\n")
    ok = _cli("check", "-c", str(good))
    assert ok.returncode == 0, ok.stderr
    failed = _cli("check", "-c", str(bad))
    assert failed.returncode == 1
    assert "devices[0].port (line 3)" in failed.stderr
    assert "devices[0].host (line 3): required key is missing" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert _cli("check").returncode == 1  # missing -c is invalid input too


def test_bundled_example_site_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    example = str(root / "config" / "site.example.yaml")
    secrets = {"INFLUX_TOKEN": "t", "MATRIX_PW": "m", "SMTP_PW": "s", "NUT_PASSWORD": "n"}
    result = subprocess.run(
        [sys.executable, "-m", "facility_agent.cli", "check", "-c", example],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **secrets},
    )
    assert result.returncode == 0, result.stderr
    # Without the secrets it names each missing variable, and only its name.
    bare = {k: v for k, v in os.environ.items() if k not in secrets}
    missing = subprocess.run(
        [sys.executable, "-m", "facility_agent.cli", "check", "-c", example],
        capture_output=True,
        text=True,
        timeout=60,
        env=bare,
    )
    assert missing.returncode == 1
    assert "environment variable INFLUX_TOKEN is not set" in missing.stderr


def test_sections_is_not_a_key_of_the_file() -> None:
    """SiteConfig.sections holds what drivers' own top-level sections (traps:) parsed to; a
    `sections:` key in the file is a mistake to report, not to drop silently."""
    found = problems("site: lab1\nsections: {traps: {listen: '0.0.0.0:162'}}\ndevices: []\n")
    assert found == ["sections (line 2): unknown key (drivers' own sections: none)"]
