"""Log lines for a terminal, for journald, or as JSON.

journald already stamps time, host and unit, and reads a `<N>` prefix as the syslog priority
(sd-daemon(3)), so under systemd the agent writes `<3>ERROR agent: ... device=ups-a event=01J..`
and `journalctl -p warning` works. JSON lines (one object each) are for log shippers.
A log record may carry `device`, `event_id` and `event_type` (`extra=`): each format shows them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import orjson

LogFormat = Literal["auto", "text", "journal", "json"]
FORMATS: tuple[str, ...] = ("auto", "text", "journal", "json")
#: `FACILITY_AGENT_LOG_FORMAT=json` in the unit's Environment= picks the format without editing
#: ExecStart.
ENV_VAR = "FACILITY_AGENT_LOG_FORMAT"
_EXTRAS = (("device", "device"), ("event_id", "event"), ("event_type", "type"))

#: syslog priorities (sd-daemon.h SD_ERR ...) for each logging level.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _short(name: str) -> str:
    return name.removeprefix("facility_agent.") or name


def _tail(record: logging.LogRecord) -> str:
    parts = [f"{key}={getattr(record, attr)}" for attr, key in _EXTRAS if hasattr(record, attr)]
    return (" " + " ".join(parts)) if parts else ""


def _exception(fmt: logging.Formatter, record: logging.LogRecord) -> str:
    """The traceback text: the one the redaction filter already rendered (and masked) first."""
    if record.exc_text:
        return record.exc_text
    return fmt.formatException(record.exc_info) if record.exc_info else ""


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) + _tail(record)


class JournalFormatter(logging.Formatter):
    """No timestamp (journald has one), the priority prefix, the level spelled out."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = f"<{prio}>{record.levelname} {_short(record.name)}: {record.getMessage()}"
        text += _tail(record)
        exc = _exception(self, record)
        if exc:
            # One journal entry per line: indent the traceback under its message.
            text += "\n" + exc
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": _short(record.name),
            "message": record.getMessage(),
        }
        for attr, key in _EXTRAS:
            if hasattr(record, attr):
                out[key] = getattr(record, attr)
        exc = _exception(self, record)
        if exc:
            out["exception"] = exc
        return orjson.dumps(out, default=str).decode()


def under_journald() -> bool:
    """True when stderr is connected to the journal ($JOURNAL_STREAM names its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def resolve(fmt: str | None) -> str:
    fmt = fmt or os.environ.get(ENV_VAR) or "auto"
    if fmt not in FORMATS:
        fmt = "auto"
    if fmt == "auto":
        return "journal" if under_journald() else "text"
    return fmt


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "journal":
        return JournalFormatter()
    return TextFormatter()
