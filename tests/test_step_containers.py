"""`containers:` steps against a real Podman API service (tests/fixtures/podman.py), through
the docker SDK exactly as the agent talks to Docker."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.plan_steps import kill_9_while_stopping, run_plan
from tests.fixtures.podman import Podman
from tests.fixtures.procs import Proc
from tests.test_policy_engine import _world, make_site, outage, power_back, running  # noqa: F401 (_world)

PROJECT = "com.docker.compose.project"


@pytest.fixture
def names(podman_service: Podman) -> Iterator[dict[str, str]]:
    """Per test: a lone container, a compose project of two, another project (not selected),
    and a container that exists but is not running (so it is not ours to start again)."""
    tag = uuid.uuid4().hex[:6]
    n = {k: f"{k}-{tag}" for k in ("solo", "web", "db", "other", "idle")}
    shop, elsewhere = f"shop-{tag}", f"else-{tag}"
    podman_service.run(n["solo"])
    podman_service.run(n["web"], f"{PROJECT}={shop}")
    podman_service.run(n["db"], f"{PROJECT}={shop}")
    podman_service.run(n["other"], f"{PROJECT}={elsewhere}")
    podman_service.run(n["idle"])
    podman_service.cli("stop", "--time", "0", n["idle"])
    n["shop"] = shop
    yield n
    for key in ("solo", "web", "db", "other", "idle"):
        podman_service.cli("rm", "--force", "--time", "0", n[key], check=False)


def stage(pod: Podman, n: dict[str, str], **extra: Any) -> dict[str, Any]:
    step = {
        "containers": {
            "socket": pod.url,
            "names": [n["solo"], n["idle"]],
            "projects": [n["shop"]],
            "grace": 1,
            **extra,
        },
        "timeout": 30,
    }
    return {"name": "containers", "steps": [step]}


async def test_stop_by_name_and_project_with_a_grace_then_sigkill(
    tmp_path: Path, podman_service: Podman, names: dict[str, str]
) -> None:
    journal, run, ok, outcomes = await run_plan(tmp_path, [stage(podman_service, names)])
    assert ok, outcomes
    for key in ("solo", "web", "db"):
        assert podman_service.status(names[key]) == "exited"
    assert podman_service.status(names["other"]) == "running"  # another project
    # `sleep` as PID 1 ignores SIGTERM: the engine kills it after the grace (exit 137).
    assert f"{names['solo']} stopped in" in outcomes[0].detail
    assert "(exit 137)" in outcomes[0].detail
    assert outcomes[0].duration >= 1.0
    # The names entry first, then the project's containers together; idle was not running.
    got = journal.targets((run, 0, 0))
    assert got[0] == (names["solo"], "stopped")
    assert sorted(got[1:]) == sorted([(names["web"], "stopped"), (names["db"], "stopped")])


async def test_unreachable_socket_and_a_missing_container_are_named_failures(
    tmp_path: Path, podman_service: Podman, names: dict[str, str]
) -> None:
    missing = f"ghost-{uuid.uuid4().hex[:6]}"
    nowhere = f"unix://{tmp_path}/no.sock"
    stages = [
        {"name": "a", "steps": [{"containers": {"socket": nowhere, "names": ["x"]}}]},
        {
            "name": "b",
            "steps": [
                {"containers": {"socket": podman_service.url, "names": [missing, names["solo"]]}}
            ],
        },
        {"name": "c", "steps": [{"wait": 0.01}]},
    ]
    _, _, ok, outcomes = await run_plan(tmp_path, stages)
    assert ok  # on_failure: continue
    assert [o.ok for o in outcomes] == [False, False, True]
    assert f"FAILED {nowhere}: cannot reach the container engine" in outcomes[0].detail
    assert f"{missing}: no such container" in outcomes[1].detail
    assert podman_service.status(names["solo"]) == "exited"  # the rest of the step still ran


async def test_dry_run_lists_the_containers_and_touches_nothing(
    tmp_path: Path, podman_service: Podman, names: dict[str, str]
) -> None:
    _, _, ok, outcomes = await run_plan(tmp_path, [stage(podman_service, names)], dry_run=True)
    assert ok
    detail = outcomes[0].detail
    web_db = ", ".join(sorted([names["web"], names["db"]]))
    assert f"would stop {names['solo']} then {web_db} (SIGKILL after 1 s)" in detail
    for key in ("solo", "web", "db", "other"):
        assert podman_service.status(names[key]) == "running"


async def test_recovery_starts_only_those_stopped_in_reverse_order(
    tmp_path: Path, podman_service: Podman, names: dict[str, str]
) -> None:
    shutdown = make_site(tmp_path).shutdown.model_dump()
    shutdown["stages"] = [stage(podman_service, names)]
    async with running(tmp_path, shutdown=shutdown) as (agent, rec):
        outage()
        await rec.wait("shutdown.completed", 30)
        power_back()
        await rec.wait("recovery.completed", 30)
        for key in ("solo", "web", "db", "other"):
            assert podman_service.status(names[key]) == "running"
        assert podman_service.status(names["idle"]) == "exited"  # was not running: not ours
        assert agent.policy is not None
        journal = agent.policy.journal
        shut, back = journal.last_run("shutdown"), journal.last_run("recovery")
        assert shut is not None and back is not None
        stopped = [t for t, _ in journal.targets((shut.id, 0, 0))]
        started = journal.targets((back.id, 0, 0))
        assert started == [(t, "started") for t in reversed(stopped)]


async def test_kill_9_mid_containers_step_resumes_neither_repeating_nor_skipping(
    tmp_path: Path,
    podman_service: Podman,
    names: dict[str, str],
    nut_simulator: RunningSimulator,
    procs: Callable[..., Proc],
) -> None:
    order = [names["solo"], names["web"], names["db"]]  # three entries: one after another
    step = {"containers": {"socket": podman_service.url, "names": order, "grace": 3}}
    stages = [{"name": "containers", "steps": [{**step, "timeout": 30}]}]
    second = names["web"]
    got = await kill_9_while_stopping(tmp_path, nut_simulator, procs, stages, second)
    assert got.at_kill == {names["solo"]: "stopped", second: "stopping"}
    assert got.after == {n: "stopped" for n in order}
    assert f"already stopped before a restart: {names['solo']}" in got.detail
    assert f"{names['solo']} stopped in" not in got.detail
    # The one in the middle: stopped by the engine already (its stop ran on) or now.
    assert f"{second} stopped in" in got.detail or f"{second} off after a restart" in got.detail
    assert f"{names['db']} stopped in" in got.detail  # none skipped
    for name in order:
        assert podman_service.status(name) == "exited"


async def test_a_container_that_will_not_stop_is_a_named_failure_and_the_plan_goes_on(
    tmp_path: Path, podman_service: Podman, names: dict[str, str]
) -> None:
    """A paused container: Podman refuses to stop it ("container state improper")."""
    stuck = names["solo"]
    podman_service.cli("pause", stuck)
    stages = [
        {"name": "a", "steps": [{"containers": {"socket": podman_service.url, "names": [stuck]}}]},
        {"name": "b", "steps": [{"wait": 0.01}]},
    ]
    _, _, ok, outcomes = await run_plan(tmp_path, stages)
    assert ok  # on_failure: continue
    assert [o.ok for o in outcomes] == [False, True]
    assert f"FAILED {stuck}: {stuck} will not stop: " in outcomes[0].detail
    assert "container state improper" in outcomes[0].detail
    assert podman_service.status(stuck) == "paused"
