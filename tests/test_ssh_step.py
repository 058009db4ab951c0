"""`ssh:` steps against a real OpenSSH server on loopback (tests/fixtures/sshd.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from facility_agent.config.policy import StageConfig, StepConfig
from facility_agent.core.driver import Driver
from facility_agent.core.model import Event, Sample, utcnow
from facility_agent.policy.journal import Journal
from facility_agent.policy.plan import PlanRunner, StepContext, execute_step
from tests.fixtures.procs import free_port, wait_until
from tests.fixtures.sshd import PasswordSshd, Sshd, keygen


def ssh_step(server: Sshd, tmp: Path, run: list[str], **ssh: Any) -> StepConfig:
    known = ssh.pop("known_hosts_file", None) or server.known_hosts(tmp / "known_hosts")
    body = {
        "host": "127.0.0.1",
        "port": server.port,
        "user": "root",
        "run": run,
        "known_hosts_file": str(known),
        "key_file": str(server.client_key),
        "connect_timeout": 5,
        **ssh,
    }
    return StepConfig.model_validate({"ssh": body, "timeout": 20})


def run_step(step: StepConfig, **ctx: Any) -> tuple[bool, str]:
    return asyncio.run(execute_step(step, StepContext({}, **ctx)))


def test_argv_is_quoted_for_the_remote_shell(sshd_server: Sshd, tmp_path: Path) -> None:
    argv = ["echo", "a b; touch /tmp/pwned", "$(id)"]
    ok, detail = run_step(ssh_step(sshd_server, tmp_path, argv))
    assert ok, detail
    assert "exit 0" in detail
    assert sshd_server.asked == [shlex.join(argv)]


def test_exit_status_judges_success(sshd_server: Sshd, tmp_path: Path) -> None:
    ok, detail = run_step(ssh_step(sshd_server, tmp_path, ["false"]))
    assert not ok
    assert "root@127.0.0.1" in detail and "exit 1" in detail


def test_poweroff_dropping_the_connection(sshd_server: Sshd, tmp_path: Path) -> None:
    argv = ["systemctl", "poweroff"]
    ok, detail = run_step(ssh_step(sshd_server, tmp_path, argv, success="disconnect"))
    assert ok, detail
    ok, detail = run_step(ssh_step(sshd_server, tmp_path, argv))
    assert not ok, detail
    assert sshd_server.asked == ["systemctl poweroff"] * 2


def test_refused_key(sshd_server: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "stranger"
    keygen(other)
    step = ssh_step(sshd_server, tmp_path, ["true"], key=other.read_text(), key_file=None)
    ok, detail = run_step(step)
    assert not ok
    assert "authentication refused" in detail and str(sshd_server.port) in detail
    assert "PRIVATE" not in detail
    assert sshd_server.asked == []


def test_changed_host_key_is_refused_and_critical(sshd_server: Sshd, tmp_path: Path) -> None:
    impostor = keygen(tmp_path / "impostor")
    known = sshd_server.known_hosts(tmp_path / "known_hosts", impostor)
    before = known.read_text()
    alerts: list[tuple[str, str, str]] = []
    for policy in ("strict", "accept-new"):
        step = ssh_step(sshd_server, tmp_path, ["true"], known_hosts_file=known, known_hosts=policy)
        ok, detail = run_step(step, alert=lambda *a: alerts.append(a))
        assert not ok
        assert "host key does not match" in detail
    assert [(a[0], a[1]) for a in alerts] == [("127.0.0.1", "ssh.host_key_changed")] * 2
    assert known.read_text() == before, "a changed key must never be recorded"
    assert sshd_server.asked == []


def test_unknown_host_strict_then_accept_new(sshd_server: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    ok, detail = run_step(ssh_step(sshd_server, tmp_path, ["true"], known_hosts_file=known))
    assert not ok and "host key unknown" in detail
    assert sshd_server.asked == [] and not known.exists()
    step = ssh_step(
        sshd_server, tmp_path, ["true"], known_hosts_file=known, known_hosts="accept-new"
    )
    ok, detail = run_step(step)
    assert ok, detail
    recorded = known.read_text()
    assert recorded.startswith(f"[127.0.0.1]:{sshd_server.port} ssh-ed25519 ")
    assert sshd_server.host_pub.split()[1] in recorded
    # Recorded once: from now on the strict check passes.
    ok, detail = run_step(ssh_step(sshd_server, tmp_path, ["true"], known_hosts_file=known))
    assert ok, detail
    assert known.read_text() == recorded


def test_unreachable_host(sshd_server: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    port = free_port()
    known.write_text(f"[127.0.0.1]:{port} {' '.join(sshd_server.host_pub.split()[:2])}\n")
    step = ssh_step(sshd_server, tmp_path, ["true"], known_hosts_file=known, port=port)
    started = time.monotonic()
    ok, detail = run_step(step)
    assert not ok
    assert f"root@127.0.0.1:{port}: unreachable" in detail
    assert time.monotonic() - started < 10


def test_dry_run_touches_nothing(sshd_server: Sshd, tmp_path: Path) -> None:
    ok, detail = run_step(ssh_step(sshd_server, tmp_path, ["systemctl", "poweroff"]), dry_run=True)
    assert ok
    assert detail == f"dry run: would run on root@127.0.0.1:{sshd_server.port}: systemctl poweroff"
    assert sshd_server.asked == []


def test_many_hosts_in_parallel_in_one_stage(sshd_server: Sshd, tmp_path: Path) -> None:
    steps = [ssh_step(sshd_server, tmp_path, ["sleep", "2"]) for _ in range(4)]
    journal = Journal(tmp_path / "j.sqlite")
    run_id = journal.start_run("shutdown", "test")
    runner = PlanRunner(journal, run_id, [StageConfig(name="hosts", steps=steps)], StepContext({}))
    started = time.monotonic()
    assert asyncio.run(runner.run())
    took = time.monotonic() - started
    assert sshd_server.asked == ["sleep 2"] * 4
    assert took < 7.5, f"4 x 2 s in parallel took {took:.1f} s"
    assert [s.state for s in journal.steps(run_id)] == ["done"] * 4


def test_secrets_stay_out_of_logs(
    sshd_server: Sshd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_text = sshd_server.client_key.read_text()
    caplog.set_level(logging.DEBUG)
    step = ssh_step(sshd_server, tmp_path, ["true"], key=key_text, key_file=None)
    ok, detail = run_step(step)
    assert ok, detail
    body = key_text.splitlines()[1]
    assert body not in caplog.text and body not in detail and body not in repr(step)


CHILD = """
import asyncio, sys
from facility_agent.config.policy import StageConfig, StepConfig
from facility_agent.policy.journal import Journal
from facility_agent.policy.plan import PlanRunner, StepContext
import json
stages = [StageConfig.model_validate(s) for s in json.loads(sys.argv[2])]
j = Journal(sys.argv[1])
rid = j.start_run("shutdown", "test")
asyncio.run(PlanRunner(j, rid, stages, StepContext({})).run())
"""


def test_kill_9_mid_ssh_step_neither_repeats_nor_skips(sshd_server: Sshd, tmp_path: Path) -> None:
    """The agent dies while the host runs its command: on resume the step is recorded as
    interrupted (never sent twice: `resume: skip` is the default for ssh:), and the plan goes on
    with the next stage."""
    first = ssh_step(sshd_server, tmp_path, ["sleep", "30"])
    after = ssh_step(sshd_server, tmp_path, ["echo", "next"])
    stages = [
        StageConfig(name="hosts", steps=[first]),
        StageConfig(name="after", steps=[after]),
    ]
    import json

    data = json.dumps([s.model_dump(mode="json") for s in stages])
    # model_dump hides SecretStr; this plan uses key_file, so nothing is lost.
    db = tmp_path / "j.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), data],
        cwd=Path(__file__).parent.parent,
        start_new_session=True,
    )
    try:
        wait_until(lambda: sshd_server.asked == ["sleep 30"], 20, "the ssh step")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    journal = Journal(db)
    run = journal.unfinished("shutdown")
    assert run is not None
    assert [s.state for s in journal.steps(run.id)] == ["started"]
    runner = PlanRunner(journal, run.id, stages, StepContext({}))
    assert asyncio.run(runner.run(resume=True))
    states = {(s.stage, s.step): s.state for s in journal.steps(run.id)}
    assert states == {(0, 0): "interrupted", (1, 0): "done"}
    assert sshd_server.asked == ["sleep 30", "echo next"]


def test_password_refused_and_never_shown(
    sshd_server: Sshd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    step = ssh_step(sshd_server, tmp_path, ["true"], key_file=None, password="hunter2-not-logged")
    ok, detail = run_step(step)
    assert not ok and "authentication refused" in detail
    assert "hunter2" not in detail and "hunter2" not in caplog.text and "hunter2" not in repr(step)
    assert sshd_server.asked == []


def test_site_file_key_from_a_secret_file(sshd_server: Sshd, tmp_path: Path) -> None:
    from facility_agent.config.site import parse_site

    known = sshd_server.known_hosts(tmp_path / "known_hosts")
    text = f"""\
site: s
devices:
  - {{id: ups-a, driver: nut, host: 127.0.0.1, ups: ups}}
groups: [{{id: ups, members: [ups-a]}}]
shutdown:
  group: ups
  stages:
    - name: hosts
      steps:
        - ssh:
            host: 127.0.0.1
            port: {sshd_server.port}
            run: [echo, from-site]
            key: "${{file:{sshd_server.client_key}}}"
            known_hosts_file: {known}
"""
    site = parse_site(text, "site.yaml", env={})
    assert site.shutdown is not None
    step = site.shutdown.stages[0].steps[0]
    assert step.kind == "ssh" and step.label == "ssh 127.0.0.1: echo from-site"
    ok, detail = run_step(step)
    assert ok, detail
    assert sshd_server.asked == ["echo from-site"]
    with pytest.raises(ValueError, match="undo: is a device action"):
        StepConfig.model_validate({"ssh": step.ssh, "undo": "power_on"})


def test_connect_timeout_on_a_host_that_never_answers(sshd_server: Sshd, tmp_path: Path) -> None:
    """A port that accepts and then says nothing (a hung host): the step fails after
    connect_timeout, naming the host, instead of hanging for the step's timeout."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {' '.join(sshd_server.host_pub.split()[:2])}\n")
        step = ssh_step(
            sshd_server, tmp_path, ["true"], known_hosts_file=known, port=port, connect_timeout=1
        )
        started = time.monotonic()
        ok, detail = run_step(step)
        took = time.monotonic() - started
    assert not ok
    assert detail.startswith(f"root@127.0.0.1:{port}:"), detail
    assert detail.endswith("no connection within 1 s"), detail
    assert took < 10, took


class _OutageUps(Driver):
    """A UPS whose status the password test sets (`_OutageUps.status`)."""

    name = "world"
    status = "OL"

    async def poll(self) -> Sample:
        metrics = {"battery.charge": 90, "battery.runtime": 3000}
        return Sample(self.config.id, utcnow(), (_OutageUps.status,), metrics)


async def test_password_login_from_a_secret_succeeds_and_is_never_shown(
    sshd_password: PasswordSshd,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Password auth against real sshd (its own system user, password set by chpasswd), the
    password from `${SSH_PASSWORD}` in the site file, run by the agent's plan: the login
    works, and the password is in no log record, event, journal or step detail."""
    from facility_agent.config import parse_site
    from facility_agent.runtime import agent as agent_module
    from facility_agent.runtime.agent import Agent
    from tests.test_policy_site import until

    server, user, password = sshd_password.sshd, sshd_password.user, sshd_password.password
    known = server.known_hosts(tmp_path / "known_hosts")
    monkeypatch.setattr(agent_module, "driver_class", lambda name: _OutageUps)
    _OutageUps.status = "OL"
    text = f"""\
site: pwtest
state_dir: {tmp_path / "state"}
devices:
  - {{id: ups-a, driver: world, interval: 100ms, jitter: 0}}
groups: [{{id: ups, members: [ups-a], hold: 100ms}}]
shutdown:
  group: ups
  triggers: {{on_battery_for: 200ms, hold: 100ms, runtime_margin: null}}
  stages:
    - name: hosts
      steps:
        - ssh:
            host: 127.0.0.1
            port: {server.port}
            user: {user}
            run: [echo, via-password]
            password: "${{SSH_PASSWORD}}"
            known_hosts_file: {known}
"""
    site = parse_site(
        text, "site.yaml", env={"SSH_PASSWORD": password}, drivers=lambda: {"world": _OutageUps}
    )
    caplog.set_level(logging.DEBUG)
    agent = Agent(site, sinks=[])
    events: list[Event] = []
    agent.on_event(events.append)
    await agent.start()
    try:
        await until(lambda: "ups-a" in agent.state.all(), 10, "first poll")
        _OutageUps.status = "OB"
        await until(lambda: any(e.type.startswith("shutdown.c") for e in events), 30, "the plan")
    finally:
        await agent.stop()
    steps = [e for e in events if e.type == "shutdown.step"]
    assert len(steps) == 1 and steps[0].data["ok"], [e.message for e in events]
    assert f"{user}@127.0.0.1:{server.port}: exit 0: ran: echo via-password" in steps[0].message
    assert server.asked == ["echo via-password"]
    assert f"Accepted password for {user}" in server.proc.output()
    seen = [caplog.text, *(json.dumps(e.payload()) for e in events), repr(site)]
    seen += [p.read_bytes().decode("utf-8", "replace") for p in (tmp_path / "state").rglob("*")]
    for text in seen:
        assert password not in text
