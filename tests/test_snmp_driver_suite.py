"""The SNMP driver against real net-snmp snmpd AND against the project's simulator.

Each suite test runs twice through the `agent` fixture: once on snmpd (real IF-MIB of the
loopback, pass_persist UPS-MIB changed at run time, an SNMPv3 user) and once on our simulator's
SNMP face (values from the physical model, faults injected into the model).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from facility_agent.core.driver import AuthError, DeviceTimeout
from facility_agent.core.model import Sample
from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver
from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.snmp import UPS_ON_BATTERY, V3_AUTH, V3_PRIV, V3_USER, Snmpd

pytestmark = pytest.mark.peer


@dataclass
class Agent:
    kind: str
    port: int
    ups_community: str
    #: (uplink name, interface) that is up on this agent.
    uplink: tuple[str, str]
    on_battery: Callable[[], Awaitable[None]]
    restore: Callable[[], Awaitable[None]]


#: The snmpd fixture's SNMPv3 user, authPriv.
AUTH_PRIV: dict[str, Any] = {
    "version": "3",
    "user": V3_USER,
    "auth_protocol": "SHA",
    "auth_key": V3_AUTH,
    "priv_protocol": "AES",
    "priv_key": V3_PRIV,
}


def device(port: int, **kw: Any) -> SnmpDriver:
    kw.setdefault("profile", "ups-mib")
    kw.setdefault("timeout", 2.0)
    return SnmpDriver(
        SnmpDeviceConfig(id=kw.pop("id", "dev"), driver="snmp", host="127.0.0.1", port=port, **kw)
    )


@pytest.fixture(params=["snmpd", "simulator"])
async def agent(
    request: pytest.FixtureRequest, make_simulator: Callable[..., Awaitable[RunningSimulator]]
) -> Agent:
    if request.param == "snmpd":
        server: Snmpd = request.getfixturevalue("snmpd")

        async def on_battery() -> None:
            server.set_ups(UPS_ON_BATTERY)

        async def restore() -> None:
            server.set_ups()

        return Agent("snmpd", server.port, "public", ("loop", "lo"), on_battery, restore)
    sim = await make_simulator(nut_port=None, snmp_port=0)
    assert sim.snmp is not None

    async def sim_on_battery() -> None:
        sim.inject("utility.fail")

    async def sim_restore() -> None:
        sim.inject("utility.restore")

    return Agent(
        "simulator", sim.snmp.port, "ups-a", ("primary", "wan-1"), sim_on_battery, sim_restore
    )


async def test_ups_mib_reads_nut_names_and_flags(agent: Agent) -> None:
    drv = device(agent.port, community=agent.ups_community)
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    assert "OL" in sample.status
    m = sample.metrics
    assert m["battery.charge"] == 100
    assert isinstance(m["battery.runtime"], int) and m["battery.runtime"] > 0
    assert 200 <= float(m["input.voltage"]) <= 250
    assert isinstance(m["ups.mfr"], str) and m["ups.mfr"]
    assert not any(k.startswith("_") for k in m)


async def poll_until(drv: SnmpDriver, flag: str, timeout: float = 5.0) -> Sample:
    """Poll until the status has `flag`, or `timeout` s have passed: the last sample."""
    deadline = time.monotonic() + timeout
    while True:
        sample = await drv.poll()
        if flag in sample.status or time.monotonic() > deadline:
            return sample
        await asyncio.sleep(0.05)


async def test_ups_goes_on_battery_at_run_time(agent: Agent) -> None:
    drv = device(agent.port, community=agent.ups_community)
    try:
        await agent.on_battery()
        sample = await poll_until(drv, "OB")
        assert "OB" in sample.status and "OL" not in sample.status
        await agent.restore()
        sample = await poll_until(drv, "OL")
        assert "OL" in sample.status
    finally:
        await agent.restore()
        await drv.close()


async def test_if_mib_named_uplink(agent: Agent) -> None:
    name, iface = agent.uplink
    drv = device(
        agent.port,
        community=agent.ups_community if agent.kind == "snmpd" else "switch",
        profile="if-mib",
        uplinks={name: iface, "ghost": "no-such-if"},
    )
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    assert sample.metrics[f"uplink.{name}.status"] == "up"
    assert isinstance(sample.metrics[f"uplink.{name}.in_octets"], int)
    # A configured uplink the switch does not have is reported, and counts as down.
    assert sample.metrics["uplink.ghost.status"] == "missing"
    assert "LINK_DOWN" in sample.status


@pytest.mark.parametrize("version", ["1", "2c"])
async def test_versions_and_getnext_walks(agent: Agent, version: str) -> None:
    community = agent.ups_community if agent.kind == "snmpd" else "switch"
    drv = device(agent.port, community=community, version=version, profile="if-mib")
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    assert any(k.endswith(".status") for k in sample.metrics)
    assert isinstance(sample.metrics["device.description"], str)


async def test_missing_objects_are_left_out_per_oid(agent: Agent, tmp_path: Any) -> None:
    profile = tmp_path / "partial.yaml"
    profile.write_text(
        "protocol: snmp\nname: partial\nmetrics:\n"
        "  battery.charge: {oid: 1.3.6.1.2.1.33.1.2.4.0, range: 0..100}\n"
        "  nothing.here: {oid: 1.3.6.1.4.1.99999.1.0, range: 0..1}\n"
        "  also.missing: {oid: 1.3.6.1.2.1.33.1.2.4.99, range: 0..1}\n"
        "tables:\n  empty: {columns: {x: {oid: 1.3.6.1.4.1.99999.2, range: 0..1}}}\n"
    )
    drv = device(agent.port, community=agent.ups_community, profile=str(profile))
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    assert sample.metrics == {"battery.charge": 100}


async def test_wrong_community_is_a_timeout_that_names_the_likely_cause(agent: Agent) -> None:
    drv = device(agent.port, community="s3cret-wrong", timeout=0.6, retries=1)
    try:
        with pytest.raises(DeviceTimeout) as err:
            await drv.poll()
    finally:
        await drv.close()
    assert "community" in err.value.reason and f"127.0.0.1:{agent.port}" in err.value.reason
    assert "s3cret-wrong" not in err.value.reason


# ---- snmpd only: SNMPv3 --------------------------------------------------------------------


async def test_v3_auth_priv_against_snmpd(snmpd: Snmpd) -> None:
    drv = device(snmpd.port, **AUTH_PRIV, profile="if-mib", uplinks={"loop": "lo"})
    try:
        sample = await drv.poll()
        assert sample.metrics["uplink.loop.status"] == "up"
        ups = device(snmpd.port, **AUTH_PRIV)
        sample = await ups.poll()
        await ups.close()
        assert sample.metrics["battery.charge"] == 100
    finally:
        await drv.close()


@pytest.mark.parametrize(
    "keys", [{"auth_key": "wrong-auth-key"}, {"priv_key": "wrong-priv-key"}, {"user": "nobody"}]
)
async def test_v3_wrong_credentials_are_auth_errors(snmpd: Snmpd, keys: dict[str, str]) -> None:
    cfg: dict[str, Any] = {
        **AUTH_PRIV,
        "timeout": 1.5,
        "retries": 0,
        **keys,
    }
    drv = device(snmpd.port, **cfg)
    try:
        with pytest.raises((AuthError, DeviceTimeout)) as err:
            await drv.poll()
    finally:
        await drv.close()
    for secret in (V3_AUTH, V3_PRIV, "wrong-auth-key", "wrong-priv-key"):
        assert secret not in err.value.reason
    if "priv_key" not in keys:
        # USM reports unknown users and wrong digests; a wrong privacy key only shows as
        # garbage the agent cannot decrypt, which some agents answer and some drop.
        assert isinstance(err.value, AuthError), err.value.reason


async def test_bulk_walk_of_48_outlets_from_snmpd(snmpd: Snmpd) -> None:
    drv = device(snmpd.port, profile="apc-rpdu2", max_repetitions=10)
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    assert sample.metrics["outlet.48.current"] == pytest.approx(5.8)
    assert sample.metrics["outlet.1.desc"] == "outlet-1"
    assert len([k for k in sample.metrics if k.endswith(".realpower")]) == 48
