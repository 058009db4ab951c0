"""`nut_server:` in the site file: where the face listens and who may LOGIN."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class NutFaceUser(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    password: SecretStr


class NutServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: host:port (`[::1]:3493` for IPv6; port 0: any free one). Loopback by default.
    listen: str = "127.0.0.1:3493"
    #: Who may LOGIN (upsmon secondaries must). Reading variables needs no login, as with upsd.
    users: list[NutFaceUser] = Field(default_factory=list)
    #: Device ids served as UPS units (empty: every device whose status says OL or OB).
    ups: list[str] = Field(default_factory=list)
    #: At most this many clients at once; more are closed at once.
    max_clients: int = Field(default=64, ge=1, le=4096)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"listen must be host:port, not {value!r}")
        return value

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)
