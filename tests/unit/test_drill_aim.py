"""A drill asks each driver to aim its devices at the simulator and to move its site services
off the site's real peers: the drill itself knows no protocol."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from facility_agent.config.site import parse_site
from facility_agent.tools.drill import point_at_simulator

SITE = """
site: lab
devices:
  - {id: ups-a, driver: nut, host: ups.example, ups: ups-a}
  - {id: ups-x, driver: nut, host: ups.example, ups: not-simulated}
  - {id: pdu-a, driver: snmp, host: pdu.example, community: secret, profile: apc-rpdu2}
  - id: pdu-v3
    driver: snmp
    host: pdu.example
    version: "3"
    user: ops
    auth_protocol: SHA
    auth_key: authkey123
    profile: apc-rpdu2
  - {id: gen-1, driver: modbus, serial: /dev/ttyUSB0, unit: 10, profile: dse-gencomm}
  - {id: srv-1, driver: ipmi, host: bmc.example, username: admin, password: pw}
  - {id: srv-2, driver: ipmi, host: bmc2.example, username: admin, password: pw}
  - {id: uplinks, driver: net, links: [eth0]}
nut_server:
  listen: 0.0.0.0:3493
  users: [{name: upsmon, password: pw}]
"""


@dataclass(frozen=True)
class Faces:
    ports: Mapping[str, int] = field(
        default_factory=lambda: {"nut": 40001, "snmp": 40002, "modbus": 40003, "ipmi:srv-1": 40004}
    )
    ups: Sequence[str] = ("ups-a", "ups-b")


def aimed(options: Mapping[str, object] | None = None):  # type: ignore[no-untyped-def]
    site = parse_site(textwrap.dedent(SITE), "site.yaml", env={})
    return site, *point_at_simulator(site, Faces(), options)


def test_each_device_is_aimed_at_its_protocols_face() -> None:
    _, drilled, skipped = aimed()
    by_id = {d.id: d for d in drilled.devices}
    ups = by_id["ups-a"]
    assert (ups.host, ups.port) == ("127.0.0.1", 40001)
    pdu = by_id["pdu-a"]
    assert (pdu.host, pdu.port) == ("127.0.0.1", 40002)
    # The simulator's SNMP face picks the simulated agent by community: the equipment name.
    assert pdu.community.get_secret_value() == "pdu-a"
    gen = by_id["gen-1"]
    assert (gen.host, gen.port, gen.serial) == (
        "127.0.0.1",
        40003,
        None,
    )
    assert (by_id["srv-1"].host, by_id["srv-1"].port) == (
        "127.0.0.1",
        40004,
    )
    assert by_id["uplinks"].links == ["eth0"]
    # No simulated counterpart: a UPS the simulator has not, SNMPv3, a server without a BMC.
    assert skipped == ["ups-x", "pdu-v3", "srv-2"]


def test_the_nut_face_never_listens_where_the_sites_secondaries_are() -> None:
    site, drilled, _ = aimed()
    assert site.sections["nut_server"].listen == "0.0.0.0:3493"
    assert drilled.sections["nut_server"].listen == "127.0.0.1:0"
    _, drilled, _ = aimed({"nut_face_listen": "127.0.0.1:5555"})
    assert drilled.sections["nut_server"].listen == "127.0.0.1:5555"
    # The other keys of the section stay as the site file has them.
    assert [u.name for u in drilled.sections["nut_server"].users] == ["upsmon"]
