"""The SNMP face of the simulated site: every UPS card, PDU, transfer switch and switch answers
SNMP v1/v2c (GET, GETNEXT, GETBULK) from the one physical model, and sends traps when it changes.

Many agents, one process, one UDP port: the community selects the agent, as snmpsim does
(`snmpget -v2c -c pdu-a 127.0.0.1:PORT ...`). Communities are the equipment names of the site
file (`ups-a`, `pdu-a`, `ats-1`) and `switch` for the uplinks; an unknown community is dropped
without an answer, like a real agent. Benchmarks point hundreds of pollers at the one port.

Each agent's OIDs are fixed when the face starts (the site's layout does not change); their
values are read from the model at every request. A small BER codec keeps a request at a few tens
of microseconds, so the simulator is never the bottleneck of a benchmark (pysnmp's responder
costs milliseconds). It is `facility_wire.ber`, the driver's own codec: a leaf package that
imports nothing of the agent, so simulators still never import the agent.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, cast

from facility_agent.simulators.site import SimulatedSite, Ups
from facility_wire import ber
from facility_wire.ber import BerError

log = logging.getLogger(__name__)

Oid = tuple[int, ...]
#: (BER tag, value): int for numbers, bytes/str for strings, tuple for OIDs, None for markers.
Value = tuple[int, Any]
Getter = Callable[["_Read"], Value]

INTEGER, OCTETS, NULL, OBJID, SEQ = (
    ber.INTEGER,
    ber.OCTET_STRING,
    ber.NULL,
    ber.OBJECT_ID,
    ber.SEQUENCE,
)
COUNTER32, GAUGE32, TIMETICKS = ber.COUNTER32, ber.GAUGE32, ber.TIMETICKS
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB = (
    ber.NO_SUCH_OBJECT,
    ber.NO_SUCH_INSTANCE,
    ber.END_OF_MIB_VIEW,
)
GET, GETNEXT, RESPONSE, GETBULK, TRAP2 = ber.GET, ber.GETNEXT, ber.RESPONSE, ber.GETBULK, ber.TRAP2
#: Largest response we build; snmpd sends up to its max message size too.
MAX_RESPONSE = 8000
#: GETBULK rows served per request at most, whatever max-repetitions asks.
MAX_REPETITIONS = 500

SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
UPS_MIB = (1, 3, 6, 1, 2, 1, 33, 1)
APC_UPS = (1, 3, 6, 1, 4, 1, 318, 1, 1, 1)
APC_PDU2 = (1, 3, 6, 1, 4, 1, 318, 1, 1, 26)
APC_ATS = (1, 3, 6, 1, 4, 1, 318, 1, 1, 8)
APC_TRAPS = (1, 3, 6, 1, 4, 1, 318, 0)
EATON_EPDU = (1, 3, 6, 1, 4, 1, 534, 6, 6, 7)
IF_ENTRY = (1, 3, 6, 1, 2, 1, 2, 2, 1)
UPS_TRAP_ON_BATTERY = (1, 3, 6, 1, 2, 1, 33, 2, 0, 1)
LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
LINK_UP = (1, 3, 6, 1, 6, 3, 1, 1, 5, 4)
#: PowerNet-MIB rack ATS traps (TRAP-TYPE ENTERPRISE apc, i.e. enterprises.318.0.N).
ATS_SOURCE_SWITCHED, ATS_LOST_REDUNDANCY, ATS_REDUNDANCY_RESTORED = 126, 127, 128


# ---- BER, agent side (the codec is facility_wire.ber, shared with the driver) -------------

_REQUESTS = frozenset({GET, GETNEXT, GETBULK})


def _enc_value(value: Value) -> bytes:
    """The model's values fit the wire: counters wrap at 2^32, integers clamp to Integer32."""
    tag, raw = value
    if tag in (COUNTER32, GAUGE32, TIMETICKS):
        return ber.enc_int(int(raw) & 0xFFFFFFFF, tag)
    if tag == INTEGER:
        return ber.enc_int(min(max(int(raw), -(2**31)), 2**31 - 1))
    return ber.enc_value((tag, raw))


def _enc_varbind(oid: Oid, value: Value) -> bytes:
    return ber.tlv(SEQ, ber.enc_oid(oid) + _enc_value(value))


@dataclass
class Request:
    version: int
    community: bytes
    pdu: int
    request_id: int
    non_repeaters: int
    max_repetitions: int
    oids: list[Oid]


def decode_request(data: bytes) -> Request:
    """A GET, GETNEXT or GETBULK; anything else (or malformed) raises BerError."""
    msg = ber.decode_message(data, _REQUESTS)
    oids = [oid for oid, _ in msg.varbinds]
    return Request(
        msg.version, msg.community, msg.pdu_type, msg.request_id, msg.field1, msg.field2, oids
    )


encode_message = ber.encode_message


# ---- agents -------------------------------------------------------------------------------


class _Read:
    """One request's view of the model: NUT variables computed once per UPS per request."""

    __slots__ = ("_nut", "face", "site")

    def __init__(self, face: SnmpAgentFace) -> None:
        self.face = face
        self.site = face.site
        self._nut: dict[str, dict[str, str]] = {}

    def nut(self, ups: str) -> dict[str, str]:
        found = self._nut.get(ups)
        if found is None:
            found = self._nut[ups] = self.site.ups[ups].nut_vars()
        return found

    def num(self, ups: str, var: str) -> float:
        try:
            return float(self.nut(ups)[var])
        except (KeyError, ValueError):
            return 0.0


@dataclass
class Agent:
    """One simulated SNMP agent: a sorted, fixed set of OIDs with live getters."""

    name: str
    kind: str
    objects: dict[Oid, Getter] = field(default_factory=dict)
    order: list[Oid] = field(default_factory=list)

    def add(self, oid: Oid, getter: Getter) -> None:
        self.objects[oid] = getter

    def seal(self) -> None:
        self.order = sorted(self.objects)

    def next_after(self, oid: Oid) -> Oid | None:
        i = bisect.bisect_right(self.order, oid)
        return self.order[i] if i < len(self.order) else None


def _s(text: str) -> Getter:
    return lambda r: (OCTETS, text)


def _i(fn: Callable[[_Read], float], tag: int = INTEGER) -> Getter:
    return lambda r: (tag, round(fn(r)))


def _tenths(device: str, metric: str) -> Callable[[_Read], float]:
    """A model value in tenths (PowerNet-MIB's upsHighPrec* objects)."""
    return lambda r: r.num(device, metric) * 10


def _c(value: int, tag: int = INTEGER) -> Getter:
    return lambda r: (tag, value)


def _at(fn: Callable[[_Read, int], float], n: int, tag: int = INTEGER) -> Getter:
    """A getter for row `n` of a table whose cells all come from `fn(read, n)`."""
    return lambda r: (tag, round(fn(r, n)))


def _system(agent: Agent, descr: str, object_id: Oid, face: SnmpAgentFace) -> None:
    base = (1, 3, 6, 1, 2, 1, 1)
    agent.add((*base, 1, 0), _s(descr))
    agent.add((*base, 2, 0), lambda r: (OBJID, object_id))
    agent.add((*base, 3, 0), lambda r: (TIMETICKS, r.face.uptime_ticks()))
    agent.add((*base, 4, 0), _s("facility-agent simulator"))
    agent.add((*base, 5, 0), _s(agent.name))
    agent.add((*base, 6, 0), _s(face.site.name))
    agent.add((*base, 7, 0), lambda r: (INTEGER, 72))


def _ups_agent(face: SnmpAgentFace, ups: Ups) -> Agent:
    name, c = ups.name, ups.cfg
    a = Agent(name, "ups")
    _system(a, f"{c.mfr} {c.model} (simulated UPS network card)", (*APC_UPS[:7], 3, 2, 1), face)
    u = UPS_MIB
    s = face.site

    def state(r: _Read) -> Ups:
        return r.site.ups[name]

    def battery_status(r: _Read) -> float:
        x = state(r)
        return 4 if x.charge <= 0.5 else 3 if x.low_battery else 2

    def output_source(r: _Read) -> float:
        x = state(r)
        return 2 if not x.output_on else 5 if x.on_battery else 3

    def alarms(r: _Read) -> float:
        x = state(r)
        return int(x.on_battery) + int(x.low_battery) + int(x.replace_battery)

    a.add((*u, 1, 1, 0), _s(c.mfr))
    a.add((*u, 1, 2, 0), _s(c.model))
    a.add((*u, 1, 3, 0), _s("sim-1.0"))
    a.add((*u, 1, 4, 0), _s("facility-sim-snmp 1.0"))
    a.add((*u, 1, 5, 0), lambda r: (OCTETS, state(r).ups_id))
    a.add((*u, 2, 1, 0), _i(battery_status))
    a.add((*u, 2, 2, 0), _i(lambda r: face.seconds_on_battery(name)))
    a.add((*u, 2, 3, 0), _i(lambda r: r.num(name, "battery.runtime") // 60))
    a.add((*u, 2, 4, 0), _i(lambda r: r.num(name, "battery.charge")))
    a.add((*u, 2, 5, 0), _i(lambda r: r.num(name, "battery.voltage") * 10))
    a.add((*u, 2, 7, 0), _i(lambda r: r.num(name, "ups.temperature")))
    a.add((*u, 3, 1, 0), _i(lambda r: face.line_bads(name), COUNTER32))
    a.add((*u, 3, 2, 0), _i(lambda r: 1))
    a.add((*u, 3, 3, 1, 1, 1), _i(lambda r: 1))
    a.add((*u, 3, 3, 1, 2, 1), _i(lambda r: r.num(name, "input.frequency") * 10))
    a.add((*u, 3, 3, 1, 3, 1), _i(lambda r: r.num(name, "input.voltage")))
    a.add((*u, 4, 1, 0), _i(output_source))
    a.add((*u, 4, 2, 0), _i(lambda r: r.num(name, "output.frequency") * 10))
    a.add((*u, 4, 3, 0), _i(lambda r: 1))
    a.add((*u, 4, 4, 1, 1, 1), _i(lambda r: 1))
    a.add((*u, 4, 4, 1, 2, 1), _i(lambda r: r.num(name, "output.voltage")))
    a.add((*u, 4, 4, 1, 3, 1), _i(lambda r: state(r).load_w / 230.0 * 10))
    a.add((*u, 4, 4, 1, 4, 1), _i(lambda r: state(r).load_w))
    a.add((*u, 4, 4, 1, 5, 1), _i(lambda r: r.num(name, "ups.load")))
    a.add((*u, 6, 1, 0), _i(alarms, GAUGE32))
    a.add((*u, 9, 1, 0), _i(lambda r: 230))
    a.add((*u, 9, 6, 0), _i(lambda r: c.realpower_nominal))
    a.add((*u, 9, 7, 0), _i(lambda r: state(r).runtime_low / 60))

    p = APC_UPS

    def apc_output(r: _Read) -> float:
        x = state(r)
        return 7 if not x.output_on else 3 if x.on_battery else 2

    a.add((*p, 1, 1, 1, 0), _s(c.model))
    a.add((*p, 1, 1, 2, 0), lambda r: (OCTETS, state(r).ups_id))
    a.add((*p, 1, 2, 1, 0), _s("sim-1.0"))
    a.add((*p, 1, 2, 3, 0), _s(c.serial or f"SIM-{name}"))
    a.add((*p, 2, 1, 1, 0), _i(lambda r: 3 if state(r).low_battery else 2))
    a.add((*p, 2, 2, 1, 0), _i(lambda r: r.num(name, "battery.charge"), GAUGE32))
    a.add((*p, 2, 2, 2, 0), _i(lambda r: r.num(name, "ups.temperature"), GAUGE32))
    a.add((*p, 2, 2, 3, 0), _i(lambda r: r.num(name, "battery.runtime") * 100, TIMETICKS))
    a.add((*p, 2, 2, 4, 0), _i(lambda r: 2 if state(r).replace_battery else 1))
    a.add((*p, 2, 2, 8, 0), _i(lambda r: r.num(name, "battery.voltage")))
    a.add((*p, 3, 2, 1, 0), _i(lambda r: r.num(name, "input.voltage"), GAUGE32))
    a.add((*p, 3, 2, 4, 0), _i(lambda r: r.num(name, "input.frequency"), GAUGE32))
    a.add((*p, 4, 1, 1, 0), _i(apc_output))
    a.add((*p, 4, 2, 1, 0), _i(lambda r: r.num(name, "output.voltage"), GAUGE32))
    a.add((*p, 4, 2, 2, 0), _i(lambda r: r.num(name, "output.frequency"), GAUGE32))
    a.add((*p, 4, 2, 3, 0), _i(lambda r: r.num(name, "ups.load"), GAUGE32))
    a.add((*p, 4, 2, 4, 0), _i(lambda r: state(r).load_w / 230.0, GAUGE32))
    # upsHighPrec*: the same in tenths, as NMC2/NMC3 cards serve them beside upsAdv*.
    for sub, metric in (
        ((2, 3, 1), "battery.charge"),
        ((2, 3, 2), "ups.temperature"),
        ((3, 3, 1), "input.voltage"),
        ((3, 3, 4), "input.frequency"),
        ((4, 3, 1), "output.voltage"),
        ((4, 3, 2), "output.frequency"),
        ((4, 3, 3), "ups.load"),
    ):
        a.add((*p, *sub, 0), _i(_tenths(name, metric), GAUGE32))
    a.add((*p, 2, 3, 4, 0), _i(lambda r: r.num(name, "battery.voltage") * 10))
    a.add((*p, 4, 3, 4, 0), _i(lambda r: state(r).load_w / 23.0, GAUGE32))
    del s
    return a


def _pdu_agent(face: SnmpAgentFace, name: str, outlets: int) -> Agent:
    pdu = face.site.pdus[name]
    a = Agent(name, "pdu")
    desc = pdu.cfg.description or name
    _system(a, f"APC Rack PDU AP8941 (simulated): {desc}", (*APC_UPS[:7], 3, 4, 6), face)

    def watts(r: _Read, n: int) -> float:
        p = r.site.pdus[name]
        return p.outlet_watts(n) if n in p.outlets else 0.0

    def amps(r: _Read, n: int) -> float:
        p = r.site.pdus[name]
        return watts(r, n) / p.voltage if p.voltage else 0.0

    def label(n: int) -> str:
        used = pdu.outlets.get(n)
        return used[0].name if used else f"Outlet {n}"

    half = max(1, outlets // 2)

    def bank(r: _Read, b: int) -> float:
        lo, hi = (1, half) if b == 1 else (half + 1, outlets)
        return sum(amps(r, n) for n in range(lo, hi + 1))

    q = APC_PDU2
    # rPDU2IdentTable is {rPDU2 2}, its entry {rPDU2IdentTable 1}: column N of row 1 is 2.1.N.1.
    a.add((*q, 2, 1, 1, 1), _i(lambda r: 1))
    a.add((*q, 2, 1, 3, 1), _s(desc))
    a.add((*q, 2, 1, 8, 1), _s("AP8941"))
    a.add((*q, 2, 1, 9, 1), _s(f"SIM-{name.upper()}"))
    a.add((*q, 4, 3, 1, 5, 1), _i(lambda r: r.site.pdus[name].load_w / 10))
    a.add((*q, 6, 3, 1, 1, 1), _i(lambda r: 1))
    a.add((*q, 6, 3, 1, 4, 1), _i(lambda r: 1 if r.site.pdus[name].current < 0.1 else 2))
    a.add((*q, 6, 3, 1, 5, 1), _i(lambda r: r.site.pdus[name].current * 10, GAUGE32))
    a.add((*q, 6, 3, 1, 6, 1), _i(lambda r: r.site.pdus[name].voltage))
    a.add((*q, 6, 3, 1, 7, 1), _i(lambda r: r.site.pdus[name].load_w / 10))
    for b in (1, 2):
        a.add((*q, 8, 3, 1, 1, b), _c(b))
        a.add((*q, 8, 3, 1, 4, b), _at(lambda r, b: 1 if bank(r, b) < 0.1 else 2, b))
        a.add((*q, 8, 3, 1, 5, b), _at(lambda r, b: bank(r, b) * 10, b, GAUGE32))
    e = EATON_EPDU
    a.add((*e, 1, 2, 1, 2, 0), _s("Eaton ePDU G3 (simulated)"))
    a.add((*e, 1, 2, 1, 3, 0), _s("EMA107-10"))
    a.add((*e, 1, 2, 1, 4, 0), _s(f"SIM-{name.upper()}"))
    a.add((*e, 1, 2, 1, 5, 0), _s("sim-1.0"))
    a.add((*e, 3, 1, 1, 3, 0, 1), _i(lambda r: 500 if r.site.pdus[name].live else 0))
    a.add((*e, 3, 2, 1, 3, 0, 1, 1), _i(lambda r: r.site.pdus[name].voltage * 1000))
    a.add((*e, 3, 3, 1, 4, 0, 1, 1), _i(lambda r: r.site.pdus[name].current * 1000))
    a.add((*e, 3, 4, 1, 4, 0, 1, 1), _i(lambda r: r.site.pdus[name].load_w))
    for n in range(1, outlets + 1):
        a.add((*q, 9, 2, 3, 1, 1, n), _c(n))
        a.add((*q, 9, 2, 3, 1, 3, n), _s(label(n)))
        a.add((*q, 9, 2, 3, 1, 5, n), _i(lambda r: 2))
        a.add((*q, 9, 4, 3, 1, 1, n), _c(n))
        a.add((*q, 9, 4, 3, 1, 3, n), _s(label(n)))
        a.add((*q, 9, 4, 3, 1, 4, n), _c(n))
        a.add((*q, 9, 4, 3, 1, 5, n), _at(lambda r, n: 1 if amps(r, n) < 0.1 else 2, n))
        a.add((*q, 9, 4, 3, 1, 6, n), _at(lambda r, n: amps(r, n) * 10, n, GAUGE32))
        a.add((*q, 9, 4, 3, 1, 7, n), _at(watts, n, GAUGE32))
        a.add((*e, 6, 1, 1, 3, 0, n), _s(label(n)))
        a.add((*e, 6, 4, 1, 3, 0, n), _at(lambda r, n: amps(r, n) * 1000, n))
        a.add((*e, 6, 5, 1, 3, 0, n), _at(watts, n))
        a.add((*e, 6, 6, 1, 2, 0, n), _i(lambda r: 1))
    return a


def _ats_source_ok(site: SimulatedSite, src: int) -> bool:
    """Source A (1) is the utility; source B (2) the generator, healthy while it runs or stands
    ready to start."""
    if src == 1:
        return bool(site.utility.up)
    gen = site.generator
    return gen is not None and gen.state != "fault"


def _ats_agent(face: SnmpAgentFace) -> Agent:
    site = face.site
    assert site.ats is not None
    name = site.ats.name
    a = Agent(name, "ats")
    _system(a, "APC Rack ATS AP4421 (simulated)", (*APC_UPS[:7], 3, 11), face)
    t = APC_ATS

    def a_ok(r: _Read) -> bool:
        return _ats_source_ok(r.site, 1)

    def b_ok(r: _Read) -> bool:
        return _ats_source_ok(r.site, 2)

    def volts(r: _Read, src: int) -> float:
        if src == 1:
            return r.site.utility.voltage
        gen = r.site.generator
        return gen.voltage if gen else 0.0

    def freq(r: _Read, src: int) -> float:
        if src == 1:
            return r.site.utility.frequency
        gen = r.site.generator
        return gen.frequency if gen else 0.0

    def load_w(r: _Read) -> float:
        ats = r.site.ats
        return sum(u.input_power_w for u in r.site.ups.values() if ats and u.cfg.input == ats.name)

    def out_v(r: _Read) -> float:
        return r.site.source(name)[1]

    a.add((*t, 1, 1, 0), _s("R01"))
    a.add((*t, 1, 2, 0), _s("sim-1.0"))
    a.add((*t, 1, 5, 0), _s("AP4421"))
    a.add((*t, 1, 6, 0), _s("SIM-ATS-0001"))
    a.add((*t, 5, 1, 1, 0), _i(lambda r: 2))
    a.add((*t, 5, 1, 2, 0), _i(lambda r: 1 if r.site.ats and r.site.ats.source == "utility" else 2))
    a.add((*t, 5, 1, 3, 0), _i(lambda r: 2 if a_ok(r) and b_ok(r) else 1))
    a.add((*t, 5, 1, 12, 0), _i(lambda r: 2 if a_ok(r) else 1))
    a.add((*t, 5, 1, 13, 0), _i(lambda r: 2 if b_ok(r) else 1))
    a.add((*t, 5, 1, 15, 0), _i(lambda r: 2 if r.site.ats and r.site.ats.live else 1))
    for src in (1, 2):
        a.add((*t, 5, 3, 2, 1, 1, src), _c(src))
        a.add((*t, 5, 3, 2, 1, 4, src), _at(freq, src))
        a.add((*t, 5, 3, 2, 1, 6, src), _s("Source A" if src == 1 else "Source B"))
        a.add((*t, 5, 3, 3, 1, 3, src, 1, 1), _at(volts, src))
    a.add((*t, 5, 4, 2, 1, 4, 1), _i(lambda r: r.site.source(name)[2]))
    a.add((*t, 5, 4, 5, 1, 4, 1), _i(lambda r: load_w(r) / 230.0 * 10 if out_v(r) else 0, GAUGE32))
    a.add((*t, 5, 4, 5, 1, 6, 1), _i(out_v))
    a.add((*t, 5, 4, 5, 1, 15, 1), _i(lambda r: load_w(r) if out_v(r) else 0))
    return a


def _switch_agent(face: SnmpAgentFace, name: str) -> Agent:
    a = Agent(name, "switch")
    _system(a, "Simulated edge switch (IF-MIB)", (1, 3, 6, 1, 4, 1, 8072, 3, 2, 10), face)
    links = list(face.site.uplinks)
    a.add((1, 3, 6, 1, 2, 1, 2, 1, 0), _i(lambda r: len(links)))
    for i, link in enumerate(links, start=1):
        rate = 125_000 * i  # bytes per simulated second

        a.add((*IF_ENTRY, 1, i), _c(i))
        a.add((*IF_ENTRY, 2, i), _s(link))
        a.add((*IF_ENTRY, 3, i), _i(lambda r: 6))
        a.add((*IF_ENTRY, 5, i), _i(lambda r: 1_000_000_000, GAUGE32))
        a.add((*IF_ENTRY, 7, i), _i(lambda r: 1))
        a.add((*IF_ENTRY, 8, i), _at(lambda r, j: 1 if r.site.uplinks[links[j]].up else 2, i - 1))
        a.add((*IF_ENTRY, 10, i), _at(lambda r, k: r.site.time * k, rate, COUNTER32))
        a.add((*IF_ENTRY, 16, i), _at(lambda r, k: r.site.time * k / 2, rate, COUNTER32))
    return a


# ---- the face -----------------------------------------------------------------------------


@dataclass
class SnmpStats:
    requests: int = 0
    dropped: int = 0
    traps_sent: int = 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, face: SnmpAgentFace) -> None:
        self.face = face
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.face.handle(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@dataclass(eq=False)
class SnmpAgentFace:
    """Every SNMP agent of the simulated site on one UDP port, chosen by community."""

    site: SimulatedSite
    host: str = "127.0.0.1"
    #: UDP port; 0 = any free port. Once started: the port it listens on.
    port: int = 0
    _: KW_ONLY
    #: Where the agents send their v2c traps: (host, port) pairs.
    trap_targets: Sequence[tuple[str, int]] = ()
    trap_community: str = "public"
    #: Outlets each PDU shows (at least those the site wires).
    pdu_outlets: int = 24
    #: The community of the agent that shows the uplinks.
    switch_name: str = "switch"
    #: Real seconds between two looks at the model for changes that send traps.
    tick: float = 0.1

    def __post_init__(self) -> None:
        site = self.site
        self.stats = SnmpStats()
        self.agents: dict[bytes, Agent] = {}
        for ups in site.ups.values():
            self._register(_ups_agent(self, ups))
        for name in site.pdus:
            outlets = max(self.pdu_outlets, *site.pdus[name].outlets, 1)
            self._register(_pdu_agent(self, name, outlets))
        if site.ats is not None:
            self._register(_ats_agent(self))
        if site.uplinks:
            self._register(_switch_agent(self, self.switch_name))
        self._started = time.monotonic()
        self._transport: asyncio.DatagramTransport | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._on_battery_since: dict[str, float] = {}
        self._line_bads: dict[str, int] = {}
        self._seen: dict[str, Any] = {}

    def _register(self, agent: Agent) -> None:
        agent.seal()
        self.agents[agent.name.encode()] = agent

    @property
    def communities(self) -> list[str]:
        return [a.name for a in self.agents.values()]

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self._seen = self._observe()
        self._watcher = asyncio.create_task(self._watch(), name="snmp-traps")

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._transport:
            self._transport.close()
            self._transport = None

    # ---- values the model does not keep ---------------------------------------------------

    def uptime_ticks(self) -> int:
        return int((time.monotonic() - self._started) * 100) & 0xFFFFFFFF

    def seconds_on_battery(self, ups: str) -> float:
        since = self._on_battery_since.get(ups)
        return self.site.time - since if since is not None else 0.0

    def line_bads(self, ups: str) -> int:
        return self._line_bads.get(ups, 0)

    # ---- requests -----------------------------------------------------------------------

    def handle(self, data: bytes) -> bytes | None:
        """The response datagram to one request, or None to stay silent."""
        try:
            req = decode_request(data)
        except BerError:
            self.stats.dropped += 1
            return None
        agent = self.agents.get(req.community)
        if agent is None or (req.pdu == GETBULK and req.version == 0):
            self.stats.dropped += 1
            return None
        self.stats.requests += 1
        read = _Read(self)
        try:
            if req.pdu == GETBULK:
                vbs, status, index = self._bulk(agent, read, req), 0, 0
            else:
                vbs, status, index = self._get(agent, read, req)
        except Exception:
            log.exception("SNMP agent %s failed to answer", agent.name)
            vbs, status, index = b"".join(_enc_varbind(o, (NULL, None)) for o in req.oids), 5, 1
        return encode_message(
            req.version, req.community, RESPONSE, req.request_id, status, index, vbs
        )

    def _get(self, agent: Agent, read: _Read, req: Request) -> tuple[bytes, int, int]:
        out = []
        for n, oid in enumerate(req.oids, start=1):
            target: Oid | None = oid
            if req.pdu == GETNEXT:
                target = agent.next_after(oid)
            getter = agent.objects.get(target) if target is not None else None
            if getter is None or target is None:
                if req.version == 0:
                    # v1 has no exceptions: the whole request fails with noSuchName.
                    vbs = b"".join(_enc_varbind(o, (NULL, None)) for o in req.oids)
                    return vbs, 2, n
                marker = END_OF_MIB if req.pdu == GETNEXT else NO_SUCH_OBJECT
                out.append(_enc_varbind(oid, (marker, None)))
            else:
                out.append(_enc_varbind(target, getter(read)))
        return b"".join(out), 0, 0

    def _bulk(self, agent: Agent, read: _Read, req: Request) -> bytes:
        non_rep = max(0, min(req.non_repeaters, len(req.oids)))
        reps = max(0, min(req.max_repetitions, MAX_REPETITIONS))
        out: list[bytes] = []
        size = 0

        def step(oid: Oid) -> tuple[Oid, bytes]:
            nxt = agent.next_after(oid)
            if nxt is None:
                return oid, _enc_varbind(oid, (END_OF_MIB, None))
            return nxt, _enc_varbind(nxt, agent.objects[nxt](read))

        for oid in req.oids[:non_rep]:
            _, vb = step(oid)
            out.append(vb)
            size += len(vb)
        cursors = list(req.oids[non_rep:])
        for _ in range(reps if cursors else 0):
            row = []
            for i, oid in enumerate(cursors):
                cursors[i], vb = step(oid)
                row.append(vb)
            row_size = sum(map(len, row))
            if size + row_size > MAX_RESPONSE and out:
                break
            out.extend(row)
            size += row_size
            if all(agent.next_after(c) is None for c in cursors):
                break
        return b"".join(out)

    # ---- traps --------------------------------------------------------------------------

    def _observe(self) -> dict[str, Any]:
        s = self.site
        return {
            "ob": {n: u.on_battery for n, u in s.ups.items()},
            "lb": {n: u.low_battery for n, u in s.ups.items()},
            "pdu": {n: p.live for n, p in s.pdus.items()},
            "link": {n: u.up for n, u in s.uplinks.items()},
            "ats": ((s.ats.source, _ats_source_ok(s, 1), _ats_source_ok(s, 2)) if s.ats else None),
        }

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.check_changes()
            except Exception:
                log.exception("SNMP trap watcher failed")

    def check_changes(self) -> None:
        """Compare the model with what was last seen and send the traps real gear would."""
        now, before = self._observe(), self._seen
        self._seen = now
        for ups, ob in now["ob"].items():
            if ob and not before["ob"].get(ups):
                self._on_battery_since[ups] = self.site.time
                self._line_bads[ups] = self._line_bads.get(ups, 0) + 1
                rt = (1, 3, 6, 1, 2, 1, 33, 1, 2, 3, 0)
                minutes = self.site.ups[ups].runtime // 60
                self.send_trap(
                    UPS_TRAP_ON_BATTERY,
                    [(rt, (INTEGER, int(minutes))), ((*UPS_MIB, 2, 2, 0), (INTEGER, 0))],
                )
            elif not ob and before["ob"].get(ups):
                self._on_battery_since.pop(ups, None)
                self.send_trap(
                    (*APC_TRAPS, 9), [(_MTRAP_STRING, (OCTETS, f"{ups}: power restored"))]
                )
        for ups, lb in now["lb"].items():
            if lb != before["lb"].get(ups):
                code = 7 if lb else 11
                text = "low battery" if lb else "battery no longer low"
                self.send_trap((*APC_TRAPS, code), [(_MTRAP_STRING, (OCTETS, f"{ups}: {text}"))])
        for pdu, live in now["pdu"].items():
            if live != before["pdu"].get(pdu):
                code = 41 if live else 42
                for outlet in sorted(self.site.pdus[pdu].outlets):
                    self.send_trap(
                        (*APC_TRAPS, code),
                        [
                            (_MTRAP_INTEGER, (INTEGER, outlet)),
                            (_MTRAP_STRING, (OCTETS, f"{pdu} outlet {outlet}")),
                        ],
                    )
        if now["ats"] is not None and before.get("ats") is not None:
            self._ats_traps(before["ats"], now["ats"])
        links = list(self.site.uplinks)
        for link, up in now["link"].items():
            if up != before["link"].get(link):
                i = links.index(link) + 1
                self.send_trap(
                    LINK_UP if up else LINK_DOWN,
                    [
                        ((*IF_ENTRY, 1, i), (INTEGER, i)),
                        ((*IF_ENTRY, 7, i), (INTEGER, 1)),
                        ((*IF_ENTRY, 8, i), (INTEGER, 1 if up else 2)),
                    ],
                )

    def _ats_traps(self, before: tuple[str, bool, bool], now: tuple[str, bool, bool]) -> None:
        """PowerNet-MIB's rack ATS traps: a source lost while both were fine (lost redundancy),
        both fine again (redundancy restored), a transfer (source switched). Arguments as the
        MIB defines them: mtrapargsInteger = the source (0 = A, 1 = B), mtrapargsString02 = its
        name, mtrapargsString = a text."""
        name = self.site.ats.name if self.site.ats else "ats"

        def send(code: int, src: int, text: str) -> None:
            label = "Source A" if src == 0 else "Source B"
            self.send_trap(
                (*APC_TRAPS, code),
                [
                    (_MTRAP_INTEGER, (INTEGER, src)),
                    (_MTRAP_STRING02, (OCTETS, label)),
                    (_MTRAP_STRING, (OCTETS, f"{name}: {text} ({label})")),
                ],
            )

        was_a, was_b = before[1], before[2]
        is_a, is_b = now[1], now[2]
        if was_a and was_b and not (is_a and is_b):
            send(ATS_LOST_REDUNDANCY, 0 if not is_a else 1, "lost redundancy")
        elif is_a and is_b and not (was_a and was_b):
            send(ATS_REDUNDANCY_RESTORED, 0 if not was_a else 1, "redundancy restored")
        if now[0] != before[0]:
            send(ATS_SOURCE_SWITCHED, 0 if now[0] == "utility" else 1, "switched source")

    def send_trap(self, trap_oid: Oid, varbinds: list[tuple[Oid, Value]]) -> None:
        """An SNMPv2c trap to every configured receiver, from the agents' own port."""
        if not self.trap_targets or self._transport is None:
            return
        vbs = _enc_varbind(SYS_UPTIME, (TIMETICKS, self.uptime_ticks()))
        vbs += _enc_varbind(SNMP_TRAP_OID, (OBJID, trap_oid))
        vbs += b"".join(_enc_varbind(o, v) for o, v in varbinds)
        self._trap_id = (getattr(self, "_trap_id", 0) + 1) & 0x7FFFFFFF
        msg = encode_message(1, self.trap_community.encode(), TRAP2, self._trap_id, 0, 0, vbs)
        for target in self.trap_targets:
            self._transport.sendto(msg, target)
            self.stats.traps_sent += 1


#: PowerNet-MIB trap arguments (mtrapargsInteger.0, mtrapargsString.0).
_MTRAP_INTEGER = (1, 3, 6, 1, 4, 1, 318, 2, 3, 1, 0)
_MTRAP_STRING = (1, 3, 6, 1, 4, 1, 318, 2, 3, 3, 0)
#: mtrapargsString02.0 (mtrapargs 10).
_MTRAP_STRING02 = (1, 3, 6, 1, 4, 1, 318, 2, 3, 10, 0)
