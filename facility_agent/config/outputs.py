"""Typed site-file sections of the outputs: outbox, InfluxDB, Prometheus, chat alerts, HA discovery.

Kept apart from config.py so the outputs can grow without touching the core site model. URLs that
can carry credentials (apprise URLs, InfluxDB tokens) are SecretStr: they never reach a log line
in full, only `redact_url()`'s scheme and host.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ByteSize, ConfigDict, Field, SecretStr, field_validator

from facility_agent.core.model import Severity
from facility_agent.core.units import Duration, Identifier

_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[^:\s]+):(?P<port>\d{1,5})$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_state_dir() -> Path:
    """`/var/lib/facility-agent` for root (a service); the XDG state dir for anyone else."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/facility-agent")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "facility-agent"


def redact_url(url: str) -> str:
    """`matrix://m.example.org:8448/…`: the scheme, and the host only when it looks like one.

    Many apprise URLs carry a token where the host goes (`tgram://BOT_TOKEN/CHAT`,
    `slack://A/B/C`), so a "host" without a dot is not shown either.
    """
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{scheme}://…"
    if not (host == "localhost" or "." in host or ":" in host):
        return f"{scheme}://…"
    return f"{scheme}://{host}{port}/…"


class OutboxConfig(_Section):
    """The durable store-and-forward under every pushed output (MQTT, InfluxDB, chat)."""

    #: False keeps MQTT's in-memory queue only (the 0.1 behaviour); nothing survives a restart.
    enabled: bool = True
    #: The SQLite file; default `{state_dir}/outbox.sqlite`.
    path: Path | None = None
    #: Past this size the oldest readings/states go first, events last.
    #: A number of bytes or a size with its unit (`512MB`, `1GiB`: pydantic's ByteSize).
    max_bytes: ByteSize = Field(default=ByteSize(256 * 1000**2), ge=64 * 1024)
    #: Anything older than this is dropped (counted) whatever its kind.
    max_age: Duration = 7 * 86400.0
    #: Rows held in memory per output while streaming a backlog from the file.
    window: int = Field(default=1000, ge=10, le=100_000)


class InfluxConfig(_Section):
    """InfluxDB v2 write API (InfluxDB 2.x/3.x, VictoriaMetrics, anything that speaks it)."""

    url: str = Field(pattern=r"^https?://")
    token: SecretStr | None = None
    org: str = ""
    bucket: str
    #: Measurement of device readings; events go to `{measurement}_event`.
    measurement: str = Field(default="facility", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: Lines per write request.
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    #: A partial batch is written after this long.
    flush_interval: Duration = 1.0
    timeout: Duration = 10.0
    retry_min: Duration = 1.0
    retry_max: Duration = 60.0
    verify_tls: bool = True


class PrometheusConfig(_Section):
    """`/metrics` and `/healthz` over plain HTTP; loopback unless told otherwise."""

    listen: str = "127.0.0.1:9847"
    #: `/healthz` answers 503 when the agent's event loop has not ticked for this long.
    stall_after: Duration = 10.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        match = _LISTEN.match(value)
        if not match or not 0 <= int(match.group("port")) <= 65535:
            raise ValueError("listen must be HOST:PORT, e.g. '127.0.0.1:9847'")
        return value

    @property
    def host(self) -> str:
        match = _LISTEN.match(self.listen)
        assert match is not None
        return match.group("host").strip("[]")

    @property
    def port(self) -> int:
        match = _LISTEN.match(self.listen)
        assert match is not None
        return int(match.group("port"))


class NotifyRoute(_Section):
    """One chat (or mail, or anything apprise knows) destination with its own filters."""

    #: Any apprise URL; it usually holds a password or token, so it is a secret.
    url: SecretStr
    #: A name for logs and metrics (the URL is never logged); default `route-N`.
    name: str | None = Field(default=None, pattern=r"^[a-z0-9_-]+$")
    min_severity: Severity = Severity.WARNING
    #: Event types to send (fnmatch patterns, `power.*`); empty = every type.
    events: list[str] = Field(default_factory=list)
    #: Event types never sent (fnmatch patterns); applied after `events`.
    exclude_events: list[str] = Field(default_factory=list)
    #: `site`: one message for everything pending; `device`: one per device.
    group_by: Literal["site", "device"] = "site"
    #: Wait this long after a group's first alert for others to join it (Alertmanager's idea).
    group_wait: Duration = 5.0
    #: At most one message per group this often once it has been notified.
    group_interval: Duration = 60.0
    #: An unacknowledged alert still firing is repeated this often.
    repeat_interval: Duration = 4 * 3600.0
    #: A message delivered this long after its alert was raised is marked as delayed.
    delayed_after: Duration = 60.0
    #: Chat users allowed to send `!ack ID`, `!status`, `!silence DEVICE 2h` (Matrix only for
    #: now: full ids like "@alice:example.org"); empty = commands off for this route.
    allow_commands: list[str] = Field(default_factory=list)
    retry_min: Duration = 2.0
    retry_max: Duration = 300.0


class HomeAssistantConfig(_Section):
    """MQTT discovery for Home Assistant: one retained config message per metric."""

    enabled: bool = False
    prefix: str = Field(default="homeassistant", pattern=r"^[^#+\s]+$")


FeedsMap = dict[Identifier, list[Identifier]]
