"""NUT's network protocol (docs/net-protocol.txt in networkupstools/nut): what both ends share.

The NUT driver reads upsd's replies with `split_line` (drivers/nut/protocol.py), and the
simulated upsd (simulators/faces/nut.py) and the agent's own NUT face (drivers/nut/face/) read
their clients' requests with it: one definition of a line for every side. Both servers keep a
`Session` per connection.
"""

from __future__ import annotations

from dataclasses import dataclass


class NutLineError(ValueError):
    """A line whose quoting is broken: a quote left open, or a backslash with nothing after it."""


def split_line(line: str) -> list[str]:
    """Split a line like upsd: words separated by blanks, a "double-quoted" part is one word
    (`""` an empty one), and a backslash takes the next character literally, in quotes too."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    quoted = False
    escaped = False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
            in_word = True
        elif ch == "\\":
            escaped = True
            in_word = True
        elif quoted:
            if ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
            in_word = True
        elif ch in " \t":
            if in_word:
                words.append("".join(current))
                current = []
                in_word = False
        else:
            current.append(ch)
            in_word = True
    if quoted:
        raise NutLineError("unterminated quote")
    if escaped:
        raise NutLineError("dangling backslash")
    if in_word:
        words.append("".join(current))
    return words


@dataclass
class Session:
    """What a NUT server keeps of one connection: who is at the other end, the USERNAME and
    PASSWORD it sent, and the UPS it LOGINed to (as upsmon does)."""

    peer: str
    username: str | None = None
    password: str | None = None
    login_ups: str | None = None
