"""The NUT driver: reads a UPS from a Network UPS Tools server (upsd) over its TCP protocol.

NUT's variable names are the agent's canonical vocabulary, so a poll passes them through
unchanged: `ups.status` becomes the status flags, every other variable a metric.

Several devices on one upsd share one connection (a small refcounted pool keyed by server and
credentials), as upsmon does: upsd handles few clients well, and one `LIST VAR` per device per
second over one socket costs it next to nothing.
"""

from __future__ import annotations

import weakref
from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field, SecretStr, field_validator

from facility_agent.driver import ActionError, DeviceConfig, Driver
from facility_agent.model import MetricValue, Sample, utcnow
from facility_agent.units import Duration

from . import nut_protocol as proto
from .nut_client import DEFAULT_PORT, NutClient

#: Variables whose values are identifiers even when they look like numbers (`ups.firmware: 1.0`).
_TEXT_SUFFIXES = (
    ".serial",
    ".model",
    ".mfr",
    ".firmware",
    ".firmware.aux",
    ".id",
    ".type",
    ".version",
    ".name",
    ".date",
    ".desc",
    ".location",
    ".contacts",
)


class NutDeviceConfig(DeviceConfig):
    """Site-file keys of a `driver: nut` device (see drivers/README.md)."""

    #: Host name or address of upsd.
    host: str = Field(min_length=1)
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    #: The UPS name on that server (`upsc -l host` lists them).
    ups: str = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    #: Send `LOGIN <ups>` so upsd counts us as a upsmon secondary (needs an `upsmon` account).
    login: bool = False
    #: NUT's own drivers refresh about every 1-2 s, so polling faster than that buys nothing.
    interval: Duration = 1.0

    @field_validator("host", "ups", "username")
    @classmethod
    def _no_line_breaks(cls, value: str | None) -> str | None:
        if value is not None:
            proto.quote(value)
        return value

    @field_validator("password")
    @classmethod
    def _no_line_breaks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and any(c in value.get_secret_value() for c in "\r\n\0"):
            raise ValueError("the password may not contain CR, LF or NUL")
        return value


@dataclass
class _Shared:
    client: NutClient
    users: int = 0


#: (host, port, username, password, LOGIN ups); SecretStr compares by value, prints masked.
_Key = tuple[str, int, str | None, SecretStr | None, str | None]
#: One pool per event loop: a connection belongs to the loop that opened it.
_POOLS: weakref.WeakKeyDictionary[AbstractEventLoop, dict[_Key, _Shared]] = (
    weakref.WeakKeyDictionary()
)


def _acquire(cfg: NutDeviceConfig) -> tuple[_Key, NutClient]:
    password = cfg.password.get_secret_value() if cfg.password is not None else None
    login = cfg.ups if cfg.login else None
    # LOGIN is once per connection, so a device that logs in gets a connection of its own UPS.
    key: _Key = (cfg.host, cfg.port, cfg.username, cfg.password, login)
    pool = _POOLS.setdefault(get_running_loop(), {})
    shared = pool.get(key)
    if shared is None:
        client = NutClient(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=password,
            login=login,
            verify_ups=cfg.ups,
            timeout=cfg.poll_timeout,
        )
        shared = pool[key] = _Shared(client)
    shared.users += 1
    return key, shared.client


async def _release(key: _Key) -> None:
    pool = _POOLS.get(get_running_loop(), {})
    shared = pool.get(key)
    if shared is None:
        return
    shared.users -= 1
    if shared.users <= 0:
        del pool[key]
        await shared.client.close()


def convert_metric(name: str, text: str) -> MetricValue:
    """A variable's value as a number where it is one, keeping identifiers as text."""
    if name.endswith(_TEXT_SUFFIXES):
        return text
    return proto.convert_value(text)


class NutDriver(Driver):
    """One UPS on a NUT server."""

    name = "nut"
    config_model = NutDeviceConfig

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        if not isinstance(config, NutDeviceConfig):
            config = NutDeviceConfig.model_validate(config.model_dump())
        self.cfg = config
        self._key: _Key | None = None
        self._client: NutClient | None = None

    def _conn(self) -> NutClient:
        if self._client is None:
            self._key, self._client = _acquire(self.cfg)
        return self._client

    async def poll(self) -> Sample:
        """One `LIST VAR`: status flags from `ups.status`, every other variable as a metric."""
        variables = await self._conn().list_var(self.cfg.ups)
        status = tuple(variables.pop("ups.status", "").split())
        metrics = {name: convert_metric(name, text) for name, text in variables.items()}
        return Sample(device=self.cfg.id, ts=utcnow(), status=status, metrics=metrics)

    async def actions(self) -> list[str]:
        """The UPS's instant commands (`LIST CMD`), plus `set` (SET VAR) and `fsd`."""
        return [*await self._conn().list_cmd(self.cfg.ups), "set", "fsd"]

    async def run_action(self, action: str, params: Mapping[str, str] | None = None) -> str:
        """Run an instant command, `set` (params `var`, `value`) or `fsd`.

        Raises ActionError when writes are not allowed, parameters are missing or the server
        refuses the command itself; AuthError when it refuses our credentials; other
        DeviceErrors when the server cannot be reached.
        """
        cfg = self.cfg
        if not cfg.allow_writes:
            raise ActionError(
                f"device {cfg.id}: actions are disabled (set allow_writes: true to allow them)"
            )
        params = dict(params or {})
        client = self._conn()
        try:
            if action == "set":
                var, value = params.get("var"), params.get("value")
                if not var or value is None:
                    raise ActionError(f"device {cfg.id}: 'set' needs the params 'var' and 'value'")
                reply = await client.set_var(cfg.ups, var, str(value))
                done = f"SET VAR {var}={value}"
            elif action == "fsd":
                reply = await client.fsd(cfg.ups)
                done = "FSD"
            else:
                value = params.get("value")
                reply = await client.instcmd(cfg.ups, action, value)
                done = f"INSTCMD {action}"
        except proto.NutServerError as exc:
            raise ActionError(f"device {cfg.id}: {exc.reason}") from exc
        except ValueError as exc:
            raise ActionError(f"device {cfg.id}: {exc}") from None
        extra = f" ({reply})" if reply else ""
        return f"{done} accepted by NUT server {client.where} for {cfg.ups}{extra}"

    async def close(self) -> None:
        """Give back this device's share of the pooled connection."""
        if self._key is not None:
            key, self._key, self._client = self._key, None, None
            await _release(key)
