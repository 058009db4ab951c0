"""`profile: auto`: which bundled profile fits an SNMP agent, as NUT's snmp-ups `mibs=auto` does.

One GET asks sysObjectID and every known profile's probe OID (the `detect:` key of each
profile, see docs/profiles.md). A profile fits when its probe answers (or it has none) and, for
a sysObjectID match, when the agent's sysObjectID starts with one of its prefixes. A
sysObjectID match beats a probe-only match; ties go to the higher `priority`, so a vendor MIB
wins over the generic UPS-MIB that the same card also speaks.
"""

from __future__ import annotations

from dataclasses import dataclass

from facility_agent.core.driver import ProtocolError
from facility_agent.drivers.snmp import wire as ber
from facility_agent.drivers.snmp.client import SnmpClient
from facility_agent.drivers.snmp.profile import Profile, bundled_names, load_profile
from facility_agent.drivers.snmp.wire import Oid, VarBind, parse_oid

SYS_OBJECT_ID: Oid = (1, 3, 6, 1, 2, 1, 1, 2, 0)
#: The command a user runs to attach a walk to a bug report (shown when nothing matches).
RECORD_HINT = "facility-agent snmp record {host} -o walk.snmprec"


class NoProfileError(ProtocolError):
    """No bundled profile fits the agent; the message names its sysObjectID and the recorder."""


@dataclass(frozen=True, slots=True)
class Choice:
    """The profile picked for a device and why (shown by `check --probe` and `status`)."""

    profile: str
    reason: str
    sysobjectid: str


def candidates() -> list[tuple[str, Profile]]:
    """Every bundled SNMP profile that has a `detect:` rule."""
    out = []
    for name in bundled_names():
        profile = load_profile(name)
        if profile.detect is not None:
            out.append((name, profile))
    return out


def choose(sysobjectid: str, answered: set[Oid]) -> Choice | None:
    """The best-fitting profile given the agent's sysObjectID and the probes it answered."""
    oid = parse_oid(sysobjectid) if sysobjectid and sysobjectid[0].isdigit() else ()
    found: list[tuple[int, int, str, Choice]] = []
    for name, profile in candidates():
        rule = profile.detect
        assert rule is not None
        probe = parse_oid(rule.probe) if rule.probe is not None else None
        if probe is not None and probe not in answered:
            continue
        prefix = next(
            (p for p in rule.sysobjectid if oid[: len(parse_oid(p))] == parse_oid(p)), None
        )
        if prefix is not None:
            why = f"sysObjectID {sysobjectid} is under {prefix}"
            if rule.probe is not None:
                why += f" and {rule.probe} answers"
        elif rule.probe is not None:
            why = f"{rule.probe} answers (sysObjectID {sysobjectid or '?'} is not one it names)"
        else:
            continue
        found.append((prefix is not None, rule.priority, name, Choice(name, why, sysobjectid)))
    if not found:
        return None
    # sysObjectID match first, then priority, then the name (reproducible ties).
    return min(found, key=lambda f: (-f[0], -f[1], f[2]))[3]


async def detect(client: SnmpClient, host: str) -> Choice:
    """Ask the agent, pick a profile; NoProfileError (a clear message) when none fits."""
    probes = sorted({parse_oid(r.probe) for _, p in candidates() if (r := p.detect) and r.probe})
    answered: set[Oid] = set()
    sysobjectid = ""
    for asked, (_, value) in await _ask(client, "get", [SYS_OBJECT_ID, *probes]):
        if value[0] in ber.EXCEPTIONS:
            continue
        if asked == SYS_OBJECT_ID:
            raw = value[1]
            sysobjectid = ber.oid_str(raw) if isinstance(raw, tuple) else str(raw)
        else:
            answered.add(asked)
    # A probe may name a subtree (a table column whose row indexes differ from unit to unit, as
    # ENTITY-SENSOR's do): it answers when the next object after it lies under it.
    rest = [p for p in probes if p not in answered]
    for asked, (oid, value) in await _ask(client, "get_next", rest):
        if value[0] not in ber.EXCEPTIONS and oid[: len(asked)] == asked:
            answered.add(asked)
    choice = choose(sysobjectid, answered)
    if choice is None:
        raise NoProfileError(
            f"{client.where}: no bundled profile fits this device (sysObjectID "
            f"{sysobjectid or 'not answered'}); name one with `profile:`, or record a walk for "
            f"a bug report: {RECORD_HINT.format(host=host)}"
        )
    return choice


async def _ask(client: SnmpClient, kind: str, oids: list[Oid]) -> list[tuple[Oid, VarBind]]:
    """GET or GETNEXT `oids` in requests of 16, each answer paired with the OID it answers."""
    request = client.get if kind == "get" else client.get_next
    out: list[tuple[Oid, VarBind]] = []
    for i in range(0, len(oids), 16):
        chunk = oids[i : i + 16]
        try:
            out.extend(zip(chunk, await request(chunk), strict=True))
        except ProtocolError as exc:
            if getattr(exc, "status", None) is None:
                raise
            for oid in chunk:  # SNMPv1: noSuchName fails the whole request; ask one by one
                try:
                    out.extend(zip([oid], await request([oid]), strict=True))
                except ProtocolError as one:
                    if getattr(one, "status", None) is None:
                        raise
    return out


__all__ = ["RECORD_HINT", "Choice", "NoProfileError", "candidates", "choose", "detect"]
