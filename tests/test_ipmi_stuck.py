"""A BMC that stops answering never keeps a driver thread: every wait inside pyghmi ends at the
call's deadline, with a typed error, and the thread comes back (issue 15).

The BMC is OpenIPMI's ipmi_sim behind a UDP relay that goes silent mid-session, or after the
first packet of the RMCP+ handshake. Also the cause itself: pyghmi's I/O thread must never
block in `recvfrom()` when a sender has switched the shared socket to blocking mode."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from facility_agent.core.driver import DeviceError, DeviceTimeout
from facility_agent.drivers.ipmi.driver import CALL_MARGIN, IpmiDeviceConfig, IpmiDriver

from .fixtures.ipmi import OPEN_SESSION_RESPONSE, IpmiSim, UdpRelay, rmcpplus_payload

pytestmark = pytest.mark.peer

TIMEOUT = 3.0


def driver_for(port: int, user: tuple[str, str]) -> IpmiDriver:
    cfg = IpmiDeviceConfig(
        id="srv-stuck",
        driver="ipmi",
        host="127.0.0.1",
        port=port,
        username=user[0],
        password=user[1],
        timeout=TIMEOUT,
    )
    return IpmiDriver(cfg)


async def threads_back_to(baseline: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while threading.active_count() > baseline:
        names = [t.name for t in threading.enumerate()]
        assert time.monotonic() < deadline, f"threads left: {names}"
        await asyncio.sleep(0.05)


async def baseline(sim: IpmiSim) -> int:
    """The thread count once pyghmi's own I/O thread exists (a first driver started it)."""
    warm = driver_for(sim.port, sim.admin)
    await warm.poll()
    await warm.close()
    await asyncio.sleep(0.2)
    return threading.active_count()


async def fails_in_time(driver: IpmiDriver) -> DeviceError:
    started = time.monotonic()
    with pytest.raises(DeviceError) as err:
        await driver.poll()
    took = time.monotonic() - started
    assert took < TIMEOUT + CALL_MARGIN + 1.0, took
    # The thread itself gave up (the await did not just stop waiting for it).
    assert driver._busy is not None and driver._busy.done()
    assert "still busy" not in err.value.reason
    return err.value


async def test_bmc_that_stops_answering_mid_session_gives_the_thread_back(
    ipmi_sim: IpmiSim, udp_relay: Callable[[int], UdpRelay]
) -> None:
    relay = udp_relay(ipmi_sim.port)
    before = await baseline(ipmi_sim)
    driver = driver_for(relay.port, ipmi_sim.admin)
    try:
        await driver.poll()  # logged in, session kept
        relay.silence()
        err = await fails_in_time(driver)
        assert isinstance(err, DeviceTimeout)
        await fails_in_time(driver)  # the next poll logs in afresh, and fails in time again
        relay.resume()
        sample = await driver.poll()  # no half-dead session is left to block the login
        assert sample.metrics["psu.redundancy"] == "ok"
    finally:
        await driver.close()
    await threads_back_to(before)


async def test_bmc_that_answers_only_the_first_handshake_packet(
    ipmi_sim: IpmiSim, udp_relay: Callable[[int], UdpRelay]
) -> None:
    relay = udp_relay(ipmi_sim.port)
    before = await baseline(ipmi_sim)

    def first_only(reply: bytes) -> bool:
        kind = rmcpplus_payload(reply)
        return kind is None or kind <= OPEN_SESSION_RESPONSE  # never RAKP 2 or 4

    relay.answer = first_only
    driver = driver_for(relay.port, ipmi_sim.admin)
    try:
        await fails_in_time(driver)
        await fails_in_time(driver)
        assert relay.replies >= 2  # it did answer: channel auth and the open session
        relay.resume()
        assert (await driver.poll()).metrics["psu.redundancy"] == "ok"
    finally:
        await driver.close()
    await threads_back_to(before)


class _FlippedToBlocking(socket.socket):
    """A socket on which every `setblocking(0)` is undone at once, as when another thread's
    send switches the shared socket back to blocking between pyghmi's two calls."""

    def setblocking(self, flag: bool) -> None:
        super().setblocking(True)


def test_io_thread_never_blocks_in_recvfrom_on_a_drained_socket() -> None:
    from pyghmi.ipmi.private import session as ps

    from facility_agent.drivers.ipmi import driver as ipmi

    ipmi._ensure_patched()
    sock = _FlippedToBlocking(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(ps._io_recvfrom(sock, 3000)))
    reader.daemon = True
    reader.start()
    reader.join(2.0)
    try:
        assert not reader.is_alive(), "recvfrom blocked on an empty socket"
        assert result == [None]
    finally:
        # Unblock the (unpatched) reader, should there be one.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00", sock.getsockname())
        reader.join(2.0)
        sock.close()


async def test_ipmi_sim_sensor_with_scanning_disabled_is_unknown(ipmi_sim: IpmiSim) -> None:
    """The real BMC emulator turns scanning off for its power sensor: `server.power` is
    unknown (named in the sample), not 0 W; scanning back on, it is a reading again."""
    from .fixtures.ipmi import POWER

    off = "000000000000000"
    driver = driver_for(ipmi_sim.port, ipmi_sim.admin)
    try:
        ipmi_sim.command(
            f"sensor_set_event_support 0x20 0 {POWER} enable no-scanning per-state "
            f"{off} {off} {off} {off}"
        )
        sample = await driver.poll()
        assert "server.power" in sample.unknown and "server.power" not in sample.metrics
        assert "sensor.sys_power.value" in sample.unknown
    finally:
        ipmi_sim.command(
            f"sensor_set_event_support 0x20 0 {POWER} enable scanning per-state "
            f"{off} {off} {off} {off}"
        )
    sample = await driver.poll()
    assert sample.unknown == () and sample.metrics["server.power"] == 250.0
    await driver.close()


STUCK_TEST = """
import threading

def test_leaves_a_thread_stuck() -> None:
    threading.Thread(target=threading.Event().wait, name="stuck-forever").start()
"""


def test_a_thread_left_stuck_fails_the_run_instead_of_hanging_it(tmp_path: Path) -> None:
    """A pytest run whose test leaves a non-daemon thread blocked forever: without the guard
    the process never exits; with it the run fails at once, naming the thread."""
    (tmp_path / "test_stuck.py").write_text(STUCK_TEST)
    repo = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += ["-p", "tests.fixtures.threads", "--rootdir", str(tmp_path), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    started = time.monotonic()
    out = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "1 passed" in text and "1 error" in text, text
    assert "'stuck-forever'" in text and "still alive" in text, text
    assert time.monotonic() - started < 60
