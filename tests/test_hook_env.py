"""Hooks and `run:` steps see a minimal environment: never the agent's secrets.

Each command here is a real process that dumps its whole environment to a file; the agent's
environment holds secrets (`MATRIX_PW`, `INFLUX_TOKEN`) that must not be in it unless the hook's
own `env:` key names them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from facility_agent.actions.hooks import BASE_ENV, run_hook
from facility_agent.config.policy import HookConfig, StepConfig
from facility_agent.config.site import ConfigError, parse_site

from .test_policy_engine import _world, make_site, outage, started  # noqa: F401  (fixture)

SECRETS = {"MATRIX_PW": "m@trix/pw+1", "INFLUX_TOKEN": "infl ux/tok+2", "NUT_PASSWORD": "n!ut"}
PLAIN = {"TZ": "Europe/Paris", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "HOME": "/root"}


def env_dumper(tmp_path: Path, name: str) -> list[str]:
    """A command that writes its whole environment, as JSON, to NAME.env."""
    script = tmp_path / f"{name}.py"
    script.write_text(
        "import json, os, sys\n"
        "sys.stdin.read()\n"
        f"open({str(tmp_path / (name + '.env'))!r}, 'w').write(json.dumps(dict(os.environ)))\n"
    )
    return [sys.executable, str(script)]


def dumped(tmp_path: Path, name: str) -> dict[str, str]:
    got: dict[str, str] = json.loads((tmp_path / f"{name}.env").read_text())
    return got


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**SECRETS, **PLAIN, "SOME_OTHER": "x", "FACILITY_AGENT_X": "y"}.items():
        monkeypatch.setenv(key, value)


def assert_minimal(env: dict[str, str], allowed: set[str]) -> None:
    unexpected = {
        k
        for k in env
        if k not in BASE_ENV and not k.startswith(("LC_", "FACILITY_")) and k not in allowed
    }
    # The interpreter itself may add a few of its own (none here on Linux, but be exact about
    # what came from the agent): nothing else from the agent's environment got through.
    assert not unexpected, unexpected
    for key in set(SECRETS) - allowed:
        assert key not in env
    assert not any(v in env.values() for k, v in SECRETS.items() if k not in allowed)


async def test_hook_gets_base_event_and_named_variables_only(
    tmp_path: Path, agent_env: None
) -> None:
    event = {"id": "01J", "type": "power.on_battery", "device": "ups-a", "data": {"x": 1}}
    result = await run_hook(
        env_dumper(tmp_path, "h"), timeout=10, event=event, pass_env=["INFLUX_TOKEN", "UNSET_ONE"]
    )
    assert result.ok, result.describe()
    env = dumped(tmp_path, "h")
    assert_minimal(env, {"INFLUX_TOKEN"})
    assert env["INFLUX_TOKEN"] == SECRETS["INFLUX_TOKEN"]
    assert "UNSET_ONE" not in env
    for key, value in PLAIN.items():
        assert env[key] == value
    assert env["PATH"]
    assert env["FACILITY_EVENT_TYPE"] == "power.on_battery" and env["FACILITY_DEVICE"] == "ups-a"
    # The agent's own FACILITY_* are not the event's: not passed unless named.
    assert "FACILITY_AGENT_X" not in env


async def test_hook_without_env_key_gets_no_secret(tmp_path: Path, agent_env: None) -> None:
    result = await run_hook(env_dumper(tmp_path, "bare"), timeout=10, event={"type": "t"})
    assert result.ok, result.describe()
    env = dumped(tmp_path, "bare")
    assert_minimal(env, set())
    assert "SOME_OTHER" not in env


async def test_engine_hooks_and_plan_steps_pass_their_env_key(
    tmp_path: Path, agent_env: None
) -> None:
    """Through the site file: a hook naming MATRIX_PW, a plan step naming NUT_PASSWORD, and a
    second hook naming nothing, all run by the real policy engine during an outage."""
    hooks = [
        {"events": ["power.on_battery"], "run": env_dumper(tmp_path, "named"), "env": "MATRIX_PW"},
        {"events": ["power.on_battery"], "run": env_dumper(tmp_path, "none")},
    ]
    shutdown: dict[str, Any] = make_site(tmp_path).shutdown.model_dump()
    shutdown["stages"] = [
        {
            "name": "apps",
            "steps": [{"run": env_dumper(tmp_path, "step"), "env": ["NUT_PASSWORD"]}],
        }
    ]
    agent, rec = await started(tmp_path, hooks=hooks, shutdown=shutdown)
    try:
        outage()
        await rec.wait("shutdown.completed", 15)
        for _ in range(250):
            if rec.types().count("hook.ok") >= 2:
                break
            await __import__("asyncio").sleep(0.02)
        assert rec.types().count("hook.ok") >= 2, rec.types()
    finally:
        await agent.stop()
    named, none, step = (dumped(tmp_path, n) for n in ("named", "none", "step"))
    assert_minimal(named, {"MATRIX_PW"})
    assert named["MATRIX_PW"] == SECRETS["MATRIX_PW"]
    assert_minimal(none, set())
    assert_minimal(step, {"NUT_PASSWORD"})
    assert step["NUT_PASSWORD"] == SECRETS["NUT_PASSWORD"]
    assert step["FACILITY_EVENT_TYPE"] == "shutdown.started"


async def test_a_secret_the_hook_prints_is_masked_in_its_output(
    tmp_path: Path, agent_env: None
) -> None:
    from facility_agent.config import secrets

    secrets.remember(SECRETS["MATRIX_PW"])
    script = tmp_path / "echo.py"
    script.write_text("import os\nprint('login failed with', os.environ['MATRIX_PW'])\n")
    result = await run_hook([sys.executable, str(script)], timeout=10, pass_env=["MATRIX_PW"])
    assert result.ok and result.output.strip() == "login failed with ***", result.output


def test_env_key_is_validated() -> None:
    assert HookConfig.model_validate({"events": "*", "run": ["x"], "env": "A_B"}).env == ["A_B"]
    assert HookConfig.model_validate({"events": "*", "run": ["x"]}).env == []
    with pytest.raises(ValueError, match="not an environment variable name"):
        HookConfig.model_validate({"events": "*", "run": ["x"], "env": ["A=B"]})
    with pytest.raises(ValueError, match="only applies to a run: step"):
        StepConfig.model_validate({"wait": 1, "env": ["A"]})
    with pytest.raises(ConfigError, match=r"hooks\[0\]\.env"):
        parse_site(
            "site: s\nhooks: [{events: '*', run: [x], env: ['1BAD']}]\n", "site.yaml", env={}
        )
