"""How `profile: auto` ranks the bundled profiles (drivers/snmp/detect.py): a sysObjectID match
with its probe beats a probe-only match; among equals, the higher priority wins."""

from __future__ import annotations

from facility_agent.drivers.snmp.detect import candidates, choose
from facility_agent.drivers.snmp.wire import parse_oid

MGE = parse_oid("1.3.6.1.4.1.705.1.1.1.0")
XUPS = parse_oid("1.3.6.1.4.1.534.1.1.2.0")
UPS_MIB = parse_oid("1.3.6.1.2.1.33.1")  # a subtree probe: any object under upsObjects
NET_SNMP = "1.3.6.1.4.1.8072.3.2.10"


def test_every_ups_profile_can_be_detected_and_generic_ones_rank_low() -> None:
    rules = {name: p.detect for name, p in candidates()}
    for name in (
        "ups-mib",
        "apc-powernet-ups",
        "eaton-xups",
        "eaton-mge",
        "huawei-ups",
        "cyberpower-cps",
    ):
        assert rules.get(name) is not None, name
    ups_mib = rules["ups-mib"]
    assert ups_mib is not None and not ups_mib.sysobjectid
    assert all(r is None or r.priority >= ups_mib.priority for r in rules.values())


def test_the_sysobjectid_names_the_vendor_mib_over_other_mibs_the_card_speaks() -> None:
    choice = choose("1.3.6.1.4.1.705.1", {MGE, XUPS, UPS_MIB})
    assert choice is not None and choice.profile == "eaton-mge"
    assert choice.reason.startswith("sysObjectID 1.3.6.1.4.1.705.1 is under 1.3.6.1.4.1.705.1")


def test_a_vendor_probe_beats_the_generic_mib_when_the_sysobjectid_names_nothing() -> None:
    choice = choose(NET_SNMP, {XUPS, UPS_MIB})
    assert choice is not None and choice.profile == "eaton-xups"
    assert "is not one it names" in choice.reason


def test_a_sysobjectid_match_needs_its_probe_to_answer() -> None:
    choice = choose("1.3.6.1.4.1.705.1", {UPS_MIB})
    assert choice is not None and choice.profile == "ups-mib"


def test_nothing_answers_nothing_fits() -> None:
    assert choose("1.3.6.1.4.1.99999.1", set()) is None
    assert choose("", set()) is None
