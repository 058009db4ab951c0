"""The chat commands `!ack ID`, `!status` and `!silence DEVICE 2h`, read from any chat.

Pure: no I/O and no clock of its own, so that the rules can be tested without a homeserver;
the Matrix reader (matrix.py) brings the text and the sender, and the sink stores the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

from facility_agent.core.model import DeviceState
from facility_agent.core.units import parse_duration
from facility_agent.sinks.notify.alerting import AlertRoute, hhmm

log = logging.getLogger(__name__)

HELP = "Commands: !ack ID · !status · !silence DEVICE 2h"


def interpret(
    text: str,
    sender: str,
    *,
    allowed: Collection[str],
    here: AlertRoute,
    everywhere: Sequence[AlertRoute],
    states: Mapping[str, DeviceState],
    now: float,
) -> tuple[str, str] | None:
    """(verb, reply) for a `!command` from an allowed sender; None for anything else.

    `!ack` and `!silence` act on every route (`everywhere`), so that a second chat stops
    repeating an alert acknowledged in the first; `!status` answers from the route it came on.
    """
    words = text.strip().split()
    if not words or not words[0].startswith("!"):
        return None
    if sender not in allowed:
        log.warning(
            "ignored %s from %s on route %s: not in allow_commands", words[0], sender, here.name
        )
        return None
    verb, args = words[0].lower(), words[1:]
    if verb == "!ack" and args:
        found = [a for r in everywhere if (a := r.ack(args[0], sender)) is not None]
        if not found:
            return verb, f"No alert {args[0]!r}. `!status` lists the firing ones."
        alert = found[0]
        log.info("alert %s acknowledged by %s", alert.id, sender)
        return (
            verb,
            f"✔ {alert.id} acknowledged by {sender}: {alert.event.message}. No more repeats.",
        )
    if verb == "!status":
        return verb, here.status_text(states, now)
    if verb == "!silence" and len(args) >= 2:
        try:
            seconds = float(parse_duration(args[1]))
        except ValueError as exc:
            return verb, f"Cannot silence: {exc}"
        for r in everywhere:
            r.silence(args[0], now + seconds)
        log.info("%s silenced for %.0f s by %s", args[0], seconds, sender)
        return verb, f"🔕 {args[0]} silenced until {hhmm(now + seconds)} by {sender}."
    return verb, HELP
