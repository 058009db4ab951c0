"""Modbus register-map profiles: device knowledge as data (config/profiles/*.yaml).

A profile names every point a controller offers (table, address, type, scale, enums, bit fields,
packed alarm levels), the commands it accepts, and the events its status flags mean. This module
validates a profile, plans the reads as contiguous blocks (one request per block, never one per
value) and decodes the registers a block returned into metrics, status flags and alarms.

The format is documented in docs/profiles.md.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from facility_agent.core.model import MetricValue
from facility_agent.drivers.valid import not_a_reading, parse_range

Table = Literal["holding", "input", "coil", "discrete"]
PointType = Literal["u16", "s16", "u32", "s32", "f32", "bool", "alarm4"]
Order = Literal["big", "little"]

#: Registers (16-bit) per type; bit tables always read single bits.
WORDS: dict[str, int] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "bool": 1}
#: Modbus limits per read request (FC3/4: 125 registers, FC1/2: 2000 bits).
MAX_REGISTERS = 125
MAX_BITS = 2000

#: Names of the standard generator states (`generator.state`).
GENERATOR_STATES = ("stopped", "cranking", "warming", "running", "cooling", "fault")
Scalar = bool | int | float | str


class ProfileError(ValueError):
    """A profile file is missing or invalid; the message names the file and the key."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_M):
    """One value: where it lives, how its bits become a number, what the number means."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    address: int = Field(ge=0, le=65535)
    table: Table | None = None
    type: PointType = "u16"
    #: Registers for `alarm4` (4 levels per register); derived from the type otherwise.
    count: int | None = Field(default=None, ge=1, le=MAX_REGISTERS)
    word_order: Order | None = None
    byte_order: Order | None = None
    #: Only bits lo..hi (inclusive, 0 = least significant) of a 16-bit register.
    bits: tuple[int, int] | None = None
    scale: float = 1.0
    unit: str = ""
    description: str = ""
    #: Valid RAW values (before `map` and `scale`) as the register map states them:
    #: `0..65527`. Required for every numeric point; a value outside it is not a reading.
    range: tuple[int | float, int | float] | None = None
    #: Raw values that mean "not available" / "not fitted" (GenComm's 0xFFFF ...): not a
    #: reading. `invalid:` is the older name of this key.
    sentinels: list[int | float] = Field(
        default_factory=list, validation_alias=AliasChoices("sentinels", "invalid")
    )
    #: Raw value -> published value (text, number or true/false); unmapped raw values are left
    #: out, so a controller's "not implemented" code never becomes a wrong reading.
    map: dict[int, Scalar] | None = None
    #: Status flags raised when the (mapped) value equals one of the listed values.
    flags: dict[str, list[Scalar]] = Field(default_factory=dict)
    #: Status flag per set bit (0 = least significant) of the raw value.
    bitflags: dict[int, str] = Field(default_factory=dict)
    #: `alarm4`: alarm names, one per 4-bit field, most significant field of each register first.
    alarms: list[str | None] = Field(default_factory=list)
    #: `alarm4`: field value -> level name; values not listed are inactive.
    levels: dict[int, str] = Field(default_factory=dict)
    #: `alarm4`: level name -> status flag raised while any alarm is at that level.
    level_flags: dict[str, str] = Field(default_factory=dict)
    #: Do not publish the value itself (it only feeds flags).
    hidden: bool = False

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: object) -> object:
        return None if value is None else parse_range(value)

    @field_validator("flags", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> Point:
        if self.bits is not None:
            lo, hi = self.bits
            if not 0 <= lo <= hi <= 15 or WORDS.get(self.type) != 1:
                raise ValueError("bits: [lo, hi] with 0 <= lo <= hi <= 15, on a 16-bit type")
        if self.type == "alarm4":
            if not self.alarms:
                raise ValueError("an alarm4 point needs its list of alarms")
            if self.count is not None and len(self.alarms) > 4 * self.count:
                raise ValueError(f"{len(self.alarms)} alarms do not fit in {self.count} registers")
        if self.table in ("coil", "discrete") and self.type != "bool":
            raise ValueError("coils and discrete inputs are type bool")
        if self.type == "bool" and self.table in ("holding", "input") and self.bits is None:
            raise ValueError("a bool in a register needs bits: [n, n]")
        if self.type in ("bool", "alarm4"):
            if self.range is not None or self.sentinels:
                raise ValueError(f"a {self.type} point has no range or sentinels")
        elif self.range is None:
            raise ValueError(
                "range: is required (the valid raw values from the register map, e.g. 0..65527)"
            )
        return self

    @property
    def words(self) -> int:
        if self.type == "alarm4":
            return self.count or math.ceil(len(self.alarms) / 4)
        return WORDS[self.type]


class Command(_M):
    """A write that makes the controller do something (start, stop, auto mode ...)."""

    table: Literal["holding", "coil"] = "holding"
    address: int = Field(ge=0, le=65535)
    #: Registers written in ONE request (FC16), e.g. a GenComm key and its complement; for a
    #: coil, one boolean (FC5).
    values: list[int | bool] = Field(min_length=1, max_length=MAX_REGISTERS)
    description: str = ""


class FlagEvent(_M):
    """An event raised when a status flag appears (and, optionally, one when it clears).

    Messages may name `{device}` and any metric, e.g. `{generator.fuel.level}`."""

    flag: str
    type: str = Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str
    cleared_type: str | None = None
    cleared_message: str | None = None


class Defaults(_M):
    table: Table = "holding"
    word_order: Order = "big"
    byte_order: Order = "big"


class Profile(_M):
    name: str
    #: Profiles of every protocol share config/profiles; this marks a Modbus register map.
    protocol: Literal["modbus"] = "modbus"
    title: str = ""
    #: What the device is: drives the generator/ATS semantics of the driver.
    kind: Literal["generator", "ats", "other"] = "other"
    #: Where the numbers come from (document, version, page).
    source: str = ""
    defaults: Defaults = Defaults()
    #: Merge two reads into one when at most this many unused registers lie between them.
    max_gap: int = Field(default=16, ge=0, le=MAX_REGISTERS)
    #: Registers per read request (some controllers take fewer than Modbus's 125).
    max_block: int = Field(default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    #: Engine speed above which a profile without a state register counts as running.
    running_rpm: float = 300.0
    points: list[Point] = Field(min_length=1)
    commands: dict[str, Command] = Field(default_factory=dict)
    events: list[FlagEvent] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        names = [p.name for p in self.points]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"point names must be unique, repeated: {dupes}")
        return self

    def table_of(self, point: Point) -> Table:
        return point.table or self.defaults.table

    def blocks(self) -> list[Block]:
        return plan_blocks(self)


@dataclass(frozen=True)
class Block:
    """One read request: a table, a start address, a count, and the points inside it."""

    table: Table
    address: int
    count: int
    points: tuple[Point, ...] = field(default=())


def plan_blocks(profile: Profile) -> list[Block]:
    """Group the points into as few contiguous reads as the limits allow."""
    by_table: dict[Table, list[Point]] = {}
    for p in profile.points:
        by_table.setdefault(profile.table_of(p), []).append(p)
    blocks: list[Block] = []
    for table in ("coil", "discrete", "holding", "input"):
        points = sorted(by_table.get(table, []), key=lambda p: (p.address, p.words))
        limit = MAX_BITS if table in ("coil", "discrete") else profile.max_block
        cur: list[Point] = []
        start = end = 0
        for p in points:
            p_end = p.address + p.words
            if cur and p.address - end <= profile.max_gap and max(end, p_end) - start <= limit:
                cur.append(p)
                end = max(end, p_end)
                continue
            if cur:
                blocks.append(Block(table, start, end - start, tuple(cur)))
            cur, start, end = [p], p.address, p_end
        if cur:
            blocks.append(Block(table, start, end - start, tuple(cur)))
    return blocks


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """What the registers of a whole poll mean."""

    metrics: dict[str, MetricValue] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    #: Active alarms: name -> level.
    alarms: dict[str, str] = field(default_factory=dict)
    #: Points whose value was not a reading this poll: name -> why (for the log).
    unknown: dict[str, str] = field(default_factory=dict)

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)


def _words_to_bytes(words: Sequence[int], word_order: Order, byte_order: Order) -> bytes:
    ws = list(words) if word_order == "big" else list(reversed(words))
    out = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in ws)
    if byte_order == "little":
        out = b"".join(out[i : i + 2][::-1] for i in range(0, len(out), 2))
    return out


def raw_value(point: Point, words: Sequence[int], defaults: Defaults) -> int | float:
    """The raw number a point's registers hold (before `range`, `map` and `scale`)."""
    wo = point.word_order or defaults.word_order
    bo = point.byte_order or defaults.byte_order
    data = _words_to_bytes(words[: WORDS[point.type]], wo, bo)
    if point.type == "f32":
        return float(struct.unpack(">f", data)[0])
    signed = point.type in ("s16", "s32")
    value = int.from_bytes(data, "big", signed=signed and point.bits is None)
    if point.bits is not None:
        lo, hi = point.bits
        value = (value >> lo) & ((1 << (hi - lo + 1)) - 1)
    return value


def _publish(value: float) -> float | int:
    if value == int(value) and abs(value) < 2**53:
        return int(value)
    return round(value, 6)


def decode_point(
    point: Point, words: Sequence[int | bool], defaults: Defaults, out: Decoded
) -> None:
    """Add one point's metric, flags and alarms to `out`."""
    if point.type == "alarm4":
        _decode_alarms(point, [int(w) for w in words], out)
        return
    raw: int | float
    if point.type == "bool" and point.bits is None:
        raw = int(bool(words[0]))
    else:
        raw = raw_value(point, [int(w) for w in words], defaults)
    if point.type != "bool":
        why = not_a_reading(raw, point.range, point.sentinels)
        if (
            why is None
            and point.map is not None
            and (not isinstance(raw, int) or raw not in point.map)
        ):
            why = f"{raw} is none of the values the register map documents"
        if why is not None:
            out.unknown[point.name] = why
            return
    if isinstance(raw, int):
        for bit, flag in point.bitflags.items():
            if raw >> bit & 1:
                out.flag(flag)
    value: Scalar
    if point.map is not None:
        assert isinstance(raw, int)
        value = point.map[raw]
    elif point.type == "bool":
        value = bool(raw)
    else:
        value = _publish(raw * point.scale)
    for flag, when in point.flags.items():
        # True == 1 in Python: a boolean only matches a boolean, a number only a number.
        if any(isinstance(w, bool) == isinstance(value, bool) and w == value for w in when):
            out.flag(flag)
    if not point.hidden:
        out.metrics[point.name] = value


def _decode_alarms(point: Point, words: Sequence[int], out: Decoded) -> None:
    active: list[str] = []
    for i, name in enumerate(point.alarms):
        reg = words[i // 4]
        level_code = (reg >> (12 - 4 * (i % 4))) & 0xF
        level = point.levels.get(level_code)
        if name is None or level is None:
            continue
        out.alarms[name] = level
        active.append(f"{name}:{level}")
        if level in point.level_flags:
            out.flag(point.level_flags[level])
    if not point.hidden:
        out.metrics[point.name] = ", ".join(active)


def decode_block(
    profile: Profile, block: Block, values: Sequence[int | bool], out: Decoded
) -> None:
    for p in block.points:
        off = p.address - block.address
        decode_point(p, values[off : off + p.words], profile.defaults, out)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _error_text(source: str, err: ValidationError) -> str:
    lines = [f"profile {source}: invalid"]
    for e in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_profile(data: Any, source: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"profile {source}: expected a mapping at the top level")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_error_text(source, exc)) from None


def bundled_profiles() -> list[str]:
    """Stems of the profiles shipped in config/profiles."""
    root = resources.files("facility_agent.data.profiles")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


_CACHE: dict[str, Profile] = {}


def load_profile(name_or_path: str) -> Profile:
    """A bundled profile by file stem (`dse-gencomm`), or a profile file by path."""
    if name_or_path in _CACHE:
        return _CACHE[name_or_path]
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"profile {path}: cannot read: {exc.strerror}") from None
    else:
        res = resources.files("facility_agent.data.profiles").joinpath(f"{name_or_path}.yaml")
        try:
            found = res.is_file()
        except OSError:  # a name the file system refuses (ENAMETOOLONG, found by bench/fuzz.py)
            found = False
        if not found:
            known = ", ".join(bundled_profiles()) or "none"
            raise ProfileError(f"unknown profile {name_or_path!r} (bundled: {known})")
        text = res.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {name_or_path}: not valid YAML: {exc}") from None
    profile = parse_profile(data, name_or_path)
    _CACHE[name_or_path] = profile
    return profile


def describe_metrics(profile: Profile) -> list[dict[str, str]]:
    """One row per published point, for docs/profiles.md."""
    rows = []
    for p in profile.points:
        if p.hidden:
            continue
        where = f"{profile.table_of(p)} {p.address}"
        if p.words > 1:
            where += f"-{p.address + p.words - 1}"
        if p.bits is not None:
            where += f" bits {p.bits[0]}-{p.bits[1]}"
        rows.append({"name": p.name, "where": where, "type": p.type, "unit": p.unit})
    return rows
