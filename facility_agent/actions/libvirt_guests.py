"""`vm:` steps: libvirt guests shut down gracefully, destroyed after the step's timeout, and
started again on recovery (in reverse order, only those this plan stopped).

libvirt-python is blocking: every call goes to a thread. Connections are kept per URI for the
life of the process (reopened when dead): a hypervisor's connection is costly to open over SSH
or TLS, and libvirt's test driver keeps its guests' state per connection, so the stop and the
start must use the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import libvirt

from facility_agent.actions.targets import (
    STOPPED,
    Tally,
    TargetLog,
    groups,
    is_glob,
    public_uri,
    settle_interrupted,
    skip_stopped,
    start_each,
    stop_together,
)
from facility_agent.config.policy import VmStep

#: libvirt prints every error to stderr by default; they are raised as exceptions anyway.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_POLL = 0.25
_conns: dict[tuple[str, str | None], Any] = {}
_lock = threading.Lock()


def _message(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return str(exc.get_error_message() or exc)
    return f"{type(exc).__name__}: {exc}"


def _open(cfg: VmStep) -> Any:
    if cfg.username is None and cfg.password is None:
        return libvirt.open(cfg.uri)

    def answer(credentials: list[list[Any]], _data: object) -> int:
        for cred in credentials:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                cred[4] = cfg.username or ""
            elif cred[0] == libvirt.VIR_CRED_PASSPHRASE and cfg.password is not None:
                cred[4] = cfg.password.get_secret_value()
            else:
                return -1
        return 0

    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]
    return libvirt.openAuth(cfg.uri, auth, 0)


def connection(cfg: VmStep) -> Any:
    """The process's connection to `cfg.uri` (blocking: call it in a thread)."""
    key = (cfg.uri, cfg.username)
    with _lock:
        conn = _conns.get(key)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            _conns.pop(key, None)
        conn = _open(cfg)
        _conns[key] = conn
        return conn


def forget(uri: str) -> None:
    """Drop (and close) the kept connections to a URI."""
    with _lock:
        for key in [k for k in _conns if k[0] == uri]:
            with contextlib.suppress(libvirt.libvirtError):
                _conns.pop(key).close()


def _running(conn: Any) -> list[str]:
    return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]


def _defined(conn: Any) -> set[str]:
    return {d.name() for d in conn.listAllDomains(0)}


def _active(conn: Any, name: str) -> bool:
    return bool(conn.lookupByName(name).isActive())


async def _stop(conn: Any, name: str, cfg: VmStep, timeout: float, log: TargetLog) -> str:
    """Shut one guest down; raises RuntimeError (naming it) if it is still running."""
    log.mark(name, "stopping")
    started = time.monotonic()
    refused = ""
    try:
        dom = await asyncio.to_thread(conn.lookupByName, name)
        await asyncio.to_thread(dom.shutdown)
    except libvirt.libvirtError as exc:
        # A paused or hung guest refuses (or ignores) the ACPI request: destroy it at the
        # deadline, as for one that ignores it.
        refused = f" (shutdown refused: {_message(exc)})"
    deadline = started + timeout
    while True:
        try:
            if not await asyncio.to_thread(_active, conn, name):
                took = log.stopped(name, started)
                return f"{name} shut down in {took:.1f} s"
        except libvirt.libvirtError as exc:
            log.mark(name, "failed")
            raise RuntimeError(f"{name}: {_message(exc)}") from exc
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
    if not cfg.destroy:
        log.mark(name, "failed")
        raise RuntimeError(f"{name} still running after {timeout:g} s{refused} (destroy: false)")
    try:
        await asyncio.to_thread(lambda: conn.lookupByName(name).destroy())
    except libvirt.libvirtError as exc:
        if await asyncio.to_thread(_active, conn, name):
            log.mark(name, "failed")
            raise RuntimeError(f"{name} could not be destroyed: {_message(exc)}") from exc
    log.stopped(name, started)
    return f"{name} destroyed after {timeout:g} s{refused}"


async def stop_guests(
    cfg: VmStep, timeout: float, log: TargetLog, dry_run: bool = False
) -> tuple[bool, str]:
    """Run a `vm:` step: each entry of `guests` in turn, the guests of one entry together."""
    tally = Tally(f"libvirt {public_uri(cfg.uri)}")
    try:
        conn = await asyncio.to_thread(connection, cfg)
        running = await asyncio.to_thread(_running, conn)
        defined = await asyncio.to_thread(_defined, conn)
    except libvirt.libvirtError as exc:
        tally.fail(public_uri(cfg.uri), f"cannot reach libvirt: {_message(exc)}")
        return tally.result("")
    for name in (p for p in cfg.guests if not is_glob(p)):
        if name not in defined:
            tally.fail(name, f"{name}: no such guest")
    before = log.states()
    behind = skip_stopped(before, tally)
    # A guest journaled as stopped is never asked again, even if it runs again by now (someone
    # started it, or the test driver's state went with the agent's process): no repeats.
    plan = [g for g in groups((n for n in running if n not in behind), cfg.guests) if g]
    if dry_run:
        listed = " then ".join(", ".join(g) for g in plan) or "nothing (no guest running)"
        then = "destroy" if cfg.destroy else "fail"
        tally.ok(f"dry run: would shut down {listed} (up to {timeout:g} s each, then {then})")
        return tally.result("")
    for group in plan:
        await stop_together(
            group,
            lambda n: _stop(conn, n, cfg, timeout, log),
            tally,
            lambda exc: str(exc) if isinstance(exc, RuntimeError) else _message(exc),
        )
    settle_interrupted(before, set(running), log, tally)
    return tally.result("no guest running")


async def _start(conn: Any, name: str) -> bool:
    dom = await asyncio.to_thread(conn.lookupByName, name)
    if await asyncio.to_thread(dom.isActive):
        return True
    await asyncio.to_thread(dom.create)
    return False


async def start_guests(cfg: VmStep, names: list[str], log: TargetLog) -> tuple[bool, str]:
    """Recovery: start `names` (already in reverse stop order) one after another."""
    tally = Tally(f"libvirt {public_uri(cfg.uri)}")
    try:
        conn = await asyncio.to_thread(connection, cfg)
    except libvirt.libvirtError as exc:
        tally.fail(public_uri(cfg.uri), f"cannot reach libvirt: {_message(exc)}")
        return tally.result("")
    errors = (libvirt.libvirtError,)
    await start_each(names, lambda n: _start(conn, n), log, tally, errors, _message)
    return tally.result("nothing this plan stopped")


__all__ = ["STOPPED", "connection", "forget", "public_uri", "start_guests", "stop_guests"]
