"""`vm:` steps against libvirt's own test driver: the real libvirt API, no hypervisor.

The test driver keeps its guests' state per connection, and the agent keeps one connection per
URI for its process, so every assertion here reads that same connection
(`libvirt_guests.connection`). The kill -9 test runs the agent as its own processes: the
second one sees the guests as the XML file defines them again, which is the harshest case for
the resume rule (a guest journaled as stopped is not asked again, even if it runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from facility_agent.actions import libvirt_guests
from facility_agent.actions.targets import TargetLog
from facility_agent.config.policy import VmStep
from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.libvirtd import Libvirtd
from tests.fixtures.plan_steps import kill_9_while_stopping, run_plan
from tests.fixtures.procs import Proc, free_port
from tests.test_policy_engine import _world, make_site, outage, power_back, running  # noqa: F401 (_world)

NS = "http://libvirt.org/schemas/domain/test/1.0"


def guest(name: str, extra: str = "") -> str:
    return (
        f"<domain type='test' xmlns:test='{NS}'><name>{name}</name><memory>65536</memory>"
        f"<vcpu>1</vcpu><os><type>hvm</type></os>{extra}</domain>"
    )


@pytest.fixture
def site_uri(tmp_path: Path) -> Iterator[str]:
    """Five guests: db-1, web-1, web-2 running; `hung` ignores a shutdown (its on_poweroff
    restarts it, as a guest ignoring ACPI stays up); `off-1` defined but shut off."""
    xml = tmp_path / "guests.xml"
    xml.write_text(
        "<node>"
        + guest("db-1")
        + guest("web-1")
        + guest("web-2")
        + guest("hung", "<on_poweroff>restart</on_poweroff>")
        + guest("off-1", "<test:runstate>5</test:runstate>")
        + "</node>"
    )
    uri = f"test://{xml}"
    yield uri
    libvirt_guests.forget(uri)


def conn(uri: str) -> Any:
    return libvirt_guests.connection(VmStep(uri=uri))


def active(uri: str) -> set[str]:
    return {d.name() for d in conn(uri).listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}


def vm_stage(uri: str, timeout: float = 1.5, **vm: Any) -> dict[str, Any]:
    step = {"vm": {"uri": uri, "guests": ["db-*", "hung", "web-*"], **vm}, "timeout": timeout}
    return {"name": "guests", "steps": [step]}


async def test_guests_stop_in_priority_order_and_the_hung_one_is_destroyed(
    tmp_path: Path, site_uri: str
) -> None:
    journal, run, ok, outcomes = await run_plan(tmp_path, [vm_stage(site_uri)])
    assert ok, outcomes
    assert active(site_uri) == set()
    detail = outcomes[0].detail
    assert "db-1 shut down" in detail and "web-2 shut down" in detail
    assert "hung destroyed after 1.5 s" in detail
    hung = conn(site_uri).lookupByName("hung").state()
    assert hung == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    db = conn(site_uri).lookupByName("db-1").state()
    assert db == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    # Order: db-* first, then hung (waited for its timeout), then web-*; off-1 never touched.
    assert journal.targets((run, 0, 0)) == [
        ("db-1", "stopped"),
        ("hung", "stopped"),
        ("web-1", "stopped"),
        ("web-2", "stopped"),
    ]
    assert outcomes[0].duration >= 1.5  # the graceful window of the hung guest


async def test_destroy_false_leaves_the_hung_guest_and_fails_naming_it(
    tmp_path: Path, site_uri: str
) -> None:
    stages = [
        vm_stage(site_uri, timeout=0.5, destroy=False),
        {"name": "next", "steps": [{"wait": 0.01}]},
    ]
    _, _, ok, outcomes = await run_plan(tmp_path, stages)
    assert ok  # on_failure: continue (the default): the plan went on
    assert [o.ok for o in outcomes] == [False, True]
    assert "FAILED hung" in outcomes[0].detail
    assert "hung still running after 0.5 s" in outcomes[0].detail
    assert active(site_uri) == {"hung"}


async def test_unreachable_uri_is_a_named_failure_without_the_password(tmp_path: Path) -> None:
    port = free_port()
    uri = f"qemu+tcp://admin:s3cret-pw@127.0.0.1:{port}/system"
    stages = [
        {"name": "guests", "steps": [{"vm": {"uri": uri}, "timeout": 5}]},
        {"name": "next", "steps": [{"wait": 0.01}]},
    ]
    _, _, _, outcomes = await run_plan(tmp_path, stages)
    assert [o.ok for o in outcomes] == [False, True]
    detail = outcomes[0].detail
    assert f"libvirt qemu+tcp://admin:***@127.0.0.1:{port}/system" in detail
    assert "cannot reach libvirt" in detail
    assert "s3cret-pw" not in detail


async def test_an_unknown_guest_name_fails_the_step_and_the_others_still_stop(
    tmp_path: Path, site_uri: str
) -> None:
    stages = [{"name": "g", "steps": [{"vm": {"uri": site_uri, "guests": ["nope", "web-1"]}}]}]
    _, _, _, outcomes = await run_plan(tmp_path, stages)
    assert not outcomes[0].ok
    assert "nope: no such guest" in outcomes[0].detail
    assert active(site_uri) == {"db-1", "web-2", "hung"}


async def test_dry_run_lists_the_guests_and_touches_nothing(tmp_path: Path, site_uri: str) -> None:
    before = active(site_uri)
    _, _, ok, outcomes = await run_plan(tmp_path, [vm_stage(site_uri)], dry_run=True)
    assert ok
    assert "would shut down db-1 then hung then web-1, web-2" in outcomes[0].detail
    assert active(site_uri) == before == {"db-1", "web-1", "web-2", "hung"}


async def test_recovery_starts_only_the_stopped_guests_in_reverse_order(
    tmp_path: Path, site_uri: str
) -> None:
    shutdown = make_site(tmp_path).shutdown.model_dump()
    shutdown["stages"] = [vm_stage(site_uri, timeout=0.5)]
    async with running(tmp_path, shutdown=shutdown) as (agent, rec):
        outage()
        await rec.wait("shutdown.completed", 15)
        assert active(site_uri) == set()
        power_back()
        await rec.wait("recovery.completed", 15)
        assert active(site_uri) == {"db-1", "web-1", "web-2", "hung"}  # not off-1
        assert agent.policy is not None
        journal = agent.policy.journal
        recovery = journal.last_run("recovery")
        assert recovery is not None
        assert journal.targets((recovery.id, 0, 0)) == [
            ("web-2", "started"),
            ("web-1", "started"),
            ("hung", "started"),
            ("db-1", "started"),
        ]
        steps = [e for e in rec.events if e.type == "recovery.step"]
        assert steps and "start vm db-*, hung, web-*" in steps[0].message


async def test_kill_9_mid_vm_step_resumes_neither_repeating_nor_skipping(
    tmp_path: Path,
    site_uri: str,
    nut_simulator: RunningSimulator,
    procs: Callable[..., Proc],
) -> None:
    # Killed in the middle: db-1 is behind, hung is being waited for, web-* are still to come.
    got = await kill_9_while_stopping(
        tmp_path, nut_simulator, procs, [vm_stage(site_uri, timeout=4)], "hung"
    )
    assert got.at_kill == {"db-1": "stopped", "hung": "stopping"}
    assert got.after == {n: "stopped" for n in ("db-1", "hung", "web-1", "web-2")}
    assert "already stopped before a restart: db-1" in got.detail  # not asked again
    assert "db-1 shut down" not in got.detail
    assert "hung destroyed after 4 s" in got.detail  # the one in the middle: asked again
    assert "web-1 shut down" in got.detail and "web-2 shut down" in got.detail  # none skipped


async def test_against_a_real_libvirtd_another_connection_sees_the_guests_off(
    tmp_path: Path, libvirtd: Libvirtd
) -> None:
    """Over libvirt's RPC to a real daemon: the check reads its own, separate connection."""
    uri = libvirtd.uri
    try:
        own = libvirt.open(uri)
        for name in ("db-1", "web-1", "hung"):
            extra = "<on_poweroff>restart</on_poweroff>" if name == "hung" else ""
            own.defineXML(guest(name, extra)).create()
        stages = [vm_stage(uri, timeout=1)]
        _, _, ok, outcomes = await run_plan(tmp_path, stages)
        assert ok, outcomes
        checker = libvirt.open(uri)
        for name in ("db-1", "web-1", "hung"):
            assert not checker.lookupByName(name).isActive(), name
        assert checker.lookupByName("test").isActive()  # the driver's own guest: not selected
        assert "hung destroyed after 1 s" in outcomes[0].detail
        started = await libvirt_guests.start_guests(
            VmStep(uri=uri), ["web-1", "db-1"], TargetLog(None, None)
        )
        assert started[0], started
        assert {n for n in ("db-1", "web-1", "hung") if checker.lookupByName(n).isActive()} == {
            "db-1",
            "web-1",
        }
    finally:
        libvirt_guests.forget(uri)


def test_step_kinds_are_checked_when_the_site_file_is_read() -> None:
    from pydantic import ValidationError

    from facility_agent.config.policy import StepConfig

    with pytest.raises(ValidationError, match="exactly one of"):
        StepConfig.model_validate({"vm": {}, "wait": 1})
    with pytest.raises(ValidationError, match="takes no action"):
        StepConfig.model_validate({"vm": {}, "action": "start"})
    with pytest.raises(ValidationError, match="needs names: or projects:"):
        StepConfig.model_validate({"containers": {}})
    step = StepConfig.model_validate({"vm": {"guests": "web-*"}})
    assert step.vm is not None and step.vm.guests == ["web-*"]
    assert step.kind == "vm" and step.rerun_on_resume
    assert StepConfig.model_validate({"vm": {}, "resume": "skip"}).rerun_on_resume is False
