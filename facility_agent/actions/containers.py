"""`containers:` steps: Docker or Podman containers stopped through the engine's API socket
(Podman's `system service` speaks the Docker API), started again on recovery, only those this
plan stopped.

The docker SDK is blocking: every call goes to a thread. Targets are journaled by container
name, so recovery finds them again even if the engine gave them new ids.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import docker
import docker.errors
import requests

from facility_agent.actions.targets import (
    Tally,
    TargetLog,
    settle_interrupted,
    skip_stopped,
    start_each,
    stop_together,
)
from facility_agent.config.policy import ContainersStep
from facility_agent.policy.durations import project_target

PROJECT_LABEL = "com.docker.compose.project"
#: States of a container that is up: a paused one holds its state too and must be stopped.
UP = ("running", "paused", "restarting")
_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def _message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return f"{type(exc).__name__}: {exc}"


def client(cfg: ContainersStep, timeout: float) -> Any:
    return docker.DockerClient(base_url=cfg.socket, version=cfg.api_version, timeout=timeout)


def _select(
    api: Any, cfg: ContainersStep
) -> tuple[list[list[str]], list[tuple[str, str]], dict[str, str]]:
    """Running containers per entry (names, then projects), (target, why) not found, and the
    project each container of a `projects:` entry was chosen by."""
    seen: set[str] = set()
    out: list[list[str]] = []
    missing: list[tuple[str, str]] = []
    by_project: dict[str, str] = {}
    for name in cfg.names:
        try:
            c = api.containers.get(name)
        except docker.errors.NotFound:
            missing.append((name, f"{name}: no such container"))
            continue
        if c.status in UP and c.name not in seen:
            seen.add(c.name)
            out.append([c.name])
    for project in cfg.projects:
        found = api.containers.list(filters={"label": f"{PROJECT_LABEL}={project}"})
        group = sorted(c.name for c in found if c.name not in seen)
        seen.update(group)
        by_project.update(dict.fromkeys(group, project))
        out.append(group)
    return [g for g in out if g], missing, by_project


def _stop_one(api: Any, name: str, grace: float) -> str:
    c = api.containers.get(name)
    c.stop(timeout=round(grace))
    c.reload()
    if c.status in UP:
        raise RuntimeError(f"{name} will not stop: still {c.status} after the stop")
    return str(c.attrs.get("State", {}).get("ExitCode", "?"))


async def _stop(api: Any, name: str, cfg: ContainersStep, log: TargetLog) -> str:
    log.mark(name, "stopping")
    started = time.monotonic()
    try:
        code = await asyncio.to_thread(_stop_one, api, name, float(cfg.grace))
    except RuntimeError:
        log.mark(name, "failed")
        raise
    except _ERRORS as exc:
        log.mark(name, "failed")
        raise RuntimeError(f"{name} will not stop: {_message(exc)}") from exc
    took = log.stopped(name, started)
    return f"{name} stopped in {took:.1f} s (exit {code})"


async def _start(api: Any, name: str) -> bool:
    container = await asyncio.to_thread(api.containers.get, name)
    if container.status == "running":
        return True
    await asyncio.to_thread(container.start)
    return False


async def stop_containers(
    cfg: ContainersStep, timeout: float, log: TargetLog, dry_run: bool = False
) -> tuple[bool, str]:
    """Run a `containers:` step: each entry in turn, the containers of one entry together."""
    tally = Tally(f"containers at {cfg.socket}")
    try:
        api = await asyncio.to_thread(client, cfg, timeout)
        plan, missing, by_project = await asyncio.to_thread(_select, api, cfg)
    except _ERRORS as exc:
        tally.fail(cfg.socket, f"cannot reach the container engine: {_message(exc)}")
        return tally.result("")
    try:
        for target, why in missing:
            tally.fail(target, why)
        before = log.states()
        behind = skip_stopped(before, tally)
        plan = [g for g in ([n for n in g if n not in behind] for g in plan) if g]
        if dry_run:
            listed = " then ".join(", ".join(g) for g in plan) or "nothing (none running)"
            tally.ok(f"dry run: would stop {listed} (SIGKILL after {cfg.grace:g} s)")
            return tally.result("")
        running = {n for g in plan for n in g}
        for group in plan:
            started = time.monotonic()
            results = await stop_together(group, lambda n: _stop(api, n, cfg, log), tally)
            # A project's containers stop together: the entry takes as long as all of them.
            project = {by_project.get(n) for n in group}
            whole = not before and not any(isinstance(r, BaseException) for r in results)
            if whole and len(project) == 1 and None not in project:
                log.timed(project_target(str(project.pop())), time.monotonic() - started)
        settle_interrupted(before, running, log, tally)
        return tally.result("no container running")
    finally:
        await asyncio.to_thread(api.close)


async def start_containers(
    cfg: ContainersStep, names: list[str], timeout: float, log: TargetLog
) -> tuple[bool, str]:
    """Recovery: start `names` (already in reverse stop order) one after another."""
    tally = Tally(f"containers at {cfg.socket}")
    try:
        api = await asyncio.to_thread(client, cfg, timeout)
    except _ERRORS as exc:
        tally.fail(cfg.socket, f"cannot reach the container engine: {_message(exc)}")
        return tally.result("")
    try:
        await start_each(names, lambda n: _start(api, n), log, tally, _ERRORS, _message)
        return tally.result("nothing this plan stopped")
    finally:
        await asyncio.to_thread(api.close)
