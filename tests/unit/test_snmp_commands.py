"""Profile `commands:` as data (drivers/snmp/commands.py): per-row commands expand to one action
per row the last poll saw, and an action name finds its command and row index back."""

from __future__ import annotations

from facility_agent.drivers.snmp.commands import Command, expand, find
from facility_agent.drivers.snmp.profile import load_profile

ROWS = {"outlet": {"1": (0, 1), "2": (0, 2), "AA1": (1, 1, 1)}}
COMMANDS = {
    "outlet.{key}.load.off": Command(oid="x.{index}", value=0, rows="outlet"),
    "load.off": Command(oid="y.1", value=1),
}


def test_per_row_commands_expand_over_the_rows_seen() -> None:
    assert expand(COMMANDS, ROWS) == [
        "outlet.1.load.off",
        "outlet.2.load.off",
        "outlet.AA1.load.off",
        "load.off",
    ]
    assert expand(COMMANDS, {}) == ["load.off"]  # no poll yet: only the scalar ones


def test_an_action_finds_its_row_index() -> None:
    found = find(COMMANDS, ROWS, "outlet.AA1.load.off")
    assert found is not None and found[1] == (1, 1, 1)
    found = find(COMMANDS, ROWS, "load.off")
    assert found is not None and found[1] == ()
    assert find(COMMANDS, ROWS, "outlet.9.load.off") is None
    assert find(COMMANDS, ROWS, "outlet..load.off") is None
    assert find(COMMANDS, ROWS, "outlet.1.load.on") is None


def test_values_go_on_the_wire_with_their_type() -> None:
    assert Command(oid="a.1", value=2).wire_value() == (0x02, 2)
    assert Command(oid="a.1", value=7, type="unsigned").wire_value() == (0x42, 7)
    assert Command(oid="a.1", value="on", type="string").wire_value() == (0x04, b"on")


def test_hpe_outlet_rows_are_indexed_by_pdu_then_outlet() -> None:
    """The OID of a per-row command is the base plus the row's full index (PDU 0, outlet 6)."""
    hpe = load_profile("hpe-epdu")
    cmd, index = find(hpe.commands, {"outlet": {"6": (0, 6)}}, "outlet.6.load.off") or (None, ())
    assert cmd is not None and cmd.value == 0
    assert hpe.resolve(cmd.base) + index == (1, 3, 6, 1, 4, 1, 232, 165, 7, 5, 2, 1, 2, 0, 6)
