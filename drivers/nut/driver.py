"""The NUT driver: reads a UPS from a Network UPS Tools server (upsd) over its TCP protocol.

NUT's variable names are the agent's canonical vocabulary, so a poll passes them through
unchanged: `ups.status` becomes the status flags, every other variable a metric. upsd passes on
whatever its driver read, sentinels included, so each value is judged against the rules of
`config/nut-ranges.yaml` (`nut_ranges`): one that is not a reading goes to `unknown` instead.

Several devices on one upsd share one connection (a small refcounted pool keyed by server and
credentials), as upsmon does: upsd handles few clients well, and one `LIST VAR` per device per
second over one socket costs it next to nothing.
"""

from __future__ import annotations

import argparse
import logging
import weakref
from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field, SecretStr, field_validator

from facility_agent.core.driver import (
    ActionError,
    AlertFlags,
    DeviceConfig,
    Driver,
    SimulatorFaces,
    SiteHooks,
    SiteService,
    own_config,
    with_keys,
)
from facility_agent.core.model import MetricValue, Sample, utcnow
from facility_agent.core.units import Duration
from facility_agent.drivers.nut import protocol as proto
from facility_agent.drivers.nut import ranges as nut_ranges
from facility_agent.drivers.nut.client import DEFAULT_PORT, NutClient
from facility_agent.drivers.nut.face.config import NutServerConfig
from facility_agent.drivers.nut.face.server import NutFace

log = logging.getLogger(__name__)

#: NUT status words that poll a UPS at its alert_interval (POLLFREQALERT): on battery, low
#: battery, forced shutdown, overload, bypass; the first three put the whole site in alert.
_ALERT_FLAGS = AlertFlags(
    own=frozenset({"OB", "LB", "FSD", "OVER", "BYPASS"}), site=frozenset({"OB", "LB", "FSD"})
)

#: Most metric names per device remembered as "already logged as unknown".
_MAX_LOGGED = 10_000


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
    #: A value-rules file of your own instead of the bundled config/nut-ranges.yaml.
    ranges: str | None = None

    @field_validator("ranges")
    @classmethod
    def _ranges_file_loads(cls, value: str | None) -> str | None:
        if value is not None:
            nut_ranges.load(value)  # RangeFileError is a ValueError: reported with the key
        return value

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
    """A variable's value as a number where NUT defines or writes one, identifiers as text.

    Only the type: whether the value is a reading is `nut_ranges.Ranges.judge`'s question.
    """
    verdict = nut_ranges.load().judge(name, text)
    return text if verdict.value is None else verdict.value


def _host_port(text: str) -> str:
    """A `--nut-face-listen` value: host:port, as `nut_server.listen` is."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"must be host:port, not {text!r}")
    return text


class NutDriver(Driver):
    """One UPS on a NUT server."""

    name = "nut"
    metrics_doc = (
        "every variable upsd reports, under its NUT name (`battery.charge`, `ups.load`, "
        "`input.voltage` ...)"
    )
    config_model = NutDeviceConfig
    #: The agent's own NUT face for upsmon secondaries (face/), a site-wide service.
    site_sections: ClassVar[Mapping[str, type[BaseModel]]] = {"nut_server": NutServerConfig}

    @classmethod
    async def start_site(cls, hooks: SiteHooks) -> SiteService | None:
        config = hooks.sections.get("nut_server")
        # A dry run touches nothing: no face, so no secondary can see a drill's FSD.
        if not isinstance(config, NutServerConfig) or hooks.dry_run:
            return None
        face = NutFace(config, hooks.states, hooks.secondaries_fsd)
        await face.start()
        return face

    @classmethod
    def aim_at_simulator(cls, device: DeviceConfig, sim: SimulatorFaces) -> DeviceConfig | None:
        config = own_config(device, NutDeviceConfig)
        if "nut" not in sim.ports or config.ups not in sim.ups:
            return None
        return with_keys(config, host="127.0.0.1", port=sim.ports["nut"])

    @classmethod
    def add_drill_options(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--nut-face-listen",
            metavar="HOST:PORT",
            type=_host_port,
            help="serve the drill's NUT face (nut_server:) here, for a test upsmon secondary to "
            "follow [a free loopback port: the site's real secondaries never see a drill's FSD]",
        )

    @classmethod
    def drill_sections(
        cls, sections: Mapping[str, BaseModel], options: Mapping[str, Any]
    ) -> dict[str, BaseModel]:
        """A drill's FSD must never reach the site's real secondaries: the face listens on
        `--nut-face-listen`, else on a free loopback port."""
        face = sections.get("nut_server")
        if face is None:
            return dict(sections)
        listen = options.get("nut_face_listen") or "127.0.0.1:0"
        return {**sections, "nut_server": face.model_copy(update={"listen": listen})}

    def alert_flags(self) -> AlertFlags:
        return _ALERT_FLAGS

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        self.cfg = config = own_config(config, NutDeviceConfig)
        self._key: _Key | None = None
        self._client: NutClient | None = None
        self._ranges = nut_ranges.load(config.ranges)
        #: Metrics already logged as not a reading: logged once per device and metric.
        self._logged_unknown: set[str] = set()

    def _conn(self) -> NutClient:
        if self._client is None:
            self._key, self._client = _acquire(self.cfg)
        return self._client

    async def poll(self) -> Sample:
        """One `LIST VAR`: status flags from `ups.status`, every other variable as a metric.

        A value that is not a reading (out of range, a sentinel, text where NUT defines a
        number) is left out of the metrics and named in `unknown`.
        """
        variables = await self._conn().list_var(self.cfg.ups)
        status = tuple(variables.pop("ups.status", "").split())
        metrics: dict[str, MetricValue] = {}
        unknown: list[str] = []
        for name, text in variables.items():
            verdict = self._ranges.judge(name, text)
            if verdict.value is not None:
                metrics[name] = verdict.value
                continue
            unknown.append(name)
            if name not in self._logged_unknown and len(self._logged_unknown) < _MAX_LOGGED:
                self._logged_unknown.add(name)
                log.warning(
                    "device %s: %s = %r is not a reading (%s); published as unknown",
                    self.cfg.id,
                    name,
                    text[:80],
                    verdict.why,
                )
        return Sample(
            device=self.cfg.id,
            ts=utcnow(),
            status=status,
            metrics=metrics,
            unknown=tuple(sorted(unknown)),
        )

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
        cfg.require_writes()
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
