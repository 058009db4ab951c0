"""SNMP device actions as profile data: a `commands:` entry is one SET of one value.

Why data: which OID switches an outlet and which number means "off" differs per MIB (rPDU2's
rPDU2OutletSwitchedControlCommand immediateOff(2), EATON-EPDU-MIB's outletControlOffCmd 0 = now,
Tripp Lite's tlpPduOutletCommand turnOff(1)), so the profile says it and the driver only sends
it. A command may repeat over the rows of one of the profile's tables (`rows: outlet`): its name
holds `{key}` (the row's name, `outlet.3.load.off`) and its OID `{index}` (the row's full index,
`0.3` for an HPE PDU). Commands are sent only when the device says `allow_writes: true`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from facility_agent.drivers.snmp import wire as ber
from facility_agent.drivers.snmp.wire import Oid, Value

#: SET value types a profile may name, and their BER tags.
TAGS = {"integer": ber.INTEGER, "unsigned": ber.GAUGE32, "string": ber.OCTET_STRING}


class Command(BaseModel):
    """One action: SET `oid` to `value` (once per row of `rows`, when given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: `symbol.suffix` or numeric; with `rows`, it ends in `.{index}` (the row's index).
    oid: str
    value: int | str
    type: Literal["integer", "unsigned", "string"] = "integer"
    #: A table prefix of the profile (`outlet`): the command exists once per row of it.
    rows: str | None = None
    #: Shown in `actions` listings and the docs (`turn the outlet off at once`).
    description: str = ""

    @field_validator("oid")
    @classmethod
    def _index_last(cls, value: str) -> str:
        if "{index}" in value and not value.endswith(".{index}"):
            raise ValueError("{index} must end the OID (`outletCommand.{index}`)")
        return value

    @model_validator(mode="after")
    def _typed(self) -> Command:
        if (self.type == "string") != isinstance(self.value, str):
            raise ValueError("a string command takes a text value, the others a number")
        if (self.rows is None) == ("{index}" in self.oid):
            raise ValueError("rows: and an OID ending in .{index} go together")
        return self

    @property
    def base(self) -> str:
        """The OID without its `.{index}` tail."""
        return self.oid.removesuffix(".{index}")

    def wire_value(self) -> Value:
        raw: int | bytes = self.value.encode() if isinstance(self.value, str) else self.value
        return TAGS[self.type], raw


def check_names(commands: dict[str, Command], tables: set[str]) -> None:
    """`{key}` in a name iff the command repeats over rows of a table the profile has."""
    for name, cmd in commands.items():
        if ("{key}" in name) != (cmd.rows is not None):
            raise ValueError(f"command {name!r}: a per-row command names its row with {{key}}")
        if cmd.rows is not None and cmd.rows not in tables:
            raise ValueError(f"command {name!r}: rows: {cmd.rows!r} is not a table")
        if not re.fullmatch(r"[a-z0-9_.{}-]+", name):
            raise ValueError(
                f"command {name!r}: use dotted lowercase names (outlet.{{key}}.load.on)"
            )


def expand(commands: dict[str, Command], rows: dict[str, dict[str, Oid]]) -> list[str]:
    """Every action name, per-row commands once per row seen in the last poll."""
    out: list[str] = []
    for name, cmd in commands.items():
        if cmd.rows is None:
            out.append(name)
        else:
            out.extend(name.replace("{key}", key) for key in rows.get(cmd.rows, {}))
    return out


def find(
    commands: dict[str, Command], rows: dict[str, dict[str, Oid]], action: str
) -> tuple[Command, Oid] | None:
    """The command an action name means and the row index it is for (`()` for a scalar one)."""
    for name, cmd in commands.items():
        if cmd.rows is None:
            if name == action:
                return cmd, ()
            continue
        head, _, tail = name.partition("{key}")
        if action.startswith(head) and action.endswith(tail) and len(action) > len(head + tail):
            key = action[len(head) : len(action) - len(tail)]
            index = rows.get(cmd.rows, {}).get(key)
            if index is not None:
                return cmd, index
    return None


__all__ = ["Command", "check_names", "expand", "find"]
