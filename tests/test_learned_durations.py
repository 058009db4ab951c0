"""Per-target learned durations: the journal keeps what each target took, the plan's expected
duration is built from the stages (each as long as its slowest step), and the runtime trigger
fires earlier for a site with one slow SSH host (two real sshd on loopback)."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.cli.runbook import gather, render_markdown
from facility_agent.config import parse_site
from facility_agent.config.policy import ShutdownConfig, StageConfig
from facility_agent.core.model import Event
from facility_agent.policy.durations import estimate_plan
from facility_agent.policy.engine import DRILL_JOURNAL, PolicyEngine
from facility_agent.policy.journal import Journal
from facility_agent.policy.plan import PlanRunner, StepContext
from facility_agent.runtime import agent as agent_module
from facility_agent.runtime.agent import Agent
from facility_agent.runtime.state import SiteState
from tests.fixtures.plan_steps import run_plan
from tests.fixtures.podman import Podman
from tests.fixtures.procs import Proc
from tests.fixtures.sshd import Sshd, start_sshd
from tests.fixtures.world import WORLD, WorldDriver
from tests.test_policy_site import until
from tests.test_step_containers import names  # noqa: F401 (a fixture)
from tests.test_step_containers import stage as container_stage
from tests.test_step_vm import site_uri, vm_stage  # noqa: F401 (site_uri: a fixture)

HV = "qemu+ssh://agent:hv-secret@hv1/system"
SOCK = "unix:///run/podman/podman.sock"

STAGES: list[dict[str, Any]] = [
    {
        "name": "guests",
        "steps": [
            {"vm": {"uri": HV, "guests": ["db-*", "web-*"]}, "timeout": 60},
            {"containers": {"socket": SOCK, "names": ["cache"], "projects": ["shop"]}},
        ],
    },
    {
        "name": "hosts",
        "steps": [
            {"ssh": {"host": "app-01", "run": ["systemctl", "poweroff"], "password": "x"}},
            {"ssh": {"host": "db-02", "run": ["systemctl", "poweroff"], "password": "x"}},
            {"run": ["/usr/local/sbin/stop-apps", "--all"], "timeout": 20},
        ],
    },
    {"name": "settle", "steps": [{"wait": 5}]},
    {"name": "ups", "steps": [{"device": "ups-a", "action": "shutdown.return", "timeout": 15}]},
]

#: What two earlier runs measured (run 1, then run 2), keyed as the plan runner keys them.
RUN_1 = {
    "vm qemu+ssh://agent:***@hv1/system db-1": 4.0,
    "vm qemu+ssh://agent:***@hv1/system db-2": 6.0,
    "vm qemu+ssh://agent:***@hv1/system web-1": 2.0,
    f"containers {SOCK} cache": 1.0,
    f"containers {SOCK} project:shop": 3.0,
    "ssh root@app-01:22 systemctl poweroff": 0.5,
    "ssh root@db-02:22 systemctl poweroff": 9.0,
    "run /usr/local/sbin/stop-apps --all": 2.0,
}
RUN_2 = {
    "vm qemu+ssh://agent:***@hv1/system db-2": 8.0,
    "ssh root@db-02:22 systemctl poweroff": 11.0,
}


def record(journal: Journal, times: Mapping[str, float], state: str = "completed") -> None:
    run = journal.start_run("shutdown", "test")
    for i, (key, seconds) in enumerate(times.items()):
        journal.target_time((run, 0, i), key, seconds)
    journal.end_run(run, state)


def shutdown(stages: list[dict[str, Any]] = STAGES, **extra: Any) -> ShutdownConfig:
    return ShutdownConfig.model_validate({"group": "ups", "stages": stages, **extra})


def test_expected_duration_from_recorded_target_times(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    record(journal, RUN_1)
    record(journal, RUN_2, state="cancelled")  # a cancelled run's targets were measured too
    learned = journal.target_times("shutdown")
    assert learned["ssh root@db-02:22 systemctl poweroff"] == 10.0  # median of 9 and 11
    assert learned["vm qemu+ssh://agent:***@hv1/system db-2"] == 7.0
    assert not any("hv-secret" in key for key in learned)
    plan = estimate_plan(shutdown().stages, learned)
    # guests: vm db-* (slowest db-2: 7) then web-* (2) = 9, beside containers cache (1) then
    # project shop (3) = 4 -> 9; hosts: the slow host 10 beside 0.5 and 2 -> 10; the wait 5;
    # the device action never measured: its timeout 15.
    assert plan.stages == [9.0, 10.0, 5.0, 15.0]
    assert plan.seconds == 39.0
    assert plan.steps[3][0].bounded == ["device ups-a shutdown.return"]

    engine = PolicyEngine(
        parse_policy(tmp_path, STAGES),
        SiteState("lab1"),
        {},
        lambda event: None,
        lambda state: None,
        journal.path,
    )
    try:
        assert engine.expected_duration() == 39.0
    finally:
        engine.journal.close()
    journal.close()


def test_nothing_measured_keeps_the_configured_guess_and_drills_fill_in(tmp_path: Path) -> None:
    policy = parse_policy(tmp_path, STAGES, expected_duration=42)

    def expected() -> float:
        engine = PolicyEngine(
            policy,
            SiteState("lab1"),
            {},
            lambda e: None,
            lambda s: None,
            tmp_path / "journal.sqlite",
        )
        try:
            return engine.expected_duration()
        finally:
            engine.journal.close()

    assert expected() == 42.0
    drills = Journal(tmp_path / DRILL_JOURNAL)
    record(drills, {**RUN_1, "ssh root@db-02:22 systemctl poweroff": 30.0})
    drills.close()
    # The drill measured the slow host at 30 s: the hosts stage takes 30 (guests: db-2 6 s,
    # then web-1 2 s).
    assert expected() == 8.0 + 30.0 + 5.0 + 15.0
    real = Journal(tmp_path / "journal.sqlite")
    record(real, {"ssh root@db-02:22 systemctl poweroff": 12.0})
    real.close()
    # A real run's figure wins over the drill's for that host; the others keep the drill's.
    assert expected() == 8.0 + 12.0 + 5.0 + 15.0


def test_runbook_shows_each_targets_learned_time(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    journal = Journal(state / DRILL_JOURNAL)
    record(journal, RUN_1)
    record(journal, RUN_2)
    journal.close()
    site_file = tmp_path / "site.yaml"
    site_file.write_text(site_yaml(STAGES, state))
    site = parse_site(
        site_file.read_text(), str(site_file), env={}, drivers=lambda: {"world": WorldDriver}
    )
    text = render_markdown(gather(site, site_file, state))
    assert "| db-1 4 s, db-2 7 s, web-1 2 s |" in text
    assert "| cache 1 s, project:shop 3 s |" in text
    assert re.search(r"\| ssh db-02: systemctl poweroff \|[^\n]*\| 10 s \| 10 s \|", text)
    assert "| 15 s (timeout) | - | 15 s |" in text  # the device action: not yet measured
    assert "Expected duration of the whole plan: **39 s** (from each target's learned time" in text
    assert "hv-secret" not in text


def site_yaml(stages: list[dict[str, Any]], state: Path, **shutdown: Any) -> str:
    return yaml.safe_dump(
        {
            "site": "lab1",
            "state_dir": str(state),
            "devices": [
                {"id": u, "driver": "world", "interval": 0.1, "jitter": 0, "allow_writes": True}
                for u in ("ups-a", "ups-b")
            ],
            "groups": [{"id": "ups", "members": ["ups-a", "ups-b"], "min": 1, "hold": 0.1}],
            "shutdown": {"group": "ups", "stages": stages, **shutdown},
        }
    )


def parse_policy(tmp_path: Path, stages: list[dict[str, Any]], **shutdown: Any) -> Any:
    site = parse_site(
        site_yaml(stages, tmp_path / "state", **shutdown),
        "site.yaml",
        env={},
        drivers=lambda: {"world": WorldDriver},
    )
    return site.policy


# -- the runtime trigger against two real SSH hosts, one of them slow ----------------------------


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> None:
    WORLD.clear()
    for ups in ("ups-a", "ups-b"):
        WORLD[ups] = {"status": "OL", "metrics": {"battery.charge": 100, "battery.runtime": 3000}}
    monkeypatch.setattr(agent_module, "driver_class", lambda name: WorldDriver)


def ssh_step(server: Sshd, known: Path, run: list[str]) -> dict[str, Any]:
    ssh = {
        "host": "127.0.0.1",
        "port": server.port,
        "run": run,
        "known_hosts_file": str(known),
        "key_file": str(server.client_key),
    }
    return {"ssh": ssh, "timeout": 30}


MARGIN = 10.0


async def fire_runtime(state: Path, stages: list[dict[str, Any]], runtimes: list[float]) -> Event:
    """Start an agent, put both UPS units on battery, and lower the runtime through
    `runtimes` (each held until the engine has judged it for a while): the shutdown.started
    event that the runtime trigger raised."""
    text = site_yaml(
        stages,
        state,
        triggers={
            "on_battery_for": None,
            "low_battery": None,
            "runtime_margin": MARGIN,
            "hold": 0.2,
        },
        expected_duration=1000,  # never used: the drill measured every target
    )
    site = parse_site(text, "site.yaml", env={}, drivers=lambda: {"world": WorldDriver})
    agent = Agent(site, sinks=[])
    started: list[Event] = []
    done: list[Event] = []
    agent.on_event(lambda e: started.append(e) if e.type == "shutdown.started" else None)
    agent.on_event(lambda e: done.append(e) if e.type == "shutdown.completed" else None)
    await agent.start()
    try:
        policy = agent.policy
        assert policy is not None
        await until(lambda: set(WORLD) <= set(agent.state.all()), 10, "first polls")
        for runtime in runtimes:
            for ups in WORLD.values():
                ups["status"] = "OB DISCHRG"
                ups["metrics"]["battery.runtime"] = runtime
            await until(lambda r=runtime: policy.last_runtime == r or bool(started), 10, "a poll")
            if started:
                break
            # The trigger's hold is 0.2 s; four times that at 4 ticks a second: judged.
            await asyncio.sleep(1.0)
            if started:
                break
        await until(lambda: bool(started), 10, "shutdown.started")
        await until(lambda: bool(done), 60, "shutdown.completed")
        return started[0]
    finally:
        await agent.stop()


async def test_one_slow_ssh_host_makes_the_runtime_trigger_fire_earlier(
    tmp_path: Path, procs: Callable[..., Proc], world: None
) -> None:
    fast = start_sshd(tmp_path / "fast", procs)
    slow = start_sshd(tmp_path / "slow", procs)
    fast_step = ssh_step(fast, fast.known_hosts(tmp_path / "known_fast"), ["true"])
    slow_step = ssh_step(slow, slow.known_hosts(tmp_path / "known_slow"), ["sleep", "4"])
    both = [{"name": "hosts", "steps": [fast_step, slow_step]}]
    alone = [{"name": "hosts", "steps": [fast_step]}]

    # A drill ran the plan for real once: the journal now knows what each host takes.
    learn = tmp_path / "learned"
    learn.mkdir()
    drills = Journal(learn / DRILL_JOURNAL)
    run = drills.start_run("shutdown", "drill", drill=True)
    stages = [StageConfig.model_validate(s) for s in both]
    assert await PlanRunner(drills, run, stages, StepContext({})).run()
    await drills.durable(drills.end_run(run, "completed"))
    learned = drills.target_times("shutdown")
    drills.close()
    t_fast = learned[f"ssh root@127.0.0.1:{fast.port} true"]
    t_slow = learned[f"ssh root@127.0.0.1:{slow.port} sleep 4"]
    assert t_slow >= 4.0 and t_fast < t_slow - 1.0, learned

    # Between the two thresholds: only the site with the slow host shuts down there.
    between = round(MARGIN + (t_fast + t_slow) / 2)
    below_both = round(MARGIN + t_fast) - 3

    with_slow = tmp_path / "with-slow"
    shutil.copytree(learn, with_slow)
    event = await fire_runtime(with_slow, both, [between, below_both])
    assert event.data["expected_duration"] == pytest.approx(t_slow)
    assert f"runtime {between} s is below {MARGIN + t_slow:.0f} s" in event.data["reason"]

    without = tmp_path / "without"
    shutil.copytree(learn, without)
    event = await fire_runtime(without, alone, [between, below_both])
    assert event.data["expected_duration"] == pytest.approx(t_fast)
    assert f"runtime {below_both} s is below {MARGIN + t_fast:.0f} s" in event.data["reason"]
    assert fast.asked == ["true"] * 3 and slow.asked == ["sleep 4"] * 2


async def test_guests_containers_and_projects_are_timed_as_they_stop(
    tmp_path: Path,
    site_uri: str,  # noqa: F811 (the fixture imported above)
    podman_service: Podman,
    names: dict[str, str],  # noqa: F811
) -> None:
    """The recording side, against libvirt's test driver (five guests, `hung` destroyed at
    the timeout) and a real Podman service (a lone container, a compose project of two)."""
    stages = [
        vm_stage(site_uri, timeout=1),
        {**container_stage(podman_service, names), "name": "containers"},
        {"name": "idle", "steps": [{"wait": 0.1}]},
    ]
    journal, _, ok, outcomes = await run_plan(tmp_path, stages)
    assert ok, outcomes
    learned = journal.target_times("shutdown")
    journal.close()
    vm, pod = f"vm {site_uri}", f"containers {podman_service.url}"
    assert {k for k in learned if k.startswith(vm)} == {
        f"{vm} {g}" for g in ("db-1", "hung", "web-1", "web-2")
    }
    assert learned[f"{vm} hung"] >= 1.0  # destroyed after the 1 s timeout
    # A container stopped after its 1 s grace (SIGKILL), the project as one entry.
    assert learned[f"{pod} {names['solo']}"] >= 1.0
    project = learned[f"{pod} project:{names['shop']}"]
    assert project >= max(learned[f"{pod} {names['web']}"], learned[f"{pod} {names['db']}"])
    assert f"{pod} {names['idle']}" not in learned  # not running: not stopped, not timed
    plan = estimate_plan([StageConfig.model_validate(s) for s in stages], learned)
    # The vm step: db-* then hung then web-* (each entry its slowest guest), then the
    # containers: solo, idle (not measured: its grace, 1 s), the project.
    vm_time = learned[f"{vm} db-1"] + learned[f"{vm} hung"]
    vm_time += max(learned[f"{vm} web-1"], learned[f"{vm} web-2"])
    assert plan.stages[0] == pytest.approx(vm_time)
    assert plan.stages[1] == pytest.approx(learned[f"{pod} {names['solo']}"] + 1.0 + project)
    assert plan.steps[1][0].bounded == [f"{pod} {names['idle']}"]
    assert plan.stages[2] == pytest.approx(0.1)
