"""`traps:` in the site file: where the SNMP trap and inform listener listens, and whom it
believes (communities, SNMPv3 users, a rate limit per sender)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


def check_usm_pairs(
    auth_protocol: str | None,
    auth_key: SecretStr | None,
    priv_protocol: str | None,
    priv_key: SecretStr | None,
) -> None:
    """An SNMPv3 user's keys, as USM allows them: each protocol with its key, and privacy only
    with authentication. Shared by the driver's v3 devices and the trap listener's users."""
    if (auth_protocol is None) != (auth_key is None):
        raise ValueError("auth_protocol and auth_key go together")
    if (priv_protocol is None) != (priv_key is None):
        raise ValueError("priv_protocol and priv_key go together")
    if priv_protocol and not auth_protocol:
        raise ValueError("privacy (priv_*) needs authentication (auth_*) too")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrapUser(_Section):
    """An SNMPv3 user allowed to send us traps and informs."""

    user: str = Field(min_length=1)
    auth_protocol: Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"] | None = None
    auth_key: SecretStr | None = None
    priv_protocol: Literal["DES", "3DES", "AES", "AES128", "AES192", "AES256"] | None = None
    priv_key: SecretStr | None = None
    #: The sender's snmpEngineID in hex: needed for v3 traps, not for informs.
    engine_id: str | None = Field(default=None, pattern=r"^(0x)?[0-9a-fA-F]{10,64}$")

    @model_validator(mode="after")
    def _pairs(self) -> TrapUser:
        check_usm_pairs(self.auth_protocol, self.auth_key, self.priv_protocol, self.priv_key)
        return self


class TrapsConfig(_Section):
    """The SNMP trap and inform listener (drivers/snmp/traps.py)."""

    #: host:port; port 162 needs privilege (see docs/snmp.md for the options).
    listen: str = "0.0.0.0:162"
    #: v1/v2c community accepted; other communities are dropped.
    community: SecretStr = SecretStr("public")
    users: list[TrapUser] = Field(default_factory=list)
    #: Notifications per second accepted from one sender, after a burst of `burst`.
    rate: float = Field(default=20.0, gt=0)
    burst: int = Field(default=50, ge=1)
    #: Extra SNMP profile files whose `traps:` sections are known too.
    profiles: list[str] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("use host:port, e.g. 0.0.0.0:162")
        return value

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)
