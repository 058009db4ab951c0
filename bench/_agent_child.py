"""Runs one facility-agent Agent in its own process, for the benchmarks.

Its site is built in code (a `nut` device per UPS name). Two modes:

* until SIGTERM (detection latency): prints `READY` once started, then runs;
* `--seconds S` (poll capacity): runs `--warmup` seconds, then measures S seconds and prints one
  JSON line: polls done by all pollers, process CPU seconds (`time.process_time`) and wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time

from facility_agent.config.site import MqttConfig, SiteConfig
from facility_agent.core.registry import driver_class
from facility_agent.runtime.agent import Agent


def build_site(args: argparse.Namespace) -> SiteConfig:
    nut = driver_class("nut").config_model
    devices = [
        nut.model_validate(
            {
                "id": ups,
                "driver": "nut",
                "host": "127.0.0.1",
                "port": args.nut_port,
                "ups": ups,
                "interval": args.interval,
            }
        )
        for ups in args.ups.split(",")
    ]
    mqtt = None
    if args.broker_port:
        mqtt = MqttConfig(host="127.0.0.1", port=args.broker_port, heartbeat=600.0)
    return SiteConfig(site=args.site, mqtt=mqtt, devices=devices)


async def main(args: argparse.Namespace) -> None:
    agent = Agent(build_site(args), sinks=None if args.broker_port else [])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    print("READY", flush=True)
    try:
        if args.seconds:
            await asyncio.sleep(args.warmup)
            polls0 = sum(p.polls for p in agent.pollers.values())
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(args.seconds)
            polls = sum(p.polls for p in agent.pollers.values()) - polls0
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            print(json.dumps({"polls": polls, "cpu": cpu, "wall": wall}), flush=True)
        else:
            await stop.wait()
    finally:
        await agent.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--site", required=True)
    parser.add_argument("--nut-port", type=int, required=True)
    parser.add_argument("--ups", required=True, help="comma-separated UPS names")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--broker-port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--log", default=None)
    a = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, filename=a.log, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        asyncio.run(main(a))
    except KeyboardInterrupt:
        sys.exit(0)
