"""The site file's YAML loader: duplicate keys with both lines, alias bombs, alias cycles and deep
nesting are site-file errors (a ConfigError naming the line), found before anything walks the
data; and `check` says so without a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from facility_agent.config.loader import MAX_DEPTH, MAX_EXPANSION
from facility_agent.config.site import ConfigError, parse_site

SITE = """\
site:
  name: lab
devices:
  - id: ups-a
    driver: nut
    host: 127.0.0.1
    ups: ups-a
    interval: 1s
    interval: 5s
"""


def problems(text: str) -> list[str]:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_site(text, "site.yaml", env={})
    assert time.monotonic() - started < 5, "the loader must refuse before expanding anything"
    return [str(p) for p in info.value.problems]


def test_duplicate_keys_name_both_lines() -> None:
    assert problems(SITE) == [
        "devices[0].interval (line 9): duplicate key 'interval' (lines 8 and 9): keep one"
    ]


def test_every_duplicate_is_reported_at_every_level() -> None:
    text = textwrap.dedent(
        """\
        site:
          name: a
        site:
          name: b
        mqtt:
          host: x
          port: 1
          port: 2
        """
    )
    assert problems(text) == [
        "site (line 3): duplicate key 'site' (lines 1 and 3): keep one",
        "mqtt.port (line 8): duplicate key 'port' (lines 7 and 8): keep one",
    ]


def test_merge_keys_are_not_duplicates() -> None:
    text = "x: &d {interval: 1s}\nsite:\n  <<: *d\n  name: lab\n"
    assert all("duplicate" not in p for p in problems(text))  # only pydantic's complaints


def billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused() -> None:
    [problem] = problems(billion_laughs())
    assert f"aliases expand the file by more than {MAX_EXPANSION} values" in problem
    assert "a3 (line 4)" in problem  # 10^4 values: the first level past the bound


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    assert problems("site: &s {name: *s}\n") == [
        "site.name (line 1): an alias refers to a node that contains it"
    ]


@pytest.mark.parametrize("text", ["a: " + "[" * 5000 + "]" * 5000, "a: " + "{b: " * 3000 + "1"])
def test_deep_nesting_is_refused_before_composing(text: str) -> None:
    [problem] = problems(text)
    assert f"more than {MAX_DEPTH} levels deep" in problem or "not valid YAML" in problem


def test_nesting_through_aliases_is_refused() -> None:
    deep = "[" * 60 + "1" + "]" * 60
    text = f"a: &a {deep}\n" + "".join(
        f"b{i}: &b{i} {'[' * 60}*{'a' if i == 0 else f'b{i - 1}'}{']' * 60}\n" for i in range(30)
    )
    [problem] = problems(text)
    assert f"aliases nest values more than {MAX_DEPTH} levels deep" in problem


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a: " + "1" * 5000 + "\n", "4300 digits"),
        ("a: 2024-13-45\n", "month must be in 1..12"),
        ("? [a]\n: 1\n", "unhashable key"),
        ("a: !!python/object:os.system x\n", "could not determine a constructor"),
        ("site:\n  name: \x00\n", "character #x0000 is not allowed"),
    ],
)
def test_construction_errors_are_site_file_errors(text: str, why: str) -> None:
    [problem] = problems(text)
    assert "not valid YAML" in problem and why in problem
    if "#x0000" in why:
        assert "(line 2)" in problem


def test_check_reports_duplicates_without_a_traceback(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    for path, expected in ((site, "lines 8 and 9"), (bomb, "alias bomb")):
        run = subprocess.run(
            [sys.executable, "-m", "facility_agent.cli", "check", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = run.stdout + run.stderr
        assert run.returncode != 0 and expected in out and "Traceback" not in out


@pytest.mark.parametrize("driver", ["snmp", "modbus"])
def test_a_profile_name_too_long_for_the_file_system_is_a_site_error(driver: str) -> None:
    """Found by bench/fuzz.py: ENAMETOOLONG from the bundled-profile lookup was a traceback."""
    text = f"devices: [{{id: a, driver: {driver}, host: h, profile: up{'9' * 300}}}]\n"
    assert any("devices[0].profile (line 1)" in p and "profile" in p for p in problems(text))
