"""SNMP device profiles: what to read from a device and what it means, as data.

A profile is a YAML file in `config/profiles/` (shipped as `facility_agent.data.profiles`) or any
path a site file names. It maps OIDs to canonical metric names (NUT's where NUT has one), with
scaling, enums and status-flag rules; tables become indexed names (`outlet.3.current`); trap OIDs
become event types. MIB objects may be named symbolically, but every name is defined in the
profile's own `objects:` section, so nothing depends on MIB files being installed. The format is
documented in docs/profiles.md.
"""

from __future__ import annotations

import fnmatch
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facility_agent.drivers.snmp.commands import Command, check_names
from facility_agent.drivers.snmp.wire import Oid, parse_oid
from facility_agent.drivers.valid import parse_range

_NAME = re.compile(r"^_?[a-z0-9][a-z0-9_-]*(\.[a-zA-Z0-9_-]+|\.\{(index|label)\})*$")
_SYMBOL = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)((?:\.\d+)*)$")


class ProfileError(ValueError):
    """A profile file is missing or invalid; the message names the file and the key."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnknownWhen(_M):
    """A row's own status saying its value is no measurement (RFC 3433 `unavailable`)."""

    column: str
    in_: list[int] = Field(alias="in", min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Column(_M):
    """How one OID's value becomes one metric."""

    #: Numeric (`1.3.6.1.2.1.33.1.2.4.0`) or symbolic (`upsEstimatedChargeRemaining.0`).
    oid: str
    #: number: a number (INTEGER, Gauge, or text holding a number); string: text;
    #: counter: a Counter32/64 unwrapped into an ever-increasing total.
    type: Literal["number", "string", "counter"] = "number"
    #: Multiplied into numbers (0.1 for tenths, 60 for minutes -> seconds).
    scale: float = 1.0
    #: Integer value -> text (`{1: "on", 2: "off"}`); unknown values become `unknown(N)`.
    enum: dict[int, str] | None = None
    #: Valid RAW values (before `scale`) as the MIB states them: `0..100`. Required for
    #: numbers and counters; a value outside it is not a reading (see drivers/valid.py).
    range: tuple[int | float, int | float] | None = None
    #: RAW values that mean "unknown" / "not fitted" even inside the range (`[-1, 65535]`).
    sentinels: list[int | float] = Field(default_factory=list)
    #: Table columns only: keep the rows whose index ends with these parts and drop them from
    #: the row name (PDU2-MIB indexes values by pdu.outlet.sensorType: `suffix: "1"` = current).
    suffix: str | None = Field(default=None, pattern=r"^\d+(\.\d+)*$")
    #: Table columns only: another column of the same row holding this value's decimal digits
    #: (value / 10^digits), where the device publishes them per row (PDU2-MIB, ENTITY-SENSOR).
    decimals: str | None = None
    #: Table columns only: the value is unknown while another column of its row holds one of
    #: these raw values (`{column: status, in: [2, 3]}`).
    unknown_when: UnknownWhen | None = None
    #: Table columns only: this cell's own metric name, with `{key}` for the row's name, where
    #: the table's template does not fit (NUT's `input.L1-N.voltage` beside `input.L1.current`).
    metric: str | None = Field(default=None, pattern=r"\{key\}")
    #: Scalars only: read this instead when the agent does not answer `oid` (APC cards without
    #: the upsHighPrec* objects fall back to upsAdv*), with its own range and scale.
    fallback: Column | None = None

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: object) -> object:
        return None if value is None else parse_range(value)

    @model_validator(mode="after")
    def _range_needed(self) -> Column:
        if self.type == "string":
            if self.range is not None or self.sentinels:
                raise ValueError("text has no range: range/sentinels are for numbers")
        elif self.range is None:
            raise ValueError("range: is required (the valid raw values, from the MIB: 0..100)")
        return self


class RowFilter(_M):
    """Keep only the rows whose value of one object is (or is not) among some raw values: one
    MIB table that holds two kinds of row (CPS-MIB's load table: phases have BankNumber 0,
    banks their bank number) is read as two tables."""

    #: The object, walked with the table's columns (numeric or `symbol`).
    oid: str
    in_: list[int] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[int] | None = Field(default=None, min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_test(self) -> RowFilter:
        if (self.in_ is None) == (self.not_in is None):
            raise ValueError("give exactly one of in, not_in")
        return self

    def keeps(self, raw: object) -> bool:
        if not isinstance(raw, int):
            return False  # no such value in this row: not a row of this kind
        return raw in self.in_ if self.in_ is not None else raw not in (self.not_in or [])


class Table(_M):
    """A conceptual table walked with GETBULK; each row becomes `{prefix}.{index}.{column}`."""

    #: Column name -> how its value becomes a metric; the name is the last part of the metric.
    columns: dict[str, Column] = Field(min_length=1)
    #: A column whose text names each row instead of its index (ifDescr for interfaces).
    label: str | None = None
    #: `uplinks`: rows are chosen and named by the device's `uplinks:` key.
    rows_from: Literal["uplinks"] | None = None
    #: Rows beyond this are an error (a broken agent that never ends a table).
    max_rows: int = Field(default=1024, ge=1, le=100_000)
    #: `full`: a row is named by its whole index (`1`, `1.2`); `last`: by its last part.
    index: Literal["full", "last"] = "full"
    #: Metric name of a cell; default `{prefix}.{key}.{column}` (`outlet.3.current`).
    template: str | None = Field(default=None, pattern=r"\{key\}.*\{column\}")
    #: Only the rows this filter keeps are read (see RowFilter).
    where: RowFilter | None = None


class StatusRule(_M):
    """Flags raised from a metric's value. Metric names may be globs (`uplink.*.status`)."""

    metric: str
    #: value -> flags; keys are matched against the value as an integer or as text.
    map: dict[str | int, list[str]] | None = None
    #: With `equals`/`in`/`not_in`/`below`/`above`: the flags raised when the test holds.
    flags: list[str] = Field(default_factory=list)
    equals: str | int | float | None = None
    in_: list[str | int] | None = Field(default=None, alias="in")
    not_in: list[str | int] | None = None
    below: float | None = None
    above: float | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_test(self) -> StatusRule:
        tests = [self.map, self.equals, self.in_, self.not_in, self.below, self.above]
        if sum(t is not None for t in tests) != 1:
            raise ValueError("give exactly one of map, equals, in, not_in, below, above")
        if self.map is None and not self.flags:
            raise ValueError("flags: is required with equals/in/not_in/below/above")
        return self

    def evaluate(self, value: object) -> list[str]:
        if self.map is not None:
            key: object = value
            if isinstance(value, float) and value.is_integer():
                key = int(value)
            found = self.map.get(key) if isinstance(key, str | int) else None
            if found is None:
                found = self.map.get(str(key), [])
            return list(found)
        hit = False
        if self.equals is not None:
            hit = value == self.equals or str(value) == str(self.equals)
        elif self.in_ is not None:
            hit = value in self.in_ or str(value) in map(str, self.in_)
        elif self.not_in is not None:
            hit = not (value in self.not_in or str(value) in map(str, self.not_in))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            hit = (self.below is not None and value < self.below) or (
                self.above is not None and value > self.above
            )
        return list(self.flags) if hit else []


class TrapDef(_M):
    """A notification this kind of device sends, and the event it becomes."""

    oid: str
    name: str
    event: str = Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
    severity: Literal["info", "warning", "critical"] = "warning"
    #: Shown after the device name: "ups-a: {message}".
    message: str


class Detect(_M):
    """How `profile: auto` recognises a device (drivers/snmp/detect.py, docs/profiles.md)."""

    #: sysObjectID prefixes of the devices this profile is for (empty: match by probe only).
    sysobjectid: list[str] = Field(default_factory=list)
    #: An OID that must answer for the profile to fit (its MIB is really there).
    probe: str | None = None
    #: Among profiles that fit equally well, the highest wins; generic MIBs stay low.
    priority: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _something(self) -> Detect:
        for oid in self.sysobjectid:
            parse_oid(oid)
        if self.probe is not None:
            parse_oid(self.probe)
        if not self.sysobjectid and self.probe is None:
            raise ValueError("detect: needs sysobjectid, probe, or both")
        return self


class AlertFlagsData(_M):
    own: list[str] = Field(default_factory=list)
    site: list[str] = Field(default_factory=list)


class Profile(_M):
    #: Profiles of every protocol share config/profiles; this marks an SNMP one.
    protocol: Literal["snmp"]
    name: str
    description: str = ""
    #: What kind of device: documents which status flags to expect.
    kind: Literal["ups", "pdu", "ats", "switch", "genset", "other"] = "other"
    #: Symbolic names -> numeric OIDs (the part of the MIB this profile uses).
    objects: dict[str, str] = Field(default_factory=dict)
    #: Scalars, read with GET. Names starting with `_` feed status rules but are not published.
    metrics: dict[str, Column] = Field(default_factory=dict)
    #: Metric prefix (`outlet`, `uplink`) -> table.
    tables: dict[str, Table] = Field(default_factory=dict)
    status: list[StatusRule] = Field(default_factory=list)
    #: Notifications this kind of device sends (read by the trap listener).
    traps: list[TrapDef] = Field(default_factory=list)
    #: How `profile: auto` recognises this kind of device.
    detect: Detect | None = None
    #: Which of the flags above mean trouble (see `AlertFlags`): `own` ones poll the device at
    #: its alert_interval, `site` ones (power trouble) put every device of the site in alert.
    alert_flags: AlertFlagsData = Field(default_factory=lambda: AlertFlagsData())
    #: Device actions, each one SET (commands.py); sent only with allow_writes.
    commands: dict[str, Command] = Field(default_factory=dict)

    @field_validator("objects")
    @classmethod
    def _numeric_objects(cls, value: dict[str, str]) -> dict[str, str]:
        for name, oid in value.items():
            parse_oid(str(oid))
            if not _SYMBOL.match(name):
                raise ValueError(f"{name!r} is not a MIB object name")
        return value

    def raised_flags(self) -> set[str]:
        """Every flag the status rules can raise."""
        out: set[str] = set()
        for rule in self.status:
            out.update(rule.flags)
            for flags in (rule.map or {}).values():
                out.update(flags)
        return out

    @model_validator(mode="after")
    def _alert_flags_are_raised(self) -> Profile:
        stray = set(self.alert_flags.own + self.alert_flags.site) - self.raised_flags()
        if stray:
            raise ValueError(f"alert_flags: {sorted(stray)} are raised by no status rule")
        return self

    @model_validator(mode="after")
    def _resolvable(self) -> Profile:
        for name, col in self.metrics.items():
            if not _NAME.match(name):
                raise ValueError(f"metric name {name!r}: use dotted lowercase names")
            self.resolve(col.oid)
            if col.fallback is not None:
                self.resolve(col.fallback.oid)
        for prefix, table in self.tables.items():
            if any(col.fallback is not None for col in table.columns.values()):
                raise ValueError(f"table {prefix}: fallback: is for scalars only")
        for name, col in self.metrics.items():
            if col.metric is not None:
                raise ValueError(f"metric {name}: metric: names table cells only")
        for prefix, table in self.tables.items():
            for col in table.columns.values():
                self.resolve(col.oid)
                if col.decimals is not None and col.decimals not in table.columns:
                    raise ValueError(f"table {prefix}: decimals: {col.decimals!r} is no column")
                if col.unknown_when is not None and col.unknown_when.column not in table.columns:
                    raise ValueError(f"table {prefix}: unknown_when: {col.unknown_when.column!r}")
            if table.label is not None:
                self.resolve(table.label)
            if table.where is not None:
                self.resolve(table.where.oid)
            if not _NAME.match(prefix):
                raise ValueError(f"table prefix {prefix!r}: use dotted lowercase names")
        for trap in self.traps:
            self.resolve(trap.oid)
        check_names(self.commands, set(self.tables))
        for cmd in self.commands.values():
            self.resolve(cmd.base)
        return self

    def resolve(self, ref: str) -> Oid:
        """A numeric OID from `1.3.6...` or `symbol.suffix` using this profile's objects."""
        ref = str(ref).strip()
        if ref[:1].isdigit() or ref.startswith("."):
            return parse_oid(ref)
        match = _SYMBOL.match(ref)
        if not match or match.group(1) not in self.objects:
            raise ValueError(f"{ref!r} is neither a numeric OID nor an object of this profile")
        base = parse_oid(self.objects[match.group(1)])
        suffix = tuple(int(p) for p in match.group(2).split(".")[1:])
        return base + suffix

    def flags_for(self, metrics: dict[str, object]) -> list[str]:
        """Every rule applied to every metric it matches, flags in rule order, no repeats."""
        out: list[str] = []
        for rule in self.status:
            names = (
                [n for n in metrics if fnmatch.fnmatchcase(n, rule.metric)]
                if any(c in rule.metric for c in "*?[")
                else [rule.metric]
            )
            for name in names:
                if name in metrics:
                    for flag in rule.evaluate(metrics[name]):
                        if flag not in out:
                            out.append(flag)
        return out


def _parse(text: str, source: str) -> Profile:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile {source}: expected a mapping")
    if data.get("protocol") != "snmp":
        raise ProfileError(f"profile {source}: not an SNMP profile (it needs `protocol: snmp`)")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise ProfileError(f"profile {source}: {where}") from None


def bundled_names() -> list[str]:
    """Stems of the SNMP profiles shipped with the package (other protocols share the folder)."""
    root = resources.files("facility_agent.data.profiles")
    names = []
    for node in root.iterdir():
        if node.name.endswith(".yaml"):
            text = node.read_text(encoding="utf-8")
            if re.search(r"^protocol:\s*snmp\s*$", text, re.MULTILINE):
                names.append(node.name[:-5])
    return sorted(names)


def _is_file(node: Any) -> bool:
    """False, not OSError, for a name the file system refuses (ENAMETOOLONG: bench/fuzz.py)."""
    try:
        return bool(node.is_file())
    except OSError:
        return False


@cache
def load_profile(ref: str) -> Profile:
    """A bundled profile by stem (`apc-rpdu2`) or a YAML file by path; cached per process."""
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        path = Path(ref)
        try:
            return _parse(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise ProfileError(f"profile {ref}: cannot read: {exc.strerror}") from None
    if not re.match(r"^[a-z0-9][a-z0-9_-]*$", ref):
        raise ProfileError(f"profile {ref!r}: not a profile name")
    node = resources.files("facility_agent.data.profiles").joinpath(f"{ref}.yaml")
    if not _is_file(node):
        names = ", ".join(bundled_names())
        raise ProfileError(f"no bundled profile {ref!r} (bundled: {names}; or give a file path)")
    return _parse(node.read_text(encoding="utf-8"), f"{ref}.yaml")
