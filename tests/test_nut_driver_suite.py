"""One suite of NUT driver tests, run against every real NUT server we have.

Each backend is a small adapter (where it listens, which UPS, how to put it on battery), so the
same expectations hold for the real upsd + dummy-ups and for the project's own simulator. Where
the servers really differ (dummy-ups drops instant commands that upsd has already answered OK
to) the adapter says so, and the test checks what that backend really does.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from facility_agent.core.driver import ActionError, AuthError, DeviceError, NotFoundError
from facility_agent.core.model import Sample
from facility_agent.drivers.nut.driver import NutDriver
from facility_agent.simulators.serve import RunningSimulator, SimulatorOptions

from .fixtures.drivers import closing_drivers
from .fixtures.nut import NutServer

pytestmark = pytest.mark.peer

#: Stock NUT clients manage ~22 LIST VAR/s over one connection (PEERS.md); ours must not.
MIN_LIST_VAR_PER_S = 100


@dataclass
class Backend:
    """What the suite needs to know about one NUT server."""

    name: str
    host: str
    port: int
    ups: str
    #: A second UPS on the same server, used by tests that leave marks (FSD).
    other_ups: str
    admin: tuple[str, str]
    #: An account with an `upsmon` role, allowed to LOGIN.
    monitor: tuple[str, str]
    #: A numeric variable SET VAR can change.
    settable: str
    #: A harmless instant command the UPS lists, and the (variable, value) it leads to, if the
    #: backend really carries it out.
    instcmd: str
    instcmd_effect: tuple[str, str] | None
    on_battery: Callable[[], Awaitable[None]]
    on_line: Callable[[], Awaitable[None]]
    #: Restart the server on the same port (a stand-in for "upsd went away"); clears FSD.
    restart: Callable[[], Awaitable[None]]


def upsd_backend(server: NutServer) -> Backend:
    async def run(fn: Callable[[], None]) -> None:
        await asyncio.to_thread(fn)

    return Backend(
        name="upsd",
        host=server.host,
        port=server.port,
        ups="ups1",
        other_ups="ups2",
        admin=server.admin,
        monitor=server.monitor,
        settable="battery.charge",
        # dummy-ups lists load.off but drops every instant command (its log says so); upsd has
        # answered OK by then.
        instcmd="load.off",
        instcmd_effect=None,
        on_battery=lambda: run(lambda: server.set_state("ups1", "OB", 80, 1800)),
        on_line=lambda: run(lambda: server.set_state("ups1", "OL", 100, 3600)),
        restart=lambda: run(server.restart_upsd),
    )


@asynccontextmanager
async def simulator_backend() -> AsyncIterator[Backend]:
    """The project's simulator (default site, real speed), fresh for each test: it starts in
    milliseconds, unlike upsd."""
    sim = RunningSimulator(SimulatorOptions(nut_port=0))
    await sim.start()
    holder = [sim]

    async def inject(*actions: str) -> None:
        for action in actions:
            holder[0].inject(action)

    async def restart() -> None:
        port = holder[0].nut_port
        await holder[0].stop()
        holder[0] = RunningSimulator(SimulatorOptions(nut_port=port))
        await holder[0].start()

    try:
        yield Backend(
            name="simulator",
            host="127.0.0.1",
            port=sim.nut_port,
            ups="ups-a",
            other_ups="ups-b",
            admin=("admin", "adminpass"),
            monitor=("monuser", "monpass"),
            settable="battery.charge.low",
            instcmd="beeper.disable",
            instcmd_effect=("ups.beeper.status", "disabled"),
            # A generator that cannot start keeps the UPS on battery until the utility returns.
            on_battery=lambda: inject("generator.crank_fail", "utility.fail"),
            on_line=lambda: inject("utility.restore"),
            restart=restart,
        )
    finally:
        await holder[0].stop()


BACKENDS = ["upsd", "simulator"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "upsd":
        yield upsd_backend(request.getfixturevalue("upsd"))
    else:
        async with simulator_backend() as sim_backend:
            yield sim_backend


@pytest.fixture
async def make_driver(backend: Backend) -> AsyncIterator[Callable[..., NutDriver]]:
    """Drivers for the backend's UPS; closed (pool references released) after the test."""
    keys: dict[str, object] = {
        "id": "ups-under-test",
        "driver": "nut",
        "host": backend.host,
        "port": backend.port,
        "ups": backend.ups,
        "timeout": 3,
    }
    async with closing_drivers(NutDriver, keys) as make:
        yield make


def admin(backend: Backend, **extra: object) -> dict[str, object]:
    user, password = backend.admin
    return {"username": user, "password": password, "allow_writes": True, **extra}


async def poll_until(
    driver: NutDriver, check: Callable[[Sample], bool], timeout: float = 10.0
) -> Sample:
    deadline = time.monotonic() + timeout
    last: Sample | DeviceError | None = None
    while time.monotonic() < deadline:
        try:
            last = await driver.poll()
            if check(last):
                return last
        except DeviceError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s; last poll: {last!r}")


async def test_poll_gives_status_and_numeric_metrics(
    make_driver: Callable[..., NutDriver],
) -> None:
    sample = await make_driver().poll()
    assert sample.device == "ups-under-test"
    assert "OL" in sample.status and "OB" not in sample.status
    m = sample.metrics
    assert "ups.status" not in m
    assert isinstance(m["battery.charge"], int | float) and 0 <= m["battery.charge"] <= 100
    assert isinstance(m["battery.runtime"], int | float) and m["battery.runtime"] > 0
    assert isinstance(m["input.voltage"], float | int)
    assert isinstance(m["ups.load"], int | float)
    assert all(isinstance(v, str) for k, v in m.items() if k.endswith((".model", ".serial")))


async def test_on_battery_is_seen(backend: Backend, make_driver: Callable[..., NutDriver]) -> None:
    driver = make_driver()
    await backend.on_battery()
    try:
        sample = await poll_until(driver, lambda s: "OB" in s.status)
        assert "OL" not in sample.status
    finally:
        await backend.on_line()
    await poll_until(driver, lambda s: "OL" in s.status and "OB" not in s.status)


async def test_set_var(backend: Backend, make_driver: Callable[..., NutDriver]) -> None:
    var = backend.settable
    driver = make_driver(**admin(backend))
    original = (await driver.poll()).metrics[var]
    outcome = await driver.run_action("set", {"var": var, "value": "42"})
    assert "SET VAR" in outcome
    try:
        await poll_until(driver, lambda s: s.metrics.get(var) == 42, timeout=5)
    finally:
        await driver.run_action("set", {"var": var, "value": str(original)})
    await poll_until(driver, lambda s: s.metrics.get(var) == original, timeout=5)
    with pytest.raises(ActionError, match="VAR-NOT-SUPPORTED"):
        await driver.run_action("set", {"var": "no.such.variable", "value": "1"})
    with pytest.raises(ActionError, match="needs the params"):
        await driver.run_action("set", {"var": var})


async def test_instant_command(backend: Backend, make_driver: Callable[..., NutDriver]) -> None:
    driver = make_driver(**admin(backend))
    actions = await driver.actions()
    assert backend.instcmd in actions and "set" in actions and "fsd" in actions
    # upsd answers OK as soon as it has handed the command to its driver (dummy-ups then drops
    # it, see PEERS.md): "accepted", not "done", is all a NUT client can know.
    assert "accepted" in await driver.run_action(backend.instcmd)
    if backend.instcmd_effect is not None:
        var, value = backend.instcmd_effect
        await poll_until(driver, lambda s: s.metrics.get(var) == value, timeout=5)
    with pytest.raises(ActionError, match="CMD-NOT-SUPPORTED"):
        await driver.run_action("no.such.command")


async def test_fsd(backend: Backend, make_driver: Callable[..., NutDriver]) -> None:
    driver = make_driver(ups=backend.other_ups, **admin(backend))
    try:
        assert "FSD" in await driver.run_action("fsd")
        await poll_until(driver, lambda s: "FSD" in s.status, timeout=5)
    finally:
        await backend.restart()  # upsd keeps FSD until it restarts
    await poll_until(driver, lambda s: "FSD" not in s.status)


async def test_actions_refused_without_allow_writes(
    backend: Backend, make_driver: Callable[..., NutDriver]
) -> None:
    driver = make_driver(**admin(backend, allow_writes=False))
    var = backend.settable
    original = (await driver.poll()).metrics[var]
    for action, params in [("set", {"var": var, "value": "7"}), ("fsd", {}), (backend.instcmd, {})]:
        with pytest.raises(ActionError, match="allow_writes"):
            await driver.run_action(action, params)
    assert (await driver.poll()).metrics[var] == original


async def test_unknown_ups(backend: Backend, make_driver: Callable[..., NutDriver]) -> None:
    with pytest.raises(NotFoundError) as info:
        await make_driver(ups="no-such-ups").poll()
    assert "UNKNOWN-UPS" in info.value.reason
    assert f"{backend.host}:{backend.port}" in info.value.reason


async def test_login_as_upsmon_secondary(
    backend: Backend, make_driver: Callable[..., NutDriver]
) -> None:
    user, password = backend.monitor
    sample = await make_driver(username=user, password=password, login=True).poll()
    assert "OL" in sample.status


async def test_wrong_credentials(backend: Backend, make_driver: Callable[..., NutDriver]) -> None:
    wrong = "not-the-password-xyz"
    # LOGIN checks the password at once ...
    user, _ = backend.monitor
    with pytest.raises(AuthError) as info:
        await make_driver(username=user, password=wrong, login=True).poll()
    assert "ACCESS-DENIED" in info.value.reason and wrong not in str(info.value)
    # ... and without LOGIN, where upsd would only check it at the first write, the driver
    # checks it on connecting, so a bad password is found at the first poll, not in an outage.
    driver = make_driver(**admin(backend, password=wrong))
    with pytest.raises(AuthError) as info:
        await driver.poll()
    assert "refused user" in info.value.reason
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    with pytest.raises(AuthError):
        await make_driver(username=user, password=wrong).poll()


async def test_right_credentials_pass_the_check(
    backend: Backend, make_driver: Callable[..., NutDriver]
) -> None:
    # An admin account (SET rights) and a monitoring account (upsmon role, no SET rights).
    assert (await make_driver(**admin(backend)).poll()).status
    user, password = backend.monitor
    assert (await make_driver(username=user, password=password).poll()).status


async def test_reconnects_after_server_restart(
    backend: Backend, make_driver: Callable[..., NutDriver]
) -> None:
    driver = make_driver()
    await driver.poll()
    await backend.restart()
    # The old connection is dead; at most one poll may notice that, a later one reconnects.
    await poll_until(driver, lambda s: "OL" in s.status, timeout=10)


async def test_devices_on_one_server_share_one_connection(
    backend: Backend, make_driver: Callable[..., NutDriver]
) -> None:
    a = make_driver()
    b = make_driver(ups=backend.other_ups)
    await asyncio.gather(a.poll(), b.poll(), a.poll(), b.poll())
    assert a._conn() is b._conn()
    await a.close()
    assert (await b.poll()).status


async def _stock_list_var_rate(backend: Backend, seconds: float) -> float:
    """A plain asyncio-streams client (what every stock client does): the Nagle + delayed-ACK
    baseline that our client must beat."""
    reader, writer = await asyncio.open_connection(backend.host, backend.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    end = f"END LIST VAR {backend.ups}\n".encode()
    count, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            writer.write(f"LIST VAR {backend.ups}\n".encode())
            while await reader.readline() != end:
                pass
            count += 1
    finally:
        writer.close()
    return count / (time.perf_counter() - started)


async def test_many_polls_per_second_over_one_connection(
    backend: Backend, make_driver: Callable[..., NutDriver]
) -> None:
    driver = make_driver()
    await driver.poll()
    client = driver._conn()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < 1.0:
        await driver.poll()
        count += 1
    rate = count / (time.perf_counter() - started)
    assert driver._conn() is client and client.connected
    stock = await _stock_list_var_rate(backend, 0.5)
    print(f"\n[{backend.name}] LIST VAR/s: ours {rate:.0f}, plain asyncio client {stock:.0f}")
    assert rate > MIN_LIST_VAR_PER_S, f"{rate:.0f} LIST VAR/s (stock clients: ~22)"
