"""One suite of IPMI driver tests, run against OpenIPMI's ipmi_sim (a real BMC emulator) and
against the project's simulated BMCs.

Each backend is a small adapter: where the BMC listens, how to take a PSU's input away, how to
make the OS ignore an ACPI soft-off. Where they really differ (ipmi_sim's soft-off is instant,
the simulator's takes the model's OS shutdown time) the adapter says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from facility_agent.core.driver import ActionError, AuthError
from facility_agent.core.model import Sample
from facility_agent.drivers.ipmi.driver import IpmiDriver
from facility_agent.simulators.serve import RunningSimulator, SimulatorOptions

from .fixtures.drivers import closing_drivers
from .fixtures.ipmi import PSU1, IpmiSim, start_ipmi_sim

pytestmark = pytest.mark.peer


@dataclass
class Backend:
    name: str
    port: int
    user: tuple[str, str]
    lose_psu1_input: Callable[[], Awaitable[None]]
    restore_psu1_input: Callable[[], Awaitable[None]]
    #: Make the OS ignore ACPI soft-off (True) or obey it again.
    ignore_soft_off: Callable[[bool], Awaitable[None]]
    #: Seconds a soft-off takes on this backend at most.
    soft_off_within: float


@pytest.fixture(scope="module")
def shared_ipmi_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpmiSim]:
    sim = start_ipmi_sim(tmp_path_factory.mktemp("ipmi_sim"))
    yield sim
    sim.stop()


def ipmi_sim_backend(sim: IpmiSim) -> Backend:
    async def lose() -> None:
        await asyncio.to_thread(sim.set_psu, PSU1, ac_lost=True)

    async def restore() -> None:
        await asyncio.to_thread(sim.set_psu, PSU1, ac_lost=False)

    async def ignore(flag: bool) -> None:
        sim.ignore_soft_off(flag)

    sim.set_power(True)
    return Backend("ipmi_sim", sim.port, sim.admin, lose, restore, ignore, 5.0)


def simulator_backend(sim: RunningSimulator) -> Backend:
    server = sim.site.servers["srv-01"]
    orig = server.cfg

    async def lose() -> None:
        sim.inject("pdu.feed_fail", "pdu-a")

    async def restore() -> None:
        sim.inject("pdu.feed_restore", "pdu-a")

    async def ignore(flag: bool) -> None:
        # An OS that takes an hour to shut down is one that ignores the button.
        server.cfg = orig.model_copy(update={"os_shutdown_s": 3600.0}) if flag else orig

    return Backend(
        "simulator",
        sim.ipmi.ports["srv-01"] if sim.ipmi else 0,
        ("admin", "adminpass"),
        lose,
        restore,
        ignore,
        5.0,
    )


@pytest.fixture(params=["ipmi_sim", "simulator"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "ipmi_sim":
        yield ipmi_sim_backend(request.getfixturevalue("shared_ipmi_sim"))
        return
    # x20: srv-01's 15 s OS shutdown takes 0.75 s.
    sim = RunningSimulator(SimulatorOptions(nut_port=None, ipmi_port=0, speed=20))
    await sim.start()
    try:
        yield simulator_backend(sim)
    finally:
        await sim.stop()


@pytest.fixture
async def make_driver(backend: Backend) -> AsyncIterator[Callable[..., IpmiDriver]]:
    keys: dict[str, object] = {
        "id": "srv-under-test",
        "driver": "ipmi",
        "host": "127.0.0.1",
        "port": backend.port,
        "username": backend.user[0],
        "password": backend.user[1],
        "timeout": 5,
    }
    async with closing_drivers(IpmiDriver, keys) as make:
        yield make


async def poll_until(
    driver: IpmiDriver, check: Callable[[Sample], bool], timeout: float = 10.0
) -> Sample:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        sample = await driver.poll()
        if check(sample) or asyncio.get_running_loop().time() > deadline:
            return sample
        await asyncio.sleep(0.1)


async def test_poll_reads_power_sensors_and_psus(make_driver: Callable[..., IpmiDriver]) -> None:
    sample = await make_driver().poll()
    m = sample.metrics
    assert "POWER_ON" in sample.status
    assert m["server.power.state"] == "on"
    assert m["psu.count"] == 2
    assert m["psu.1.status"] == "ok" and m["psu.2.status"] == "ok"
    assert m["psu.redundancy"] == "ok"
    assert isinstance(m["server.power"], float) and m["server.power"] > 0
    assert m["ambient.temperature"] in (22.0, 24.0)
    assert m["sensor.inlet_temp.health"] == "ok"
    assert any(k.startswith("sensor.fan1.value") for k in m)


async def test_psu_input_loss_degrades_redundancy_and_logs_sel(
    backend: Backend, make_driver: Callable[..., IpmiDriver]
) -> None:
    driver = make_driver()
    await driver.poll()  # first read: the SEL baseline
    await backend.lose_psu1_input()
    try:
        flags: set[str] = set()

        def lost(s: Sample) -> bool:
            flags.update(s.status)  # every poll's flags: SEL_AC_LOST is raised by one poll only
            return s.metrics.get("psu.1.status") != "ok"

        sample = await poll_until(driver, lost)
        assert sample.metrics["psu.1.status"] == "input_lost"
        assert sample.metrics["psu.2.status"] == "ok"
        assert sample.metrics["psu.redundancy"] == "degraded"
        assert {"PSU_NO_INPUT", "NOT_REDUNDANT"} <= set(sample.status)
        # The BMC logs the SEL entry as the feed goes, just before or after the sensor changes,
        # so the poll that sees it is the one that saw the sensor, one before or one after.
        flags.update((await driver.poll()).status)
        assert "SEL_AC_LOST" in flags
    finally:
        await backend.restore_psu1_input()
    sample = await poll_until(driver, lambda s: s.metrics.get("psu.redundancy") == "ok")
    assert sample.metrics["psu.redundancy"] == "ok"
    assert "SEL_AC_LOST" not in (await driver.poll()).status


async def test_hard_off_and_power_on_are_verified(make_driver: Callable[..., IpmiDriver]) -> None:
    driver = make_driver(allow_writes=True)
    out = await driver.run_action("hard_off", {"timeout": "10"})
    assert "is off" in out
    assert "POWER_OFF" in (await driver.poll()).status
    out = await driver.run_action("power_on", {"timeout": "10"})
    assert "is on" in out
    assert "already on" in await driver.run_action("power_on")


async def test_soft_off_waits_for_the_os(
    backend: Backend, make_driver: Callable[..., IpmiDriver]
) -> None:
    driver = make_driver(allow_writes=True)
    try:
        out = await driver.run_action("soft_off", {"timeout": str(backend.soft_off_within)})
        assert "soft_off" in out and "is off" in out
    finally:
        await driver.run_action("power_on", {"timeout": "10"})


async def test_soft_off_falls_back_to_hard_off(
    backend: Backend, make_driver: Callable[..., IpmiDriver]
) -> None:
    driver = make_driver(allow_writes=True)
    await backend.ignore_soft_off(True)
    try:
        with pytest.raises(ActionError, match="did not reach 'off' within 1 s"):
            await driver.run_action("soft_off", {"timeout": "1"})
        out = await driver.run_action("soft_off", {"timeout": "1", "fallback": "hard_off"})
        assert "hard_off" in out and "is off" in out
    finally:
        await backend.ignore_soft_off(False)
        await driver.run_action("power_on", {"timeout": "10"})


async def test_power_cycle_ends_on(make_driver: Callable[..., IpmiDriver]) -> None:
    driver = make_driver(allow_writes=True)
    assert "on again" in await driver.run_action("power_cycle", {"timeout": "10"})
    assert "POWER_ON" in (await driver.poll()).status


async def test_actions_refused_without_allow_writes(make_driver: Callable[..., IpmiDriver]) -> None:
    with pytest.raises(ActionError, match="allow_writes"):
        await make_driver().run_action("hard_off")
    with pytest.raises(ActionError, match="unknown action"):
        await make_driver(allow_writes=True).run_action("self_destruct")


async def test_wrong_password_is_a_clear_auth_error(
    make_driver: Callable[..., IpmiDriver], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Wr0ng"
    with pytest.raises(AuthError) as err:
        await make_driver(password=secret).poll()
    assert "refused user" in err.value.reason and "127.0.0.1" in err.value.reason
    assert secret not in err.value.reason and secret not in caplog.text
    assert err.value.permanent


async def test_session_is_reused_between_polls(make_driver: Callable[..., IpmiDriver]) -> None:
    driver = make_driver()
    await driver.poll()
    first = driver._bmc.cmd
    await driver.poll()
    assert driver._bmc.cmd is first
