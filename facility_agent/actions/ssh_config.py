"""The `ssh:` step of a plan: which host, which argv, how to trust it and log in.

Kept apart from the runner so that loading a site file never imports asyncssh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from facility_agent.core.units import Duration


class SshTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    #: The argv run on the host; each word is quoted for the remote shell (shlex.join).
    run: list[str] = Field(min_length=1)
    #: The file of trusted host keys (OpenSSH format).
    known_hosts_file: Path = Path("~/.ssh/known_hosts")
    #: `strict`: a host whose key is not in the file is refused. `accept-new`: a host not yet in
    #: the file is trusted once and recorded; a host whose key CHANGED is always refused.
    known_hosts: Literal["strict", "accept-new"] = "strict"
    #: A private key (OpenSSH/PEM text, usually `${file:/etc/facility-agent/id_ed25519}`) ...
    key: SecretStr | None = None
    #: ... or the path of one ...
    key_file: Path | None = None
    #: ... or a password (keyboard-interactive is not used).
    password: SecretStr | None = None
    connect_timeout: Duration = 10.0
    #: `exit`: success is exit status 0. `disconnect`: a dropped connection counts as success
    #: too (`systemctl poweroff` often kills the session before it can report).
    success: Literal["exit", "disconnect"] = "exit"

    @model_validator(mode="after")
    def _auth(self) -> SshTarget:
        if self.key is None and self.key_file is None and self.password is None:
            raise ValueError("an ssh: step needs key, key_file or password")
        if self.key is not None and self.key_file is not None:
            raise ValueError("give key or key_file, not both")
        return self

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"
