"""The simulated BMCs against real IPMI tools (ipmitool lanplus, FreeIPMI), and the IPMI driver
against BMCs that misbehave: unreachable, slow, unknown sensor types, malformed SDRs."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from facility_agent.core.driver import DeviceError, DeviceTimeout, ProtocolError
from facility_agent.drivers.ipmi.driver import IpmiDeviceConfig, IpmiDriver
from facility_agent.simulators.serve import RunningSimulator, SimulatorOptions

from .fixtures.procs import free_port, require_binary

# One simulator for the module: tests use different servers and put back what they change.
pytestmark = [pytest.mark.peer, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[RunningSimulator]:
    s = RunningSimulator(SimulatorOptions(nut_port=None, ipmi_port=0, speed=20))
    await s.start()
    yield s
    await s.stop()


def port_of(sim: RunningSimulator, server: str = "srv-01") -> int:
    assert sim.ipmi is not None
    return sim.ipmi.ports[server]


async def ipmitool(port: int, *args: str) -> str:
    exe = require_binary("ipmitool")
    argv = [exe, "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(port)]
    argv += ["-U", "admin", "-P", "adminpass", *args]
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_ipmitool_reads_sdr_sensors_and_chassis(sim: RunningSimulator) -> None:
    port = port_of(sim)
    sdr = await ipmitool(port, "sdr", "list")
    assert "Sys Power        | 220 Watts" in sdr
    assert "PSU1 Status" in sdr and "PSU2 Status" in sdr
    elist = await ipmitool(port, "sdr", "elist")
    assert "Presence detected" in elist
    sensors = await ipmitool(port, "sensor", "list")
    assert "Inlet Temp" in sensors and "RPM" in sensors
    assert "System Power         : on" in await ipmitool(port, "chassis", "status")


async def test_ipmitool_sees_feed_loss_in_psu_sensor_and_sel(sim: RunningSimulator) -> None:
    port = port_of(sim)
    assert "AC lost" not in await ipmitool(port, "sel", "list")
    sim.inject("pdu.feed_fail", "pdu-a")
    await asyncio.sleep(0.3)
    elist = await ipmitool(port, "sdr", "elist")
    psu1 = next(line for line in elist.splitlines() if line.startswith("PSU1"))
    assert "Power Supply AC lost" in psu1
    assert "AC lost" in await ipmitool(port, "sel", "list")
    sim.inject("pdu.feed_restore", "pdu-a")


async def test_ipmitool_drives_power_and_soft_off_takes_the_os_time(
    sim: RunningSimulator,
) -> None:
    port = port_of(sim)
    server = sim.site.servers["srv-01"]
    ups = sim.site.ups["ups-a"]
    await ipmitool(port, "chassis", "power", "off")
    await sim.wait_for(lambda s: not server.powered, 5, "srv-01 off")
    assert "Chassis Power is off" in await ipmitool(port, "chassis", "power", "status")
    await ipmitool(port, "chassis", "power", "on")
    await sim.wait_for(lambda s: server.powered, 5, "srv-01 on")
    await sim.wait_for(lambda s: server.state == "running", 10, "srv-01 booted")
    load_before = ups.load_w
    started = sim.site.time
    await ipmitool(port, "chassis", "power", "soft")
    assert "Chassis Power is on" in await ipmitool(port, "chassis", "power", "status")
    await sim.wait_for(lambda s: not server.powered, 10, "srv-01 soft off")
    # Off only after the model's OS shutdown time; then its load leaves the UPS.
    assert sim.site.time - started >= server.cfg.os_shutdown_s - 0.5
    sim.sync()
    assert ups.load_w < load_before


async def test_freeipmi_reads_sensors_and_chassis(sim: RunningSimulator, tmp_path: Path) -> None:
    port = port_of(sim, "srv-02")
    cache = tmp_path / "sdr-cache"
    cache.mkdir(mode=0o700)
    common = ["-h", f"127.0.0.1:{port}", "-u", "admin", "-p", "adminpass", "-D", "LAN_2_0"]
    common += ["-I", "3"]
    sensors = [require_binary("ipmi-sensors"), *common, "--quiet-cache"]
    sensors += [f"--sdr-cache-directory={cache}"]
    out = await asyncio.to_thread(
        subprocess.run, sensors, capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    assert "Sys Power" in out.stdout and "260.00" in out.stdout
    assert "'Presence detected'" in out.stdout
    chassis = [require_binary("ipmi-chassis"), *common, "--get-chassis-status"]
    out = await asyncio.to_thread(
        subprocess.run, chassis, capture_output=True, text=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    assert "System Power                        : on" in out.stdout


# ---- bad BMCs ---------------------------------------------------------------------------


_open: list[IpmiDriver] = []


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def _close_drivers() -> AsyncIterator[None]:
    """Every driver a test made is closed, even when the test fails."""
    yield
    while _open:
        await _open.pop().close()


def driver_for(port: int, **extra: object) -> IpmiDriver:
    keys: dict[str, object] = {
        "id": "srv-bad",
        "driver": "ipmi",
        "host": "127.0.0.1",
        "port": port,
        "username": "admin",
        "password": "adminpass",
        "timeout": 3,
    }
    keys.update(extra)
    driver = IpmiDriver(IpmiDeviceConfig.model_validate(keys))
    _open.append(driver)
    return driver


async def test_unreachable_bmc_is_a_device_error_within_the_timeout() -> None:
    port = free_port(socket.SOCK_DGRAM)  # nothing listens there
    driver = driver_for(port, timeout=2)
    started = time.monotonic()
    with pytest.raises(DeviceError) as err:
        await driver.poll()
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{port}" in err.value.reason
    await driver.close()


async def test_unknown_sensor_type_is_published_not_fatal(sim: RunningSimulator) -> None:
    assert sim.ipmi is not None
    await sim.ipmi.set_faults("srv-03", oem_sensor=True)
    driver = driver_for(port_of(sim, "srv-03"))
    sample = await driver.poll()
    assert "sensor.oem_widget.health" in sample.metrics
    assert sample.metrics["psu.redundancy"] == "ok"
    await driver.close()


async def test_malformed_sdr_is_a_protocol_error(sim: RunningSimulator) -> None:
    assert sim.ipmi is not None
    await sim.ipmi.set_faults("srv-04", malformed_sdr=True)
    driver = driver_for(port_of(sim, "srv-04"))
    with pytest.raises(ProtocolError) as err:
        await driver.poll()
    assert f"127.0.0.1:{port_of(sim, 'srv-04')}" in err.value.reason
    await sim.ipmi.set_faults("srv-04", malformed_sdr=False)
    await driver.close()


async def test_slow_bmc_never_delays_another(sim: RunningSimulator) -> None:
    """srv-01's BMC takes 10 s per reply; srv-02 keeps being polled at its own pace."""
    assert sim.ipmi is not None
    slow = driver_for(port_of(sim, "srv-01"), timeout=2, id="srv-01")
    fast = driver_for(port_of(sim, "srv-02"), timeout=2, id="srv-02")
    await slow.poll()
    await fast.poll()
    await sim.ipmi.set_faults("srv-01", delay=10.0)
    slow_task = asyncio.create_task(slow.poll())
    fast_times = []
    for _ in range(5):
        t = time.monotonic()
        sample = await fast.poll()
        fast_times.append(time.monotonic() - t)
        assert sample.metrics["psu.redundancy"] == "ok"
    with pytest.raises(DeviceTimeout):
        await slow_task
    # While its thread is still stuck, the slow device fails at once instead of queueing.
    with pytest.raises(DeviceTimeout, match=r"still busy|no answer"):
        await slow.poll()
    assert max(fast_times) < 1.5, fast_times
    await sim.ipmi.set_faults("srv-01", delay=0.0)
    # Once its stuck request has given up, the slow device logs in afresh and polls again.
    await recovered(slow)
    await fast.close()
    await slow.close()


async def test_bmc_without_standby_power_goes_silent(sim: RunningSimulator) -> None:
    sim.inject("pdu.feed_fail", "pdu-a")
    sim.inject("pdu.feed_fail", "pdu-b")
    driver = driver_for(port_of(sim, "srv-04"), timeout=2)
    try:
        # The BMCs run in their own process and get the model's state over a pipe on the
        # simulator's tick: a poll sent in the same instant may still find standby power.
        await silent(driver)
    finally:
        sim.inject("pdu.feed_restore", "pdu-a")
        sim.inject("pdu.feed_restore", "pdu-b")
    # Power back: the BMC answers again and the device recovers by itself.
    await recovered(driver)
    await driver.close()


async def silent(driver: IpmiDriver, within: float = 20.0) -> None:
    """The BMC stops answering (a DeviceError) within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            await driver.poll()
        except DeviceError:
            return
        assert time.monotonic() < deadline, "the BMC still answers without standby power"
        await asyncio.sleep(0.2)


async def recovered(driver: IpmiDriver, within: float = 40.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await driver.poll()
            return
        except DeviceError:
            assert time.monotonic() < deadline, "the device never recovered"
            await asyncio.sleep(0.5)


async def test_unavailable_and_unscanned_sensors_are_unknown(sim: RunningSimulator) -> None:
    """IPMI's own "reading unavailable" and "scanning disabled" bits: no value, named unknown."""
    from facility_agent.simulators.faces.ipmi import PSU2, SYS_POWER, TEMP_INLET

    assert sim.ipmi is not None
    await sim.ipmi.set_faults("srv-02", unavailable=[TEMP_INLET, PSU2], not_scanning=[SYS_POWER])
    driver = driver_for(port_of(sim, "srv-02"))
    try:
        sample = await driver.poll()
        for name in (
            "ambient.temperature",
            "sensor.inlet_temp.value",
            "server.power",
            "sensor.sys_power.value",
            "psu.2.status",
            "psu.redundancy",
        ):
            assert name in sample.unknown and name not in sample.metrics, name
        assert sample.metrics["psu.1.status"] == "ok"
        assert sample.metrics["sensor.cpu_temp.value"] > 0
    finally:
        await sim.ipmi.set_faults("srv-02", unavailable=[], not_scanning=[])
    sample = await driver.poll()
    assert sample.unknown == () and sample.metrics["psu.redundancy"] == "ok"
    await driver.close()
