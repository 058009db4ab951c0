"""`facility-agent snmp record HOST -o FILE.snmprec`: record a walk for a bug report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from facility_agent.core.driver import AddCommand, DeviceConfig


async def _record(args: argparse.Namespace) -> tuple[list[str], str] | None:
    from facility_agent.drivers.snmp.detect import SYS_OBJECT_ID
    from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver
    from facility_agent.drivers.snmp.record import record

    keys = {
        "user": args.user,
        "auth_protocol": args.auth_protocol,
        "auth_key": args.auth_key,
        "priv_protocol": args.priv_protocol,
        "priv_key": args.priv_key,
    }
    try:
        cfg = SnmpDeviceConfig(
            id="record",
            driver="snmp",
            host=args.host,
            port=args.port,
            version=args.version,
            community=args.community,
            timeout=args.timeout,
            **{k: v for k, v in keys.items() if v is not None},
        )
    except ValidationError as exc:
        print(f"snmp record: {exc.errors()[0]['msg']}", file=sys.stderr)
        return None
    client = SnmpDriver(cfg).client()
    try:
        sysoid = await client.get([SYS_OBJECT_ID])
        lines = await record(client)
    except Exception as exc:  # one clear line for the user, not a traceback
        print(f"snmp record: {args.host}: {exc}", file=sys.stderr)
        return None
    finally:
        await client.close()
    found = next((_oid(v) for o, v in sysoid if o == SYS_OBJECT_ID), "?")
    return lines, found


def _oid(value: tuple[int, object]) -> str:
    from facility_agent.drivers.snmp.wire import oid_str

    raw = value[1]
    return oid_str(raw) if isinstance(raw, tuple) else str(raw)


async def probe_devices(devices: Sequence[DeviceConfig]) -> bool:
    """`check --probe`: which profile each SNMP device gets and why; False if one fits none."""
    from facility_agent.drivers.snmp.detect import detect
    from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver

    ok = True
    for dev in devices:
        if not isinstance(dev, SnmpDeviceConfig):
            continue
        if dev.profile != "auto":
            print(f"  {dev.id}: profile {dev.profile} (named in the site file)")
            continue
        drv = SnmpDriver(dev)
        try:
            choice = await detect(drv.client(), dev.host)
        except Exception as exc:  # one line per device, the others are still probed
            print(f"  {dev.id}: {exc}")
            ok = False
        else:
            print(f"  {dev.id}: profile {choice.profile} ({choice.reason})")
        finally:
            await drv.close()
    return ok


def cmd_record(args: argparse.Namespace) -> int:
    done = asyncio.run(_record(args))
    if done is None:
        return 1
    lines, sysoid = done
    Path(args.output).write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    print(
        f"{args.output}: {len(lines)} objects from {args.host} (sysObjectID {sysoid}); "
        "serial numbers, sysContact and sysLocation masked"
    )
    return 0


def add_parser(command: AddCommand) -> None:
    what = "SNMP tools: `snmp record HOST -o FILE.snmprec` records a walk for a bug report"
    p = command("snmp", what, cmd_record)  # `record`, the one tool so far (and required)
    tools = p.add_subparsers(dest="tool", required=True)
    r = tools.add_parser(
        "record",
        help="walk the objects every bundled profile reads into a .snmprec file, masked",
        description="walk the system group and every bundled profile's subtrees into a "
        ".snmprec file (snmpsim format), with serial numbers, sysContact and sysLocation masked",
    )
    r.add_argument("host")
    r.add_argument("-o", "--output", required=True, metavar="FILE", help="the .snmprec to write")
    r.add_argument("-p", "--port", type=int, default=161)
    r.add_argument("-v", "--version", choices=["1", "2c", "3"], default="2c")
    r.add_argument("--community", default="public")
    r.add_argument("--user", help="SNMPv3 user")
    r.add_argument(
        "--auth-protocol", choices=["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
    )
    r.add_argument("--auth-key")
    r.add_argument("--priv-protocol", choices=["DES", "3DES", "AES", "AES128", "AES192", "AES256"])
    r.add_argument("--priv-key")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds per request batch")
