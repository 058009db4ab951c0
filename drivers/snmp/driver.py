"""The SNMP driver: reads a UPS card, PDU, transfer switch or switch through a profile.

What to read and what it means is data (a profile from `config/profiles/`, see
docs/profiles.md); this module only knows SNMP: one GET for the profile's scalars, GETBULK walks
for its tables (GETNEXT on v1), noSuchObject / noSuchInstance / endOfMibView per OID, bounded
tables, counter wrap. v1/v2c go through our own fast client, v3 through pysnmp.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from facility_agent.core.driver import (
    ActionError,
    AddCommand,
    AlertFlags,
    DeviceConfig,
    DeviceError,
    Driver,
    ProtocolError,
    SimulatorFaces,
    SiteHooks,
    SiteService,
    own_config,
    with_keys,
)
from facility_agent.core.model import MetricValue, Sample, utcnow
from facility_agent.core.units import Duration
from facility_agent.drivers.snmp import wire as ber
from facility_agent.drivers.snmp.client import FastClient, SnmpClient, UsmClient
from facility_agent.drivers.snmp.commands import expand, find
from facility_agent.drivers.snmp.detect import Choice, detect
from facility_agent.drivers.snmp.profile import Column, Profile, ProfileError, Table, load_profile
from facility_agent.drivers.snmp.traps import start_listener
from facility_agent.drivers.snmp.traps_config import TrapsConfig, check_usm_pairs
from facility_agent.drivers.snmp.wire import Oid, Value, VarBind
from facility_agent.drivers.valid import UnknownLog, not_a_reading

log = logging.getLogger(__name__)

#: The empty profile an `auto` device holds until detection has picked its own.
AUTO = Profile(protocol="snmp", name="auto")

#: Most varbinds one poll may collect across all tables: a bound against endless tables.
MAX_VARBINDS = 50_000


class SnmpDeviceConfig(DeviceConfig):
    """Site-file keys of a `driver: snmp` device (see drivers/README.md)."""

    host: str = Field(min_length=1)
    port: int = Field(default=161, ge=1, le=65535)
    version: Literal["1", "2c", "3"] = "2c"
    community: SecretStr = SecretStr("public")
    #: SNMPv3 user and keys (keys are secrets: `${ENV}` or a file reference).
    user: str | None = None
    auth_protocol: Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"] | None = None
    auth_key: SecretStr | None = None
    priv_protocol: Literal["DES", "3DES", "AES", "AES128", "AES192", "AES256"] | None = None
    priv_key: SecretStr | None = None
    #: SNMPv3 context name (most agents use the empty default).
    context: str = ""
    #: A bundled profile by name (`apc-rpdu2`), a path to a profile YAML file, or `auto`:
    #: recognised from sysObjectID and probes on the first poll (drivers/snmp/detect.py).
    profile: str = "auto"
    #: Retransmissions of a request before the poll fails (each waits `request_timeout`).
    retries: int = Field(default=1, ge=0, le=10)
    #: Wait for one answer; default: the poll timeout shared out over the tries.
    request_timeout: Duration | None = None
    #: Rows asked per GETBULK; agents cap a response near 1500 bytes' worth anyway.
    max_repetitions: int = Field(default=25, ge=1, le=1000)
    #: Objects per GET request (agents limit PDU size; tooBig halves it automatically).
    max_oids: int = Field(default=32, ge=1, le=200)
    #: Named uplinks for the if-mib profile: NAME -> interface name (ifDescr) or ifIndex.
    uplinks: dict[str, str | int] = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )

    @field_validator("profile")
    @classmethod
    def _profile_loads(cls, value: str) -> str:
        if value == "auto":
            return value
        try:
            load_profile(value)
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("uplinks")
    @classmethod
    def _uplink_names(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        for name in value:
            if not name or any(c in name for c in " ./#+"):
                raise ValueError(f"uplink name {name!r}: no spaces, dots, '/', '#' or '+'")
        return value

    @model_validator(mode="after")
    def _v3_keys(self) -> SnmpDeviceConfig:
        if self.version == "3":
            if not self.user:
                raise ValueError("version 3 needs user:")
            check_usm_pairs(self.auth_protocol, self.auth_key, self.priv_protocol, self.priv_key)
            for key in (self.auth_key, self.priv_key):
                if key is not None and len(key.get_secret_value()) < 8:
                    raise ValueError("SNMPv3 keys must be at least 8 characters (RFC 3414)")
        return self

    @property
    def per_request_timeout(self) -> float:
        if self.request_timeout is not None:
            return self.request_timeout
        return max(0.05, self.poll_timeout / (self.retries + 1) * 0.9)


class _Counter:
    """Unwraps a Counter32/64 into an ever-increasing total (a wrap is one modulo step; a jump
    back by more than half the range is an agent restart and starts a new baseline)."""

    __slots__ = ("last", "total")

    def __init__(self, raw: int) -> None:
        self.last = raw
        self.total = raw

    def update(self, raw: int, width: int) -> int:
        delta = (raw - self.last) % width
        if delta > width // 2:
            self.total = raw
        else:
            self.total += delta
        self.last = raw
        return self.total


class SnmpDriver(Driver):
    """One SNMP agent read through one profile."""

    name = "snmp"
    config_model = SnmpDeviceConfig
    site_sections: ClassVar[Mapping[str, type[BaseModel]]] = {"traps": TrapsConfig}

    @classmethod
    async def start_site(cls, hooks: SiteHooks) -> SiteService | None:
        """The trap and inform listener, when the site has a `traps:` section. A port it
        cannot bind is logged, not fatal: polling goes on without traps."""
        config = hooks.sections.get("traps")
        if not isinstance(config, TrapsConfig):
            return None
        return await start_listener(config, hooks)

    @classmethod
    def aim_at_simulator(cls, device: DeviceConfig, sim: SimulatorFaces) -> DeviceConfig | None:
        """The simulator's SNMP face serves every simulated agent on one port, each under its
        equipment name as community (v1/v2c only)."""
        config = own_config(device, SnmpDeviceConfig)
        if "snmp" not in sim.ports or config.version == "3":
            return None
        return with_keys(config, host="127.0.0.1", port=sim.ports["snmp"], community=config.id)

    @classmethod
    def add_commands(cls, command: AddCommand) -> None:
        from facility_agent.drivers.snmp import record_cmd

        record_cmd.add_parser(command)

    @classmethod
    async def probe(cls, devices: Sequence[DeviceConfig]) -> bool:
        from facility_agent.drivers.snmp.record_cmd import probe_devices

        return await probe_devices(devices)

    def alert_flags(self) -> AlertFlags:
        """The profile's `alert_flags:` (none until `profile: auto` has picked one)."""
        data = self.profile.alert_flags
        return AlertFlags(own=frozenset(data.own), site=frozenset(data.site))

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        if not isinstance(config, SnmpDeviceConfig):
            config = SnmpDeviceConfig.model_validate(config.model_dump())
        self.cfg = config
        #: With `profile: auto`, what detection picked and why (None until the first poll).
        self.choice: Choice | None = None
        self._auto = config.profile == "auto"
        self.profile: Profile = AUTO if self._auto else load_profile(config.profile)
        self._client: SnmpClient | None = None
        self._max_oids = config.max_oids
        self._counters: dict[str, _Counter] = {}
        self._warned: set[str] = set()
        self._unknown_log = UnknownLog(config.id)
        #: Metric -> why its value this poll was not a reading (filled by `_convert`).
        self._unknown: dict[str, str] = {}
        self._scalars: list[tuple[str, Column, Oid]] = []
        #: Table prefix -> row name -> row index, from the last poll (per-row commands).
        self._rows: dict[str, dict[str, Oid]] = {}
        self._use(self.profile)

    def _use(self, p: Profile) -> None:
        self.profile = p
        self._scalars = [(name, col, p.resolve(col.oid)) for name, col in p.metrics.items()]
        #: OIDs asked along with the scalars, used where the primary one has no answer.
        self._fallbacks = {
            name: (col.fallback, p.resolve(col.fallback.oid))
            for name, col in p.metrics.items()
            if col.fallback is not None
        }

    def client(self) -> SnmpClient:
        if self._client is None:
            cfg = self.cfg
            timeout = cfg.per_request_timeout
            if cfg.version == "3":
                self._client = UsmClient(
                    cfg.host,
                    cfg.port,
                    cfg.user or "",
                    cfg.auth_protocol,
                    cfg.auth_key.get_secret_value() if cfg.auth_key else None,
                    cfg.priv_protocol,
                    cfg.priv_key.get_secret_value() if cfg.priv_key else None,
                    timeout,
                    cfg.retries,
                    cfg.context,
                )
            else:
                self._client = FastClient(
                    cfg.host,
                    cfg.port,
                    cfg.community.get_secret_value(),
                    0 if cfg.version == "1" else 1,
                    timeout,
                    cfg.retries,
                )
        return self._client

    async def poll(self) -> Sample:
        metrics: dict[str, MetricValue] = {}
        self._unknown = {}
        client = self.client()
        if self._auto and self.choice is None:
            self.choice = await detect(client, self.cfg.host)
            self._use(load_profile(self.choice.profile))
            log.info(
                "device %s: profile %s (%s)", self.cfg.id, self.choice.profile, self.choice.reason
            )
        if self.choice is not None:
            metrics["driver.profile"] = self.choice.profile
            metrics["driver.profile.reason"] = self.choice.reason
        if self._scalars:
            asked = [oid for _, _, oid in self._scalars]
            asked += [oid for _, oid in self._fallbacks.values()]
            values = await self._get_all(client, asked)
            for name, col, oid in self._scalars:
                value = values.get(oid)
                if value is None and name in self._fallbacks:
                    col, other = self._fallbacks[name]
                    value = values.get(other)
                if value is not None:
                    converted = self._convert(name, col, value)
                    if converted is not None:
                        metrics[name] = converted
        budget = [MAX_VARBINDS]
        for prefix, table in self.profile.tables.items():
            await self._read_table(client, prefix, table, metrics, budget)
        flags = self.profile.flags_for(dict(metrics))
        published = {k: v for k, v in metrics.items() if not _hidden(k)}
        unknown = self._unknown
        self._unknown_log.update(unknown, metrics)
        return Sample(
            device=self.cfg.id,
            ts=utcnow(),
            status=tuple(flags),
            metrics=published,
            unknown=tuple(sorted(n for n in unknown if not _hidden(n))),
        )

    # ---- GET of scalars -------------------------------------------------------------------

    async def _get_all(self, client: SnmpClient, oids: list[Oid]) -> dict[Oid, Value]:
        out: dict[Oid, Value] = {}
        i = 0
        while i < len(oids):
            chunk = oids[i : i + self._max_oids]
            try:
                vbs = await client.get(chunk)
            except ProtocolError as exc:
                if getattr(exc, "status", None) == 1 and self._max_oids > 1:
                    self._max_oids = max(1, self._max_oids // 2)  # tooBig: smaller requests
                    continue
                raise ProtocolError(f"{client.where}: {exc.reason}") from None
            for oid, value in vbs:
                if value[0] not in ber.EXCEPTIONS:
                    out[oid] = value
            i += len(chunk)
        return out

    # ---- tables ---------------------------------------------------------------------------

    async def _walk(
        self, client: SnmpClient, bases: list[Oid], limit: int, budget: list[int]
    ) -> list[dict[Oid, Value]]:
        """Walk several columns side by side; per column: row index -> value."""
        rows: list[dict[Oid, Value]] = [{} for _ in bases]
        cursor: list[Oid | None] = list(bases)
        max_rep = self.cfg.max_repetitions
        while any(c is not None for c in cursor):
            live = [i for i, c in enumerate(cursor) if c is not None]
            asked = [cursor[i] for i in live]
            assert all(a is not None for a in asked)
            if client.bulk:
                vbs = await client.get_bulk([a for a in asked if a is not None], max_rep)
            else:
                vbs = await client.get_next([a for a in asked if a is not None])
            if not vbs:
                break
            budget[0] -= len(vbs)
            if budget[0] < 0:
                raise ProtocolError(f"{client.where}: tables exceed {MAX_VARBINDS} values")
            progressed = False
            # GETBULK answers repeat the asked columns in order, row after row.
            for n, (oid, value) in enumerate(vbs):
                i = live[n % len(live)]
                if cursor[i] is None:
                    continue
                base = bases[i]
                if value[0] == ber.END_OF_MIB_VIEW or oid[: len(base)] != base:
                    cursor[i] = None
                    continue
                prev = cursor[i]
                assert prev is not None
                if oid <= prev:
                    raise ProtocolError(
                        f"{client.where}: OIDs not increasing in a walk of {ber.oid_str(base)}"
                    )
                index = oid[len(base) :]
                if value[0] not in ber.EXCEPTIONS:
                    rows[i][index] = value
                cursor[i] = oid
                progressed = True
                if len(rows[i]) > limit:
                    raise ProtocolError(
                        f"{client.where}: table {ber.oid_str(base)} has more than {limit} rows"
                    )
            if not progressed:
                break
        return rows

    async def _read_table(
        self,
        client: SnmpClient,
        prefix: str,
        table: Table,
        metrics: dict[str, MetricValue],
        budget: list[int],
    ) -> None:
        p = self.profile
        names = list(table.columns)
        bases = [p.resolve(table.columns[n].oid) for n in names]
        if table.label is not None:
            bases.append(p.resolve(table.label))
        if table.where is not None:
            bases.append(p.resolve(table.where.oid))
        columns = await self._walk(client, bases, table.max_rows, budget)
        if table.where is not None:
            kept = {i for i, v in columns.pop().items() if table.where.keeps(v[1])}
            columns = [{i: v for i, v in col.items() if i in kept} for col in columns]
        for n, name in enumerate(names):
            if (sfx := table.columns[name].suffix) is not None:
                tail = tuple(int(x) for x in sfx.split("."))
                columns[n] = {
                    i[: -len(tail)]: v
                    for i, v in columns[n].items()
                    if len(i) > len(tail) and i[-len(tail) :] == tail
                }
        labels = columns[-1] if table.label is not None else {}
        indexes = sorted({idx for col in columns for idx in col})
        keys: dict[Oid, str] = {}
        for idx in indexes:
            label = labels.get(idx)
            if label is not None:
                keys[idx] = _text(label)
            else:
                keys[idx] = str(idx[-1]) if table.index == "last" else ber.oid_str(idx)
        rows = list(keys.items())
        if table.rows_from == "uplinks" and self.cfg.uplinks:
            rows = []  # two uplink names may name one interface (by index and by name)
            for uplink, want in self.cfg.uplinks.items():
                for idx in indexes:
                    if (isinstance(want, int) and idx == (want,)) or (
                        isinstance(want, str) and keys[idx] == want
                    ):
                        rows.append((idx, uplink))
                        break
                else:
                    metrics[f"{prefix}.{uplink}.status"] = "missing"
        self._rows[prefix] = {key: idx for idx, key in rows}
        for idx, key in rows:
            for n, name in enumerate(names):
                value = columns[n].get(idx)
                if value is None:
                    continue
                col = table.columns[name]
                if col.metric is not None:
                    metric = col.metric.format(key=key)
                elif table.template:
                    metric = table.template.format(key=key, column=name)
                else:
                    metric = f"{prefix}.{key}.{name}"
                if (when := col.unknown_when) is not None:
                    status = columns[names.index(when.column)].get(idx)
                    if status is not None and status[1] in when.in_:
                        self._unknown[metric] = f"{when.column} is {status[1]}"
                        continue
                converted = self._convert(metric, col, value)
                if converted is not None and col.decimals is not None:
                    converted = _shifted(converted, columns[names.index(col.decimals)].get(idx))
                if converted is not None:
                    metrics[metric] = converted

    # ---- values ---------------------------------------------------------------------------

    def _convert(self, name: str, col: Column, value: Value) -> MetricValue | None:
        tag, raw = value
        if col.type == "string":
            return _text(value)
        if isinstance(raw, int) and tag in ber.INT_TAGS and not self._reading(name, col, raw):
            return None
        if col.enum is not None and isinstance(raw, int):
            return col.enum.get(raw, f"unknown({raw})")
        if col.type == "counter" and tag in (ber.COUNTER32, ber.COUNTER64) and isinstance(raw, int):
            width = 1 << (64 if tag == ber.COUNTER64 else 32)
            counter = self._counters.get(name)
            if counter is None:
                counter = self._counters[name] = _Counter(raw)
                number: float = raw
            else:
                number = counter.update(raw, width)
            return _scaled(number, col.scale)
        if isinstance(raw, int) and tag in ber.INT_TAGS:
            return _scaled(raw, col.scale)
        if isinstance(raw, bytes):
            try:
                number = float(raw.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                pass
            else:
                return _scaled(number, col.scale) if self._reading(name, col, number) else None
        self._warn(name, f"expected a number, got {ber.TYPE_NAMES.get(tag, hex(tag))}")
        return None

    def _reading(self, name: str, col: Column, raw: int | float) -> bool:
        """Is the raw value a reading? If not, the metric is noted as unknown for this poll."""
        why = not_a_reading(raw, col.range, col.sentinels)
        if why is not None:
            self._unknown[name] = why
        return why is None

    def _warn(self, name: str, text: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("device %s: %s: %s; the metric is left out", self.cfg.id, name, text)

    # ---- actions --------------------------------------------------------------------------

    async def actions(self) -> list[str]:
        """The profile's commands; per-outlet ones for the outlets the last poll saw."""
        if (self._auto and self.choice is None) or (not self._rows and self.profile.commands):
            await self.poll()
        return expand(self.profile.commands, self._rows)

    async def run_action(self, action: str, params: Mapping[str, str] | None = None) -> str:
        """One SET of the profile's `commands:` (outlet.N.load.off ...); needs allow_writes."""
        cfg = self.cfg
        cfg.require_writes()
        found = find(self.profile.commands, self._rows, action)
        if found is None:  # rows not read yet, or the outlet is new: read the device again
            await self.poll()
            found = find(self.profile.commands, self._rows, action)
        if found is None:
            known = ", ".join(expand(self.profile.commands, self._rows)) or "none"
            raise ActionError(
                f"device {cfg.id}: profile {self.profile.name} has no action {action!r} "
                f"(known: {known})"
            )
        cmd, index = found
        oid = self.profile.resolve(cmd.base) + index
        client = self.client()
        try:
            await client.set([(oid, cmd.wire_value())])
        except ProtocolError as exc:
            raise ActionError(
                f"device {cfg.id}: {action} refused: {exc.reason} (check that the community "
                "or SNMPv3 user may write)"
            ) from None
        except DeviceError as exc:
            raise ActionError(f"device {cfg.id}: {action} failed: {exc.reason}") from None
        return f"{action}: set {ber.oid_str(oid)} = {cmd.value} on {client.where}"

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def _hidden(name: str) -> bool:
    """`_x` scalars and `_x` table columns feed rules and other columns; they are not published."""
    return any(part.startswith("_") for part in name.split("."))


def _shifted(value: MetricValue, digits: Value | None) -> MetricValue | None:
    """`value` / 10^digits, the row's own decimal digits (PDU2-MIB, ENTITY-SENSOR-MIB
    precision); without a usable digit count the value cannot be read, so it is left out."""
    if digits is None or not isinstance(digits[1], int) or not -9 <= digits[1] <= 9:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    shifted: float = value / 10.0 ** digits[1]
    return round(shifted, 9 + max(digits[1], 0))


def _scaled(number: float, scale: float) -> int | float:
    value = number * scale
    if float(value).is_integer() and (scale == 1 or float(scale).is_integer()):
        return int(value)
    return round(value, 6)


def _text(value: Value) -> str:
    tag, raw = value
    if isinstance(raw, bytes):
        if tag == ber.IP_ADDRESS and len(raw) == 4:
            return ".".join(map(str, raw))
        text = raw.decode("utf-8", errors="replace")
        return text.rstrip("\x00").strip()
    if isinstance(raw, tuple):
        return ber.oid_str(raw)
    return "" if raw is None else str(raw)


__all__ = ["SnmpDeviceConfig", "SnmpDriver", "VarBind"]
