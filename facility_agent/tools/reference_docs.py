"""docs/reference.md, generated from the code and the bundled profiles so it cannot drift:
`python -m facility_agent.tools.reference_docs > docs/reference.md` (a test checks that the
file is current).

Sources: the event types of model.py, the flag rules of state.py, the policy engine's and the
agent's own event types (checked against their source by the test), and every bundled profile's
metrics, flags, events and traps. Metrics that come from a protocol rather than a profile (NUT's
variables, IPMI sensors, the net driver's paths) are described where their driver is.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from typing import Any

import yaml

from facility_agent.core.model import EventType
from facility_agent.runtime.state import STATUS_FLAG_EVENTS

#: Events raised outside state.py's flag rules: (type, severity, raised by, when).
OTHER_EVENTS: tuple[tuple[str, str, str, str], ...] = (
    ("device.comm_lost", "warning/critical", "agent", "a device missed `lost_after` polls "
     "(critical when last known on battery)"),
    ("device.comm_restored", "info", "agent", "a lost device answers again"),
    ("power.low_battery_unconfirmed", "warning", "policy", "LB without corroboration: no shutdown"),
    ("policy.trigger_blind", "warning", "policy", "a trigger's input stayed unknown `stale_after`: "
     "it neither fires nor clears"),
    ("policy.trigger_sees", "info", "policy", "a blind trigger's inputs read again"),
    ("redundancy.degraded", "warning/critical", "policy", "a group has fewer healthy members "
     "than all (critical below `min`)"),
    ("redundancy.lost", "critical", "policy", "no member of a group is healthy any more"),
    ("redundancy.restored", "info", "policy", "every member of a group is healthy again"),
    ("shutdown.started", "critical", "policy", "a trigger fired: the plan starts"),
    ("shutdown.step", "info/warning", "policy", "one step of the plan ended (warning: failed)"),
    ("shutdown.completed", "critical", "policy", "every stage ran"),
    ("shutdown.cancelled", "warning", "policy", "power came back before the point of no return"),
    ("shutdown.failed", "critical", "policy", "a step with `on_failure: stop` failed"),
    ("recovery.started", "info", "policy", "power back and stable: recovery begins"),
    ("recovery.step", "info/warning", "policy", "one recovery step ended"),
    ("recovery.completed", "info", "policy", "the site is back"),
    ("recovery.failed", "critical", "policy", "a recovery step failed after its retries, or "
     "recovery raised (data: `error`)"),
    ("ssh.host_key_changed", "critical", "policy", "an `ssh:` step's host offered a key that "
     "does not match known_hosts: refused, nothing sent (device: the host)"),
    ("hook.ok", "info", "policy", "a hook ran and exited 0"),
    ("hook.failed", "warning", "policy", "a hook failed, timed out or could not start"),
    ("trap.received", "per profile", "traps", "an SNMP trap no profile names"),
    ("trap.flood", "warning", "traps", "a sender exceeded the trap rate limit"),
)  # fmt: skip

#: The policy's own metrics; the drivers describe theirs (`Driver.metrics_doc`).
POLICY_METRICS = (
    "policy",
    "`redundancy.healthy`, `redundancy.members`, `redundancy.min` on `group-{id}`",
    "[policy.md](policy.md)",
)


def protocol_metrics() -> list[tuple[str, str, str]]:
    """Metrics that come from a protocol rather than a profile, as each driver describes them."""
    from facility_agent.core.registry import driver_classes

    out = [
        (name, cls.metrics_doc, "[drivers/README.md](../drivers/README.md)")
        for name, cls in sorted(driver_classes().items())
        if cls.metrics_doc
    ]
    return [*out, POLICY_METRICS]


def driver_events() -> list[tuple[str, dict[str, str]]]:
    """The flag events each installed driver declares by itself (`Driver.declared_events`)."""
    from facility_agent.core.registry import driver_classes

    out: list[tuple[str, dict[str, str]]] = []
    for name, cls in sorted(driver_classes().items()):
        out += [(name, ev) for ev in cls.declared_events()]
    return out


def profiles() -> list[dict[str, Any]]:
    folder = files("facility_agent.data") / "profiles"
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text())
            if isinstance(data, dict):
                out.append(data)
    return out


def profile_metrics(p: dict[str, Any]) -> list[str]:
    names = list((p.get("metrics") or {}).keys())
    for name, table in (p.get("tables") or {}).items():
        template = table.get("template") or f"{name}.{{key}}.{{column}}"
        for column in table.get("columns") or {}:
            names.append(template.replace("{column}", column).replace("{key}", "{n}"))
    for point in p.get("points") or []:
        if isinstance(point, dict) and "name" in point:
            names.append(point["name"])
    # `_name` values are a profile's internal inputs to its status rules, never published.
    return [n for n in names if not n.startswith("_")]


def profile_flags(p: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for rule in p.get("status") or []:
        if isinstance(rule, dict):
            flags += [str(f) for f in rule.get("flags") or [] if str(f) not in flags]
    for point in p.get("points") or []:
        if isinstance(point, dict):
            for f in _point_flags(point):
                if f not in flags:
                    flags.append(f)
    return flags


def _point_flags(point: dict[str, Any]) -> list[str]:
    """Modbus points: `flags: {FLAG: [values]}` and `level_flags: {level: FLAG}`."""
    found: list[str] = []
    flags = point.get("flags")
    if isinstance(flags, dict):
        found += [str(k) for k in flags]
    elif isinstance(flags, list):
        found += [str(v) for v in flags]
    levels = point.get("level_flags")
    if isinstance(levels, dict):
        found += [str(v) for v in levels.values()]
    return found


def render() -> str:
    out = [
        "# Reference: metric names and event types",
        "",
        "Generated by `python -m facility_agent.tools.reference_docs` from the code and the "
        "bundled profiles; do not edit by hand (a test fails when this file is out of date). The "
        "payloads themselves are described in [events.md](events.md), the profile format in "
        "[profiles.md](profiles.md), the policy in [policy.md](policy.md).",
        "",
        "## Event types",
        "",
        "Raised from a device's status flags (config/status-flags.yaml), on the flag's "
        "arrival and, where a second type is given, when it clears:",
        "",
        "| flag | event | severity | cleared |",
        "|---|---|---|---|",
    ]
    for rule in STATUS_FLAG_EVENTS:
        out.append(
            f"| `{rule.flag}` | `{rule.type}` | {rule.severity} | "
            f"{f'`{rule.cleared_type}`' if rule.cleared_type else '-'} |"
        )
    out.append("| `OB` -> `OL` | `power.on_line` | info | - |")
    out += ["", "Raised by the agent, the policy engine and the trap listener:", ""]
    out += ["| event | severity | raised by | when |", "|---|---|---|---|"]
    for kind, severity, by, when in OTHER_EVENTS:
        out.append(f"| `{kind}` | {severity} | {by} | {when} |")
    out += ["", "Declared by drivers (their own flags, `Driver.declared_events`) and profiles "
            "(`events:` of Modbus profiles, `traps:` of SNMP ones):", ""]  # fmt: skip
    out += ["| from | flag or trap | event | severity |", "|---|---|---|---|"]
    for driver, ev in driver_events():
        out.append(f"| {driver} driver | `{ev['flag']}` | `{ev['type']}` | {ev['severity']} |")
        if ev.get("cleared_type"):
            out.append(
                f"| {driver} driver | `{ev['flag']}` cleared | `{ev['cleared_type']}` | info |"
            )
    for p in profiles():
        for ev in p.get("events") or []:
            out.append(
                f"| {p['name']} | `{ev['flag']}` | `{ev['type']}` | "
                f"{ev.get('severity', 'warning')} |"
            )
            if ev.get("cleared_type"):
                out.append(
                    f"| {p['name']} | `{ev['flag']}` cleared | `{ev['cleared_type']}` | info |"
                )
        for trap in p.get("traps") or []:
            out.append(
                f"| {p['name']} | trap {trap.get('name', trap.get('oid'))} | "
                f"`{trap['event']}` | {trap.get('severity', 'warning')} |"
            )
    contract = ", ".join(f"`{e}`" for e in EventType)
    out += ["", f"The contract's names (CONTRACT.md, model.py): {contract}.", ""]
    out += ["## Metric names", "", "From a protocol rather than a profile:", ""]
    out += ["| source | metrics | described in |", "|---|---|---|"]
    out += [f"| {s} | {m} | {d} |" for s, m, d in protocol_metrics()]
    out += [
        "",
        "From the bundled profiles (`{n}` stands for a row: a phase, an outlet, an uplink):",
        "",
    ]
    for p in profiles():
        desc = p.get("description") or p.get("title") or ""
        out += [
            f"### {p['name']} ({p.get('protocol', 'modbus')}, {p.get('kind', '')})",
            "",
            desc,
            "",
        ]
        out.append(", ".join(f"`{m}`" for m in profile_metrics(p)) or "-")
        flags = profile_flags(p)
        if flags:
            out += ["", "Status flags: " + ", ".join(f"`{f}`" for f in flags)]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
