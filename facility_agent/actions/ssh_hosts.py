"""Runs an `ssh:` step: one argv on one remote host, the host key checked, never a secret logged.

Trust is the known_hosts file's: a host not in it is refused (or, with `known_hosts:
accept-new`, trusted once and recorded), and a host whose key changed is always refused and
reported as critical, since that is what a man in the middle looks like.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from facility_agent.actions.ssh_config import SshTarget

#: (target, event type, message): how a step reports something worse than its own failure.
Alert = Callable[[str, str, str], None]


@dataclass(frozen=True, slots=True)
class SshOutcome:
    ok: bool
    detail: str


def remote_command(target: SshTarget) -> str:
    """The command line the remote shell sees: every word quoted, so `;` stays a word."""
    return shlex.join(target.run)


def _known(path: Path, target: SshTarget) -> bool:
    """Whether the file holds any key for this host (and port)."""
    if not path.exists():
        return False
    try:
        known = asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError):
        return False
    return bool(known.match(target.host, "", target.port)[0])


def _record(path: Path, target: SshTarget, key: asyncssh.SSHKey) -> None:
    name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{name} {key.export_public_key('openssh').decode().strip()}\n"
    with path.open("a", encoding="ascii") as f:
        f.write(line)


async def run_ssh(target: SshTarget, timeout: float, alert: Alert | None = None) -> SshOutcome:
    """Connect, check the host key, run, judge by exit status (or by the drop, if allowed)."""
    where = target.where
    path = target.known_hosts_file.expanduser()
    known = _known(path, target)
    if not known and target.known_hosts == "strict":
        return SshOutcome(False, f"{where}: host key unknown (not in {path}); refused")
    keys: list[asyncssh.SSHKey] | list[str] = []
    try:
        if target.key is not None:
            keys = [asyncssh.import_private_key(target.key.get_secret_value())]
        elif target.key_file is not None:
            keys = [str(target.key_file.expanduser())]
    except (asyncssh.KeyImportError, OSError) as exc:
        return SshOutcome(False, f"{where}: cannot read the client key ({type(exc).__name__})")
    password = target.password.get_secret_value() if target.password is not None else None
    try:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            username=target.user,
            known_hosts=str(path) if known else None,
            client_keys=keys,
            password=password,
            agent_path=None,
            config=None,
            connect_timeout=target.connect_timeout,
            login_timeout=target.connect_timeout,
            kbdint_auth=False,
        )
    except asyncssh.HostKeyNotVerifiable:
        text = (
            f"{where}: host key does not match {path}: refused (changed host key: "
            "a reinstalled host or a man in the middle; check it, then fix known_hosts)"
        )
        if alert is not None:
            alert(target.host, "ssh.host_key_changed", text)
        return SshOutcome(False, text)
    except asyncssh.PermissionDenied:
        return SshOutcome(False, f"{where}: authentication refused (key or password)")
    except TimeoutError:
        return SshOutcome(False, f"{where}: no connection within {target.connect_timeout:g} s")
    except (OSError, asyncssh.Error) as exc:
        return SshOutcome(False, f"{where}: unreachable ({_reason(exc)})")
    try:
        if not known:
            server_key = conn.get_server_host_key()
            if server_key is not None:
                _record(path, target, server_key)
        return await _run(conn, target, timeout)
    finally:
        conn.close()


async def _run(conn: asyncssh.SSHClientConnection, target: SshTarget, timeout: float) -> SshOutcome:
    where = target.where
    dropped_ok = target.success == "disconnect"
    try:
        result = await conn.run(remote_command(target), check=False, timeout=timeout)
    except asyncssh.TimeoutError:
        return SshOutcome(False, f"{where}: no exit within {timeout:g} s")
    except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
        if dropped_ok:
            return SshOutcome(True, f"{where}: connection dropped (as expected)")
        return SshOutcome(False, f"{where}: connection lost ({_reason(exc)})")
    status = result.exit_status
    if status is None or status < 0:
        if dropped_ok:
            return SshOutcome(True, f"{where}: session ended without a status (as expected)")
        return SshOutcome(False, f"{where}: session ended without an exit status")
    out = (result.stdout if isinstance(result.stdout, str) else "").strip()
    tail = f": {out.splitlines()[-1][:200]}" if out else ""
    return SshOutcome(status == 0, f"{where}: exit {status}{tail}")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
