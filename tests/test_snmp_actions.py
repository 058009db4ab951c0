"""Outlet switching through SNMP SET, end to end against real net-snmp snmpd: the recorded
Tripp Lite PDUMV30HVNETLX walk is served by `snmp_pass_rw.py`, which switches an outlet's
tlpPduOutletState when tlpPduOutletCommand is SET, as TRIPPLITE-PRODUCTS describes. snmpd's own
access control decides who may write (a read-write community and SNMPv3 user, a read-only
community). Each test checks the value that arrived at the device and the state read back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from facility_agent.core.driver import ActionError
from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver
from facility_agent.drivers.snmp.profile import ProfileError, load_profile

from .fixtures.snmp_rw import RW_AUTH, RW_PRIV, RW_USER, Writable, serve_writable

CASE = Path(__file__).parents[1] / "drivers" / "snmp" / "testcases" / "tripplite-pdumv30hvnetlx"
COMMAND = "1.3.6.1.4.1.850.1.1.3.2.3.3.1.1.6"  # tlpPduOutletCommand: turnOff(1) turnOn(2) cycle(3)
STATE = "1.3.6.1.4.1.850.1.1.3.2.3.3.1.1.4"  # tlpPduOutletState: off(1) on(2)
RULES = {COMMAND: {"state": STATE, "values": {"1": 1, "2": 2, "3": 2}}}


@pytest.fixture
def pdu(tmp_path: Path) -> Iterator[Writable]:
    with serve_writable(CASE / "device.snmprec", RULES, tmp_path, [".1.3.6.1.4.1.850"]) as peer:
        yield peer


def driver(peer: Writable, **keys: Any) -> SnmpDriver:
    cfg = SnmpDeviceConfig(
        id="pdu-a",
        driver="snmp",
        host="127.0.0.1",
        port=peer.port,
        profile="tripplite-pdu",
        timeout=5.0,
        **keys,
    )
    return SnmpDriver(cfg)


def test_the_peer_switches_an_outlet_for_net_snmps_own_snmpset(pdu: Writable) -> None:
    """The peer is honest: real snmpset with the rw community switches outlet 5 off, and the
    read-only community is refused by snmpd before the device sees anything."""
    refused = pdu.snmpset(f".{COMMAND}.1.5", "i", "1", community="public")
    assert refused.returncode != 0
    assert pdu.sets() == []
    done = pdu.snmpset(f".{COMMAND}.1.5", "i", "1")
    assert done.returncode == 0, done.stderr
    assert pdu.sets() == [f"{COMMAND}.1.5 integer 1"]


async def test_outlet_off_and_on_are_set_and_read_back(pdu: Writable) -> None:
    drv = driver(pdu, community="private", allow_writes=True)
    try:
        before = await drv.poll()
        assert before.metrics["outlet.10.status"] == "on"
        actions = await drv.actions()
        assert {"outlet.10.load.off", "outlet.10.load.on", "outlet.10.load.cycle"} <= set(actions)
        assert {"load.off", "load.on"} <= set(actions)
        assert len([a for a in actions if a.endswith(".load.off")]) == 24

        outcome = await drv.run_action("outlet.10.load.off")
        assert f"{COMMAND}.1.10 = 1" in outcome
        assert pdu.sets() == [f"{COMMAND}.1.10 integer 1"]
        after = await drv.poll()
        assert after.metrics["outlet.10.status"] == "off"
        assert after.metrics["outlet.9.status"] == "on"  # only the one outlet

        await drv.run_action("outlet.10.load.on")
        assert pdu.sets()[-1] == f"{COMMAND}.1.10 integer 2"
        assert (await drv.poll()).metrics["outlet.10.status"] == "on"
    finally:
        await drv.close()


async def test_actions_are_refused_without_allow_writes(pdu: Writable) -> None:
    drv = driver(pdu, community="private")
    try:
        with pytest.raises(ActionError, match="allow_writes: true"):
            await drv.run_action("outlet.10.load.off")
        assert pdu.sets() == []
        assert (await drv.poll()).metrics["outlet.10.status"] == "on"
    finally:
        await drv.close()


async def test_a_read_only_community_is_reported_not_hidden(pdu: Writable) -> None:
    drv = driver(pdu, allow_writes=True)  # community public: snmpd's rocommunity
    try:
        with pytest.raises(ActionError, match="refused: agent answered") as err:
            await drv.run_action("outlet.10.load.off")
        assert "may write" in str(err.value)
        assert pdu.sets() == []
    finally:
        await drv.close()


async def test_an_unknown_outlet_names_the_known_actions(pdu: Writable) -> None:
    drv = driver(pdu, community="private", allow_writes=True)
    try:
        with pytest.raises(ActionError, match=r"no action 'outlet\.99\.load\.off'") as err:
            await drv.run_action("outlet.99.load.off")
        assert "outlet.24.load.off" in str(err.value)
        assert pdu.sets() == []
    finally:
        await drv.close()


async def test_snmpv3_user_switches_an_outlet_through_pysnmp(pdu: Writable) -> None:
    drv = driver(
        pdu,
        version="3",
        user=RW_USER,
        auth_protocol="SHA",
        auth_key=RW_AUTH,
        priv_protocol="AES",
        priv_key=RW_PRIV,
        allow_writes=True,
    )
    try:
        await drv.run_action("outlet.3.load.cycle")
        assert pdu.sets() == [f"{COMMAND}.1.3 integer 3"]
        await drv.run_action("outlet.3.load.off")
        assert (await drv.poll()).metrics["outlet.3.status"] == "off"
    finally:
        await drv.close()


async def test_snmpv1_set_works_too(pdu: Writable) -> None:
    drv = driver(pdu, version="1", community="private", allow_writes=True)
    try:
        await drv.run_action("outlet.1.load.off")
        assert pdu.sets() == [f"{COMMAND}.1.1 integer 1"]
        assert (await drv.poll()).metrics["outlet.1.status"] == "off"
    finally:
        await drv.close()


#: Each switched profile with a real walk that holds its outlet table, and what its MIB says:
#: the command object and value of each action, and the raw state the outlet then reads (the
#: peer applies it; the profile must read it back as "off"/"on"). Raritan PX2, Sentry3 and
#: Sentry4 are missing: their public walks (LibreNMS) hold no outlet table.
SWITCHED: dict[str, tuple[str, str, str, dict[str, tuple[str, int, int]]]] = {
    # rPDU2OutletSwitchedControlCommand immediateOn(1) immediateOff(2) immediateReboot(3);
    # rPDU2OutletSwitchedStatusState off(1) on(2).
    "apc-rpdu2": ("apc-ap7902b", ".1.3.6.1.4.1.318", "1.3.6.1.4.1.318.1.1.26.9.2.3.1.5", {
        "off": ("1.3.6.1.4.1.318.1.1.26.9.2.4.1.5", 2, 1),
        "on": ("1.3.6.1.4.1.318.1.1.26.9.2.4.1.5", 1, 2),
        "cycle": ("1.3.6.1.4.1.318.1.1.26.9.2.4.1.5", 3, 2),
    }),
    # outletControlOffCmd / OnCmd / RebootCmd: seconds of delay, 0 = now;
    # outletControlStatus off(0) on(1).
    "eaton-epdu": ("eaton-epdu-ema114", ".1.3.6.1.4.1.534", "1.3.6.1.4.1.534.6.6.7.6.6.1.2", {
        "off": ("1.3.6.1.4.1.534.6.6.7.6.6.1.3", 0, 0),
        "on": ("1.3.6.1.4.1.534.6.6.7.6.6.1.4", 0, 1),
        "cycle": ("1.3.6.1.4.1.534.6.6.7.6.6.1.5", 0, 1),
    }),
    # CPQPOWER-MIB pdu2OutletControlOffCmd / OnCmd / RebootCmd (delay, 0 = now);
    # pdu2OutletControlStatus off(1) on(2).
    "hpe-epdu": ("hpe-mapdu-3k6", ".1.3.6.1.4.1.232", "1.3.6.1.4.1.232.165.7.5.2.1.1", {
        "off": ("1.3.6.1.4.1.232.165.7.5.2.1.2", 0, 1),
        "on": ("1.3.6.1.4.1.232.165.7.5.2.1.3", 0, 2),
        "cycle": ("1.3.6.1.4.1.232.165.7.5.2.1.4", 0, 2),
    }),
    # CPS-MIB ePDUOutletControlOutletCommand immediateOn(1) immediateOff(2) immediateReboot(3);
    # ePDUOutletStatusOutletState on(1) off(2).
    "cyberpower-epdu": ("cyberpower-pdu44005", ".1.3.6.1.4.1.3808",
                        "1.3.6.1.4.1.3808.1.1.3.3.5.1.1.4", {
        "off": ("1.3.6.1.4.1.3808.1.1.3.3.3.1.1.4", 2, 2),
        "on": ("1.3.6.1.4.1.3808.1.1.3.3.3.1.1.4", 1, 1),
        "cycle": ("1.3.6.1.4.1.3808.1.1.3.3.3.1.1.4", 3, 1),
    }),
    # TRIPPLITE-PRODUCTS tlpAtsOutletCommand / tlpUpsOutletCommand turnOff(1) turnOn(2)
    # cycle(3); tlpAtsOutletState / tlpUpsOutletState off(1) on(2).
    "tripplite-ats": ("tripplite-pdumh20atnet", ".1.3.6.1.4.1.850",
                      "1.3.6.1.4.1.850.1.1.3.4.3.3.1.1.4", {
        "off": ("1.3.6.1.4.1.850.1.1.3.4.3.3.1.1.6", 1, 1),
        "on": ("1.3.6.1.4.1.850.1.1.3.4.3.3.1.1.6", 2, 2),
        "cycle": ("1.3.6.1.4.1.850.1.1.3.4.3.3.1.1.6", 3, 2),
    }),
    "tripplite-ups": ("tripplite-su3000lcd2uhv", ".1.3.6.1.4.1.850",
                      "1.3.6.1.4.1.850.1.1.3.1.3.5.1.1.4", {
        "off": ("1.3.6.1.4.1.850.1.1.3.1.3.5.1.1.6", 1, 1),
        "on": ("1.3.6.1.4.1.850.1.1.3.1.3.5.1.1.6", 2, 2),
        "cycle": ("1.3.6.1.4.1.850.1.1.3.1.3.5.1.1.6", 3, 2),
    }),
}  # fmt: skip


@pytest.mark.parametrize("profile", sorted(SWITCHED))
async def test_each_switched_profile_switches_an_outlet_of_its_real_walk(
    tmp_path: Path, profile: str
) -> None:
    """The profile's off/on/cycle reach the device as the MIB's object and value (the peer
    refuses any other), and the state the device then reports reads back as off/on."""
    case, subtree, state, actions = SWITCHED[profile]
    rules: dict[str, Any] = {}
    for command, value, after in actions.values():
        rules.setdefault(command, {"state": state, "values": {}})["values"][str(value)] = after
    recording = CASE.parent / case / "device.snmprec"
    with serve_writable(recording, rules, tmp_path, [subtree]) as peer:
        cfg = SnmpDeviceConfig(
            id="pdu-a", driver="snmp", host="127.0.0.1", port=peer.port, profile=profile,
            timeout=5.0, community="private", allow_writes=True,
        )  # fmt: skip
        drv = SnmpDriver(cfg)
        try:
            before = await drv.poll()
            outlet = sorted(k for k in before.metrics if k.startswith("outlet.") and
                            k.endswith(".status"))[0].split(".")[1]  # fmt: skip
            rows = set()
            for action, want in (("off", "off"), ("on", "on"), ("off", "off"), ("cycle", "on")):
                await drv.run_action(f"outlet.{outlet}.load.{action}")
                command, value, _ = actions[action]
                oid, kind, sent = peer.sets()[-1].split()
                assert oid.startswith(command + ".") and (kind, sent) == ("integer", str(value))
                rows.add(oid[len(command) + 1 :])
                assert (await drv.poll()).metrics[f"outlet.{outlet}.status"] == want, action
            assert len(peer.sets()) == 4 and len(rows) == 1  # one outlet, every time
        finally:
            await drv.close()


def test_every_pdu_profile_with_outlet_control_declares_its_commands() -> None:
    for name in (
        "apc-rpdu2",
        "eaton-epdu",
        "raritan-pdu2",
        "servertech-sentry3",
        "servertech-sentry4",
        "hpe-epdu",
        "cyberpower-epdu",
        "tripplite-pdu",
        "tripplite-ats",
        "tripplite-ups",
    ):
        commands = load_profile(name).commands
        assert {"outlet.{key}.load.off", "outlet.{key}.load.on"} <= set(commands), name
        assert all(c.rows == "outlet" for n, c in commands.items() if n.startswith("outlet.")), name


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ({"oid": "1.3.6.1.4.1.99999.1.{index}", "value": 1}, "rows: and an OID"),
        ({"oid": "1.3.6.1.4.1.99999.1.{index}.0", "value": 1, "rows": "outlet"}, "must end"),
        ({"oid": "1.3.6.1.4.1.99999.1.{index}", "value": "x", "rows": "outlet"}, "text value"),
        ({"oid": "1.3.6.1.4.1.99999.1.{index}", "value": 1, "rows": "nope"}, "not a table"),
    ],
)
def test_bad_commands_are_rejected_with_the_key(
    tmp_path: Path, command: dict[str, Any], error: str
) -> None:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "protocol": "snmp",
                "name": "bad",
                "tables": {
                    "outlet": {"columns": {"x": {"oid": "1.3.6.1.4.1.99999.2", "range": "0..1"}}}
                },
                "commands": {"outlet.{key}.load.off": command},
            }
        )
    )
    with pytest.raises(ProfileError, match=error):
        load_profile(str(path))
