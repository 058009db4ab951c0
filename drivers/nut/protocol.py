"""NUT's network protocol as text, without I/O (see NUT's docs/net-protocol.txt).

Kept apart from the socket code so every parsing rule can be unit-tested on plain strings. A
line is split by facility_wire/nut.py, which the simulated upsd shares: the simulator's
expectations and the client's agree on one definition of a line.

A line is words separated by spaces; a word may be double-quoted, and inside quotes (or outside)
a backslash makes the next character literal. Replies are `OK [...]`, `ERR CODE [extra]`, a single
`VAR ups name "value"`, or a `BEGIN LIST ...` / `END LIST ...` block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from facility_agent.core.driver import AuthError, DeviceError, NotFoundError, ProtocolError
from facility_wire import nut as nut_wire

#: Characters that would end or corrupt a command line if sent inside an argument.
_FORBIDDEN = ("\r", "\n", "\0")
#: A word that needs no quotes: anything printable without space, quote or backslash.
_BARE = re.compile(r'^[^\s"\\]+$')
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)$")

AUTH_CODES = frozenset(
    {"ACCESS-DENIED", "INVALID-PASSWORD", "USERNAME-REQUIRED", "PASSWORD-REQUIRED"}
)
NOT_FOUND_CODES = frozenset({"UNKNOWN-UPS"})
_DEVICE_REASONS = {
    "DATA-STALE": "the UPS driver's data is stale (the UPS stopped answering its driver)",
    "DRIVER-NOT-CONNECTED": "upsd is not connected to the UPS driver (driver down?)",
}


class NutServerError(ProtocolError):
    """The server refused a request with an `ERR` code not mapped to a broader error kind.

    A well-formed refusal (CMD-NOT-SUPPORTED, INVALID-VALUE ...): the connection stays usable,
    and the driver can turn it into an ActionError for device actions.
    """

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


def split_line(line: str) -> list[str]:
    """Split one reply line into words, honouring double quotes and backslash escapes.

    An empty quoted word (`""`) is kept as an empty string: a variable may be empty.
    """
    try:
        return nut_wire.split_line(line)
    except nut_wire.NutLineError as exc:
        raise ProtocolError(f"{exc} in reply line {line[:200]!r}") from None


def quote(word: str) -> str:
    """One argument ready to send: bare when safe, else quoted with `\\` and `"` escaped.

    CR, LF and NUL are refused: no device value or config string may end a command early and
    smuggle in a second one.
    """
    if any(c in word for c in _FORBIDDEN):
        raise ValueError("a NUT argument may not contain CR, LF or NUL")
    if _BARE.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_command(*words: str) -> bytes:
    """A complete command line, newline-terminated; every word is quoted as needed."""
    return (" ".join(quote(w) for w in words) + "\n").encode()


def error_from_words(words: Sequence[str], where: str) -> DeviceError:
    """The exception for an `ERR CODE [extra]` reply; `where` names the server (host:port)."""
    code = words[1] if len(words) > 1 else "(no code)"
    extra = " ".join(words[2:])
    detail = f"{code} {extra}".strip()
    if code in AUTH_CODES:
        return AuthError(f"NUT server {where} refused the credentials: ERR {detail}")
    if code in NOT_FOUND_CODES:
        return NotFoundError(f"NUT server {where} does not know that UPS: ERR {detail}")
    if code in _DEVICE_REASONS:
        return DeviceError(f"NUT server {where}: {_DEVICE_REASONS[code]} (ERR {detail})")
    return NutServerError(f"NUT server {where} refused the request: ERR {detail}", code)


def check_ok(words: Sequence[str], where: str) -> str:
    """The text after `OK` of a reply that must be `OK [...]`; raises for `ERR` or anything else."""
    if words and words[0] == "OK":
        return " ".join(words[1:])
    raise unexpected(words, where)


def unexpected(words: Sequence[str], where: str) -> DeviceError:
    """An `ERR` reply's error, or a ProtocolError for a line the protocol does not allow here."""
    if words and words[0] == "ERR":
        return error_from_words(words, where)
    shown = " ".join(words)[:200]
    return ProtocolError(f"NUT server {where} sent an unexpected reply: {shown!r}")


def parse_var(words: Sequence[str], ups: str, where: str, kind: str = "VAR") -> tuple[str, str]:
    """`(name, value)` of a `VAR ups name "value"` (or `RW ...`) line for the UPS asked about."""
    if len(words) == 4 and words[0] == kind and words[1] == ups:
        return words[2], words[3]
    raise unexpected(words, where)


def list_header(words: Sequence[str], query: Sequence[str]) -> bool:
    """True when `words` is `BEGIN LIST <query...>`."""
    return list(words[:2]) == ["BEGIN", "LIST"] and list(words[2:]) == list(query)


def list_footer(words: Sequence[str], query: Sequence[str]) -> bool:
    """True when `words` is `END LIST <query...>`."""
    return list(words[:2]) == ["END", "LIST"] and list(words[2:]) == list(query)


def convert_value(text: str) -> int | float | str:
    """A number when the text is plainly one (`100` -> 100, `27.1` -> 27.1), else the text.

    Only plain decimal forms are numbers: `nan`, `1e3` and hex stay text, and so do integers
    with leading zeros (`0012` is an identifier, not twelve).
    """
    if _INT.match(text):
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits.startswith("0"):
            return text
        return int(text)
    if _FLOAT.match(text):
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits.startswith("0") and not digits.startswith("0."):
            return text
        return float(text)
    return text
