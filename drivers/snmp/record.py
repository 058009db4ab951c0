"""`facility-agent snmp record`: a `.snmprec` walk of the objects that matter, for a bug report.

It walks the system group and every subtree a bundled profile reads (its `objects:`, grouped by
enterprise branch), and writes snmpsim's format (`OID|TAG|VALUE`), the one tests/fixtures
replay through snmpd, so a user's recording becomes a test case. Values that identify a unit or
a person are masked: serial numbers (every object a profile publishes as `*.serial`), and
sysContact / sysLocation. Community strings and SNMPv3 keys are never in a walk of these trees.
"""

from __future__ import annotations

from collections.abc import Sequence

from facility_agent.drivers.snmp import wire as ber
from facility_agent.drivers.snmp.client import SnmpClient
from facility_agent.drivers.snmp.profile import bundled_names, load_profile
from facility_agent.drivers.snmp.wire import Oid, Value, VarBind, parse_oid

SYSTEM: Oid = (1, 3, 6, 1, 2, 1, 1)
#: sysContact and sysLocation: personal data, masked like serial numbers.
_PERSONAL: frozenset[Oid] = frozenset({(*SYSTEM, 4, 0), (*SYSTEM, 6, 0)})
MASK = "MASKED"
_TAGS = {
    ber.INTEGER: "2",
    ber.OBJECT_ID: "6",
    ber.COUNTER32: "65",
    ber.GAUGE32: "66",
    ber.TIMETICKS: "67",
    ber.COUNTER64: "70",
}


def subtrees() -> list[Oid]:
    """The system group plus each profile's MIB branch (objects cut to 8 arcs), no overlaps."""
    roots: set[Oid] = {SYSTEM}
    for name in bundled_names():
        for oid in load_profile(name).objects.values():
            roots.add(parse_oid(oid)[:8])
    out: list[Oid] = []
    for root in sorted(roots):
        if not out or root[: len(out[-1])] != out[-1]:
            out.append(root)
    return out


def masked_objects() -> list[Oid]:
    """OID prefixes whose values are masked: every `*.serial` metric of every profile."""
    out: set[Oid] = set(_PERSONAL)
    for name in bundled_names():
        profile = load_profile(name)
        for metric, col in profile.metrics.items():
            if metric.endswith(".serial"):
                out.add(profile.resolve(col.oid))
        for table in profile.tables.values():
            for column, col in table.columns.items():
                if column == "serial":
                    out.add(profile.resolve(col.oid))
    return sorted(out)


async def walk(client: SnmpClient, root: Oid, limit: int = 20_000) -> list[VarBind]:
    """Every varbind under `root` (GETBULK, or GETNEXT on v1), bounded by `limit`."""
    out: list[VarBind] = []
    cursor = root
    while len(out) < limit:
        if client.bulk:
            vbs = await client.get_bulk([cursor], 25)
        else:
            vbs = await client.get_next([cursor])
        if not vbs:
            break
        for oid, value in vbs:
            if value[0] == ber.END_OF_MIB_VIEW or oid[: len(root)] != root or oid <= cursor:
                return out
            if value[0] not in ber.EXCEPTIONS:
                out.append((oid, value))
            cursor = oid
    return out


def _is_masked(oid: Oid, masked: list[Oid]) -> bool:
    return any(oid[: len(m)] == m for m in masked)


def line(oid: Oid, value: Value, masked: list[Oid], serials: Sequence[bytes] = ()) -> str | None:
    """One snmprec line, masked where needed; None for a value snmprec cannot carry."""
    tag, raw = value
    text = ber.oid_str(oid)
    if _is_masked(oid, masked) and tag == ber.OCTET_STRING:
        return f"{text}|4|{MASK}"
    if tag == ber.OCTET_STRING and isinstance(raw, bytes):
        for serial in serials:  # a serial quoted in another object (upsIdentName "ID: ...")
            raw = raw.replace(serial, MASK.encode())
    if tag == ber.OCTET_STRING and isinstance(raw, bytes):
        try:
            plain = raw.decode("ascii")
        except UnicodeDecodeError:
            plain = ""
        if plain and plain.isprintable() and "|" not in plain and plain == plain.strip():
            return f"{text}|4|{plain}"
        return f"{text}|4x|{raw.hex()}"
    if tag == ber.IP_ADDRESS and isinstance(raw, bytes):
        return f"{text}|64|{'.'.join(map(str, raw))}"
    if tag == ber.OBJECT_ID and isinstance(raw, tuple):
        return f"{text}|6|{ber.oid_str(raw)}"
    if tag in _TAGS and isinstance(raw, int):
        return f"{text}|{_TAGS[tag]}|{raw}"
    return None


async def record(client: SnmpClient) -> list[str]:
    """The recording's lines, in OID order."""
    masked = masked_objects()
    found: list[VarBind] = []
    for root in subtrees():
        found.extend(await walk(client, root))
    serials = sorted(
        {
            raw.strip()
            for oid, (tag, raw) in found
            if tag == ber.OCTET_STRING
            and isinstance(raw, bytes)
            and len(raw.strip()) >= 4
            and _is_masked(oid, masked)
        },
        key=len,
        reverse=True,
    )
    lines: list[str] = []
    for oid, value in found:
        text = line(oid, value, masked, serials)
        if text is not None:
            lines.append(text)
    return lines


__all__ = ["MASK", "masked_objects", "record", "subtrees", "walk"]
