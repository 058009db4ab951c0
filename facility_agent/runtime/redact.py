"""One filter on the root log handler that masks every secret the site holds, in every record.

Per-call care (SecretStr, URLs reduced to scheme and host) keeps secrets out of the agent's own
messages; this is the net under it, for what the libraries log at debug (apprise, paho,
pymodbus, pysnmp, pyghmi), for exception texts and for tracebacks. It knows the values in
secrets.REGISTRY (everything behind `${ENV}`/`${file:}`, every SecretStr of a loaded site) and
masks each one in the forms it takes on the way to a log line: as is, URL-encoded in any
mix (quote, quote_plus, the partial quoting apprise and urllib3 log; upper- or lowercase hex),
JSON- and repr-escaped; and a value written URL-encoded (inside a URL) also decoded.

A value shorter than MIN_LENGTH is not masked (it would shred every line), and a value below
WORD_LENGTH only as a whole word: a community `public` must not turn `published` into `***hed`.
A value that is also a public name of the site (a device id) is left alone: it is not secret.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable
from types import TracebackType

import orjson

from facility_agent.config import secrets

MASK = "***"
MIN_LENGTH = 4
WORD_LENGTH = 8
#: Keys of a URL's query that carry credentials (apprise: `?pass=`, `?token=` ...).
_SECRET_QUERY = re.compile(r"pass|token|secret|key|auth|apikey", re.IGNORECASE)


def forms(value: str) -> set[str]:
    """The escaped spellings of one secret (JSON, repr), and it as is; URL-encoded spellings
    are matched by `flexible`, whatever subset of characters an encoder chose to escape."""
    out = {value, orjson.dumps(value).decode()[1:-1], json.dumps(value)[1:-1], repr(value)[1:-1]}
    if re.search(r"%[0-9A-Fa-f]{2}", value):  # written URL-encoded (in a URL): the plain value
        out |= {urllib.parse.unquote(value), urllib.parse.unquote_plus(value)}
    return {v for v in out if v}


def _hex(byte: int) -> str:
    return "%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}")


def flexible(value: str) -> str:
    """A pattern for `value` with any of its special characters percent-encoded (upper- or
    lowercase hex) and a space also as `+`: quote, quote_plus and the mixed spellings libraries
    log (apprise and urllib3 print `p@ss%2Fw0rd+x`)."""
    parts = []
    for ch in value:
        if ch.isascii() and (ch.isalnum() or ch in "-._~"):
            parts.append(re.escape(ch))
            continue
        alts = [re.escape(ch), "".join(_hex(b) for b in ch.encode())]
        if ch == " ":
            alts.append(r"\+")
        parts.append("(?:" + "|".join(alts) + ")")
    return "".join(parts)


def url_parts(value: str) -> set[str]:
    """The password and credential query values inside a URL-shaped secret (apprise routes)."""
    if "://" not in value:
        return set()
    try:
        parts = urllib.parse.urlsplit(value)
        password = parts.password
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=False)
    except ValueError:
        return set()
    out = {v for k, v in query if _SECRET_QUERY.search(k)}
    if password:
        out |= {password, urllib.parse.unquote(password)}
    return out


class Redactor:
    """Masks the registry's secrets; recompiles only when the registry changed."""

    def __init__(self, registry: secrets._Registry = secrets.REGISTRY) -> None:
        self.registry = registry
        self._generation = -1
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def _compile(self) -> re.Pattern[str] | None:
        generation = self.registry.generation
        if generation == self._generation:
            return self._pattern
        with self._lock:
            generation, values, public = self.registry.snapshot()
            spelled: set[str] = set()
            for value in values:
                for raw in {value, *url_parts(value)}:
                    if raw in public:
                        continue
                    spelled |= forms(raw)
            spelled = {v for v in spelled if len(v) >= MIN_LENGTH}
            alternatives = []
            for v in sorted(spelled, key=len, reverse=True):
                if len(v) < WORD_LENGTH:
                    alternatives.append(rf"(?<![A-Za-z0-9]){flexible(v)}(?![A-Za-z0-9])")
                else:
                    alternatives.append(flexible(v))
            self._pattern = re.compile("|".join(alternatives)) if alternatives else None
            self._generation = generation
            return self._pattern

    def __call__(self, text: str) -> str:
        pattern = self._compile()
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)


#: The process-wide redactor, for per-call care outside logging (a hook's output).
redact = Redactor()


class RedactFilter(logging.Filter):
    """Renders each record's message (args merged in) and exception text, masked.

    On a handler, not a logger: records propagated from any library's logger pass through it.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redactor or redact
        self._fmt = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: keep what it said, masked
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info:
            record.exc_text = self._fmt.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name in ("device", "event_id", "event_type"):
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception goes through logging (and so the filter), not raw stderr."""
    if args.exc_type is SystemExit:
        return
    exc_info: tuple[type[BaseException], BaseException, TracebackType | None] = (
        args.exc_type,
        args.exc_value if args.exc_value is not None else args.exc_type(),
        args.exc_traceback,
    )
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("facility_agent").error("thread %s died", name, exc_info=exc_info)


def install(handlers: Iterable[logging.Handler]) -> RedactFilter:
    """Put the filter on these (the root's) handlers; library warnings and thread deaths are
    routed through logging so that they pass it too."""
    flt = RedactFilter()
    for handler in handlers:
        handler.addFilter(flt)
    logging.captureWarnings(True)
    threading.excepthook = _thread_excepthook
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = lambda t, v, tb: logging.getLogger("facility_agent").critical(
            "uncaught exception", exc_info=(t, v, tb)
        )
    return flt
