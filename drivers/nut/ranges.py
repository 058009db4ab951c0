"""Which NUT variables are numbers, what values they may take, and which values mean "unknown".

upsd carries no range metadata, so the knowledge lives in a data file (`config/nut-ranges.yaml`,
shipped as `facility_agent.data/nut-ranges.yaml`): ordered rules, first match wins. This module
only loads the rules and judges one value; the driver decides what to publish and what to log.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from facility_agent.core.model import MetricValue
from facility_agent.drivers.nut import protocol as proto

#: NUT's numeric format (docs/nut-names.txt): optional sign, digits with leading zeros allowed,
#: an optional fraction; no exponent, no grouping.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_PATTERN = re.compile(r"^(?:\*\*|\*|[A-Za-z0-9_-]+)(?:\.(?:\*\*|\*|[A-Za-z0-9_-]+))*$")

DATA_FILE = "nut-ranges.yaml"
#: Longest text read as a number: no reading needs more, and Python refuses to convert integers
#: of over 4300 digits (a hostile upsd could otherwise crash the poll).
_MAX_NUMBER = 64


class RangeFileError(ValueError):
    """The ranges file is missing or invalid; the message names the file and the rule."""


class Rule(BaseModel):
    """One rule of the ranges file (its keys are documented at the top of that file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: tuple[str, ...] = Field(min_length=1)
    text: bool = False
    min: float | None = None
    max: float | None = None
    sentinels: tuple[float, ...] = ()
    integer: bool = False

    @field_validator("match", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("match")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not _PATTERN.match(pattern):
                raise ValueError(f"not a name pattern: {pattern!r}")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]


def _regex(pattern: str) -> str:
    """`*` is one dotted segment, `**` any number of them (none included)."""
    out = ""
    need_dot = False
    for part in pattern.split("."):
        if part == "**":
            # Leading: any segments, each followed by a dot; later: each preceded by one.
            need_dot = bool(out)
            out += r"(?:\.[^.]+)*" if out else r"(?:[^.]+\.)*"
            continue
        out += (r"\." if need_dot else "") + ("[^.]+" if part == "*" else re.escape(part))
        need_dot = True
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """A value judged: `value` to publish, or `unknown` with the reason it is not a reading."""

    value: MetricValue | None
    why: str | None = None

    @property
    def unknown(self) -> bool:
        return self.why is not None


class Ranges:
    """The compiled rules; `judge` is called for every variable of every poll, so it caches."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._compiled = [
            (re.compile("|".join(f"(?:{_regex(p)})" for p in r.match)), r) for r in rules
        ]
        self._by_name: dict[str, Rule | None] = {}

    def rule(self, name: str) -> Rule | None:
        """The first rule whose patterns match the whole name, or None."""
        try:
            return self._by_name[name]
        except KeyError:
            found = next((r for rx, r in self._compiled if rx.fullmatch(name)), None)
            if len(self._by_name) < 10_000:  # a hostile server cannot grow it without bound
                self._by_name[name] = found
            return found

    def judge(self, name: str, text: str) -> Verdict:
        rule = self.rule(name)
        if rule is None:
            try:
                return Verdict(proto.convert_value(text))
            except ValueError:  # an integer of more digits than Python converts
                return Verdict(text)
        if rule.text:
            return Verdict(text)
        if len(text) > _MAX_NUMBER:
            return Verdict(None, f"{len(text)} characters are too long for a reading")
        if not _DECIMAL.fullmatch(text):
            return Verdict(None, f"{text!r} is not a number")
        number: int | float = float(text) if "." in text else int(text)
        if not math.isfinite(number):
            return Verdict(None, f"{text!r} is not a finite number")
        if rule.integer and number != int(number):
            return Verdict(None, f"{text} is not a whole number")
        if number in rule.sentinels:
            return Verdict(None, f"{text} is a 'not measured' sentinel")
        if (rule.min is not None and number < rule.min) or (
            rule.max is not None and number > rule.max
        ):
            lo = "" if rule.min is None else _num(rule.min)
            hi = "" if rule.max is None else _num(rule.max)
            return Verdict(None, f"{text} is outside {lo}..{hi}")
        return Verdict(number)


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def parse(text: str, source: str) -> Ranges:
    try:
        data = yaml.safe_load(text)
        return Ranges(_File.model_validate(data).rules)
    except yaml.YAMLError as exc:
        raise RangeFileError(f"{source}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise RangeFileError(f"{source}: {where}") from None


@cache
def load(path: str | None = None) -> Ranges:
    """The bundled rules, or those of the file at `path`; cached per process."""
    if path is not None:
        try:
            return parse(Path(path).read_text(encoding="utf-8"), path)
        except OSError as exc:
            raise RangeFileError(f"{path}: cannot read: {exc.strerror}") from None
    node = resources.files("facility_agent.data").joinpath(DATA_FILE)
    return parse(node.read_text(encoding="utf-8"), DATA_FILE)
