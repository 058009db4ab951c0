"""`facility-agent status` and SIGHUP reload against a real agent process, a real Mosquitto and
the simulated site: healthy (0), degraded (1), critical (2), broker gone (3); a bad file refused,
a partly changed file applied without touching the other devices, and a plan change deferred
while a plan runs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.mosquitto import Broker, Collector
from tests.fixtures.procs import Proc, free_port
from tests.fixtures.waiting import until as wait

CONSOLE = Path(sys.executable).parent / "facility-agent"


def site_doc(tmp: Path, broker: Broker, nut_port: int, **extra: Any) -> dict[str, Any]:
    def ups(name: str, interval: float = 0.5) -> dict[str, Any]:
        return {"id": name, "driver": "nut", "host": "127.0.0.1", "port": nut_port,
                "ups": name, "interval": interval, "lost_after": 2}  # fmt: skip

    doc: dict[str, Any] = {
        "site": "ops",
        "state_dir": str(tmp / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "heartbeat": 5},
        "devices": [ups("ups-a"), ups("ups-b")],
        "groups": [{"id": "ups", "kind": "power", "members": ["ups-a", "ups-b"], "hold": "500ms"}],
        "shutdown": {
            "group": "ups",
            "triggers": {"on_battery_for": "1s", "runtime_margin": None},
            "expected_duration": "5s",
            "stages": [
                {"name": "drain", "steps": [{"wait": "4s"}]},
                {"name": "announce", "steps": [{"run": ["/bin/true"], "timeout": "5s"}]},
            ],
        },
    }
    doc.update(extra)
    return doc


def status(cfg: Path, *extra: str) -> tuple[int, str]:
    out = subprocess.run(
        [str(CONSOLE), "status", "-c", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.returncode, out.stdout + out.stderr


async def status_json(cfg: Path) -> tuple[int, dict[str, Any]]:
    code, text = await asyncio.to_thread(status, cfg, "--json")
    return code, json.loads(text)


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """The checks here block (HTTP, logs): they run in a thread."""
    return await wait(check, timeout, what, in_thread=True)


def events(col: Collector, kind: str) -> list[dict[str, Any]]:
    out = []
    for m in col.snapshot("facility/ops/events"):
        ev = json.loads(m.payload)
        if ev["type"] == kind:
            out.append(ev)
    return out


async def test_status_and_reload_on_a_running_agent(
    tmp_path: Path,
    nut_simulator: RunningSimulator,
    mosquitto_broker: Broker,
    mqtt_subscribe: Callable[..., Collector],
    procs: Callable[..., Proc],
) -> None:
    cfg = tmp_path / "site.yaml"
    port = nut_simulator.nut_port
    cfg.write_text(yaml.safe_dump(site_doc(tmp_path, mosquitto_broker, port)))
    col = mqtt_subscribe(mosquitto_broker, "facility/ops/#")
    agent = procs(
        [sys.executable, "-m", "facility_agent.cli", "run", "-c", str(cfg)], tmp_path / "agent.log"
    )

    # -- healthy: exit 0 -----------------------------------------------------------------
    async def healthy() -> dict[str, Any] | None:
        code, body = await status_json(cfg)
        ok = code == 0 and set(body["devices"]) == {"ups-a", "ups-b"} and body["groups"]
        return body if ok else None

    body = await until(lambda: asyncio.run(healthy()), 30, "a healthy status")
    assert body["state"] == "OK" and body["agent"] == "online"
    assert body["groups"]["ups"]["status"] == ["OK"]
    assert body["devices"]["ups-a"]["metrics"]["battery.charge"] > 0
    code, text = await asyncio.to_thread(status, cfg)
    assert code == 0 and text.startswith("FACILITY OK - site ops: 2 device(s) ok, 1 group(s) ok")
    # Piped, so plain full-width lines: nothing cut to 80 columns, one thing per line.
    lines = text.splitlines()
    assert any(ln.startswith("device ups-a (nut): comm ok, status OL") for ln in lines), text
    assert "group ups: OK, 2 of 2 healthy, needs 1" in lines and "…" not in text
    code, table = await asyncio.to_thread(status, cfg, "--format", "table")
    assert code == 0 and "redundancy groups" in table
    code, line = await asyncio.to_thread(status, cfg, "--format", "nagios")
    assert code == 0 and len(line.strip().splitlines()) == 1
    summary, perf = line.strip().split(" | ")
    assert summary.startswith("FACILITY OK - site ops")
    assert "devices=2;;;0" in perf.split() and "comm_lost=0;;;0" in perf.split()
    assert "'ups-a charge'=" in perf and "'group ups healthy'=2;;1:;0;2" in perf
    # `status | head -1`: the reader leaving early does not turn the verdict into an error.
    head = await asyncio.to_thread(
        subprocess.run,
        f"{CONSOLE} status -c {cfg} --format plain | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert head.returncode == 0 and head.stdout.startswith("FACILITY OK"), head.stderr
    assert "Traceback" not in head.stderr and "BrokenPipe" not in head.stderr

    def log_has(text: str) -> bool:
        return text in agent.output()

    # -- a bad file is refused, every problem listed, the running config kept --------------
    good = cfg.read_text()
    bad = site_doc(tmp_path, mosquitto_broker, port)
    bad["devices"][1]["port"] = 99999
    bad["devices"].append({"id": "x", "driver": "nosuch"})
    cfg.write_text(yaml.safe_dump(bad))
    agent.signal(signal.SIGHUP)
    await until(lambda: log_has("reload refused: 2 problem(s); running config kept"), 15, "refusal")
    out = agent.output()
    assert "devices[1].port" in out and "unknown driver 'nosuch'" in out
    code, body = await status_json(cfg)
    # Still both devices, healthy; the refused reload is a WARNING: the file on disk is not live.
    assert set(body["devices"]) == {"ups-a", "ups-b"} and body["last_reload"]["ok"] is False
    assert code == 1 and any("reload was refused" in p["text"] for p in body["problems"])

    # -- a partly changed file: ups-b changed, ups-c added (an unknown UPS: lost), ups-a alone -
    before_a = len(col.snapshot("facility/ops/ups-a/state"))
    doc = site_doc(tmp_path, mosquitto_broker, port)
    doc["devices"][1]["interval"] = 1
    doc["devices"].append({**doc["devices"][0], "id": "ups-c", "ups": "nope"})
    doc["groups"].append({"id": "pair", "kind": "power", "members": ["ups-a", "ups-c"]})
    cfg.write_text(yaml.safe_dump(doc))
    agent.signal(signal.SIGHUP)
    await until(
        lambda: log_has("reloaded: added ups-c; changed ups-b; policy applied"), 15, "reload"
    )

    async def degraded() -> dict[str, Any] | None:
        code, body = await status_json(cfg)
        return body if code == 1 and "pair" in body["groups"] else None

    body = await until(lambda: asyncio.run(degraded()), 20, "a degraded status")
    assert body["devices"]["ups-c"]["comm"] == "lost"
    assert body["groups"]["pair"]["status"] == ["DEGRADED"]
    assert body["groups"]["ups"]["status"] == ["OK"] and body["last_reload"]["ok"] is True
    assert body["state"] == "WARNING"
    # ups-a was never restarted: no comm events for it, its states kept flowing, and the
    # unchanged group `ups` raised nothing again.
    assert not [e for e in events(col, "device.comm_restored") if e["device"] == "ups-a"]
    assert len(col.snapshot("facility/ops/ups-a/state")) >= before_a
    assert not [e for e in events(col, "redundancy.restored") if e["device"] == "ups"]
    assert "device ups-a" not in agent.output()

    # -- back to the good file: ups-c removed, its retained state cleared ------------------
    cfg.write_text(good)
    agent.signal(signal.SIGHUP)
    await until(lambda: log_has("removed ups-c"), 15, "second reload")

    async def ok_again() -> dict[str, Any] | None:
        code, body = await status_json(cfg)
        return body if code == 0 and "ups-c" not in body["devices"] else None

    await until(lambda: asyncio.run(ok_again()), 20, "OK after removing ups-c")

    # -- critical: on battery, the plan starts; a plan change waits for the running plan ----
    nut_simulator.inject("generator.crank_fail")
    nut_simulator.inject("utility.fail")
    await until(lambda: events(col, "shutdown.started"), 20, "shutdown.started")
    code, body = await status_json(cfg)
    assert code == 2 and body["state"] == "CRITICAL"
    texts = " ".join(p["text"] for p in body["problems"])
    assert "ups-a: OB" in texts and "shutdown in progress" in texts
    assert body["plan"]["kind"] == "shutdown" and body["plan"]["stages"] == 2
    changed = site_doc(tmp_path, mosquitto_broker, port)
    changed["shutdown"]["stages"][0]["steps"] = [{"wait": "1s"}]
    cfg.write_text(yaml.safe_dump(changed))
    agent.signal(signal.SIGHUP)
    await until(lambda: log_has("the running plan goes on as it was"), 15, "deferred plan")
    await until(lambda: events(col, "shutdown.completed"), 30, "shutdown.completed")
    await until(lambda: log_has("the new shutdown/recovery plan applies"), 10, "new plan applied")
    steps = [e for e in events(col, "shutdown.step")]
    assert any("waited 4 s" in e["message"] for e in steps), steps  # the old plan ran to its end
    code, body = await status_json(cfg)
    assert code == 2 and any("shut down" in p["text"] for p in body["problems"])
    types = [e["type"] for e in body["events"]]
    assert "power.on_battery" in types and "shutdown.completed" in types
    agent.stop()
    assert agent.popen.returncode == 0, agent.output()[-3000:]


def test_status_unknown_without_a_broker(tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    port = free_port()
    cfg.write_text(yaml.safe_dump({"site": "gone", "mqtt": {"host": "127.0.0.1", "port": port}}))
    code, text = status(cfg, "--timeout", "2")
    assert code == 3 and text.startswith(
        "FACILITY UNKNOWN - site gone: cannot reach the MQTT broker"
    )
    code, text = status(cfg, "--json", "--timeout", "2")
    assert code == 3 and json.loads(text)["state"] == "UNKNOWN"


def test_status_unknown_for_an_empty_site(tmp_path: Path, mosquitto_broker: Broker) -> None:
    code, text = status_for(mosquitto_broker, "nobody")
    assert code == 3 and "no retained state" in text


def status_for(broker: Broker, site: str) -> tuple[int, str]:
    out = subprocess.run(
        [
            str(CONSOLE),
            "status",
            "--site",
            site,
            "--mqtt-host",
            broker.host,
            "--mqtt-port",
            str(broker.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.returncode, out.stdout
