"""The NUT face of the simulated site: an asyncio server speaking upsd's network protocol.

It answers like NUT 2.8's upsd (docs/net-protocol.txt and server/net*.c in networkupstools/nut)
so that the real clients (`upsc`, `upsrw`, `upscmd`, upsmon) and our own driver can be pointed at
it: the same replies, the same error names in the same order of checks, the same quoting.

Two things differ on purpose:
- every reply, however many lines, leaves in ONE write and TCP_NODELAY is set. upsd writes a
  LIST one line per write(); with Nagle and the client's delayed ACK that caps a client at ~22
  LIST requests per second (PEERS.md, PHYSICS). A simulator should not hide a driver's speed.
- a line longer than `max_line` or a client idle for `idle_timeout` is disconnected, so a bad
  client cannot hold memory or a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from facility_agent.simulators.site import SimulatedSite, SiteError
from facility_wire.nut import NutLineError, Session, split_line

log = logging.getLogger(__name__)

UPSD_VERSION = "2.8.0"
PROTOCOL_VERSION = "1.3"

# --------------------------------------------------------------------------------------------
# Users (upsd.users)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NutUser:
    """One upsd.users section: a password, `actions` (SET, FSD), `instcmds` (names or ALL) and
    an optional `upsmon primary|secondary` role (which grants LOGIN, and PRIMARY/FSD)."""

    password: str
    actions: frozenset[str] = frozenset()
    instcmds: frozenset[str] = frozenset()
    upsmon: Literal["primary", "secondary"] | None = None

    def may(self, action: str) -> bool:
        action = action.upper()
        if action in {a.upper() for a in self.actions}:
            return True
        if self.upsmon == "primary":
            return action in ("LOGIN", "MASTER", "PRIMARY", "FSD")
        if self.upsmon == "secondary":
            return action == "LOGIN"
        return False

    def may_instcmd(self, cmd: str) -> bool:
        allowed = {c.lower() for c in self.instcmds}
        return "all" in allowed or cmd.lower() in allowed


#: The simulator's users; the same names and passwords as the test fixture of the real upsd.
DEFAULT_USERS: dict[str, NutUser] = {
    "admin": NutUser("adminpass", frozenset({"SET", "FSD"}), frozenset({"ALL"})),
    "monuser": NutUser("monpass", upsmon="primary"),
    "observer": NutUser("observerpass", upsmon="secondary"),
}


def users_from_mapping(data: Mapping[str, Mapping[str, Any]]) -> dict[str, NutUser]:
    """Users from plain data shaped like upsd.users, e.g.
    `{admin: {password: x, actions: [SET, FSD], instcmds: [ALL]},
    mon: {password: y, upsmon: primary}}`."""
    users: dict[str, NutUser] = {}
    for name, spec in data.items():
        if "password" not in spec:
            raise ValueError(f"nut user {name!r}: password is required")
        upsmon = spec.get("upsmon")
        if upsmon not in (None, "primary", "secondary", "master", "slave"):
            raise ValueError(f"nut user {name!r}: upsmon must be primary or secondary")
        role: Literal["primary", "secondary"] | None = None
        if upsmon in ("primary", "master"):
            role = "primary"
        elif upsmon in ("secondary", "slave"):
            role = "secondary"
        users[str(name)] = NutUser(
            password=str(spec["password"]),
            actions=frozenset(str(a).upper() for a in spec.get("actions", ())),
            instcmds=frozenset(str(c) for c in spec.get("instcmds", ())),
            upsmon=role,
        )
    return users


# --------------------------------------------------------------------------------------------
# Wire format (requests are split by facility_wire.nut, the NUT driver's own rules)
# --------------------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A value as upsd sends it: in double quotes, with `\\` and `"` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------
# Descriptions (upsd reads them from cmdvartab; these are the ones our UPSes use)
# --------------------------------------------------------------------------------------------

VAR_DESCRIPTIONS: dict[str, str] = {
    "battery.charge": "Battery charge (percent of full)",
    "battery.charge.low": "Remaining battery level when UPS switches to LB (percent)",
    "battery.runtime": "Battery runtime (seconds)",
    "battery.runtime.low": "Remaining battery runtime when UPS switches to LB (seconds)",
    "battery.type": "Battery chemistry",
    "battery.voltage": "Battery voltage (V)",
    "battery.voltage.nominal": "Nominal battery voltage (V)",
    "device.mfr": "Device manufacturer",
    "device.model": "Device model",
    "device.serial": "Device serial number",
    "device.type": "Device type (ups, pdu, scd, psu, ats)",
    "driver.name": "Driver name",
    "driver.version": "Driver version",
    "input.frequency": "Input line frequency (Hz)",
    "input.voltage": "Input voltage (V)",
    "input.voltage.nominal": "Nominal input voltage (V)",
    "output.frequency": "Output frequency (Hz)",
    "output.voltage": "Output voltage (V)",
    "ups.beeper.status": "UPS beeper status",
    "ups.delay.shutdown": "Interval to wait after shutdown with delay command (seconds)",
    "ups.delay.start": "Interval to wait before (re)starting the load (seconds)",
    "ups.id": "UPS system identifier",
    "ups.load": "Load on UPS (percent of full)",
    "ups.mfr": "UPS manufacturer",
    "ups.model": "UPS model",
    "ups.realpower": "Current value of real power (W)",
    "ups.realpower.nominal": "UPS real power rating (W)",
    "ups.serial": "UPS serial number",
    "ups.status": "UPS status",
    "ups.temperature": "UPS temperature (degrees C)",
    "ups.test.result": "Results of last self test",
    "ups.timer.shutdown": "Time before the load will be shutdown (seconds)",
}

#: Read-only variables whose values are text; every other read-only one is a NUMBER.
STRING_VARS = frozenset(
    {
        "battery.type",
        "device.mfr",
        "device.model",
        "device.serial",
        "device.type",
        "driver.name",
        "driver.version",
        "ups.beeper.status",
        "ups.mfr",
        "ups.model",
        "ups.serial",
        "ups.status",
        "ups.test.result",
    }
)

HELP_TEXT = "Commands: HELP VER GET LIST SET INSTCMD LOGIN LOGOUT USERNAME PASSWORD STARTTLS"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass
class _Client(Session):
    """A connection's session, plus what only this upsd has: TRACKING, and a close under way."""

    tracking: bool = False
    closing: bool = False


class _Err(Exception):
    """Ends a request with `ERR <code>`."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _credential(client: _Client, args: list[str], which: Literal["username", "password"]) -> str:
    """USERNAME or PASSWORD: one non-empty argument, once per connection, as upsd."""
    if len(args) != 1:
        raise _Err("INVALID-ARGUMENT")
    if getattr(client, which) is not None:
        raise _Err(f"ALREADY-SET-{which.upper()}")
    if not args[0]:
        raise _Err(f"INVALID-{which.upper()}")
    setattr(client, which, args[0])
    return "OK"


Handler = Callable[[_Client, list[str]], str]


@dataclass
class _Command:
    fn: Handler
    #: upsd's FLAG_USER: USERNAME and PASSWORD must have been sent.
    needs_user: bool = False


@dataclass
class NutServerStats:
    """What the server has seen, for tests and benchmarks to read; the server never acts on it."""

    connections: int = 0
    requests: int = 0
    rejected_lines: int = 0
    idle_disconnects: int = 0
    #: The ERR replies sent, by code.
    errors: Counter[str] = field(default_factory=Counter)


class NutServer:
    """upsd for the simulated site's UPSes."""

    def __init__(
        self,
        site: SimulatedSite,
        host: str = "127.0.0.1",
        port: int = 3493,
        users: Mapping[str, NutUser] | None = None,
        *,
        max_line: int = 1024,
        idle_timeout: float = 300.0,
        max_clients: int = 256,
    ) -> None:
        self.site = site
        self.host = host
        self._requested_port = port
        self.users: dict[str, NutUser] = dict(DEFAULT_USERS if users is None else users)
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.stats = NutServerStats()
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], _Client] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._tracking: dict[str, str] = {}
        self._commands: dict[str, _Command] = {
            "VER": _Command(self._ver),
            "NETVER": _Command(self._netver),
            "PROTVER": _Command(self._netver),
            "HELP": _Command(lambda _c, _a: HELP_TEXT),
            "STARTTLS": _Command(self._starttls),
            "GET": _Command(self._get),
            "LIST": _Command(self._list),
            "USERNAME": _Command(self._username),
            "PASSWORD": _Command(self._password),
            "LOGIN": _Command(self._login, needs_user=True),
            "LOGOUT": _Command(self._logout),
            "PRIMARY": _Command(self._primary, needs_user=True),
            "MASTER": _Command(self._master, needs_user=True),
            "FSD": _Command(self._fsd, needs_user=True),
            "SET": _Command(self._set, needs_user=True),
            "INSTCMD": _Command(self._instcmd, needs_user=True),
        }

    # ---- life cycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connected, self.host, self._requested_port, reuse_address=True
        )
        log.info("NUT server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> NutServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- connections --------------------------------------------------------------------

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        client = _Client(str(peer[0]) if isinstance(peer, tuple) else str(peer))
        if len(self._clients) >= self.max_clients:
            log.warning("NUT server: too many clients, refusing %s", client.peer)
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._clients[task] = client
        self._writers.add(writer)
        self.stats.connections += 1
        try:
            await self._serve(client, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            del self._clients[task]
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, client: _Client, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buffer = b""
        while not client.closing:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await reader.read(4096)
            except TimeoutError:
                self.stats.idle_disconnects += 1
                return
            if not chunk:
                return
            buffer += chunk
            replies: list[str] = []
            too_long = False
            while b"\n" in buffer and not client.closing:
                raw, buffer = buffer.split(b"\n", 1)
                if len(raw) > self.max_line:
                    too_long = True
                    break
                reply = self.handle_line(client, raw.decode("utf-8", "replace").rstrip("\r"))
                if reply is not None:
                    replies.append(reply)
            if too_long or (len(buffer) > self.max_line and not client.closing):
                # A line past the limit: say so and hang up; we cannot know where it ends.
                self.stats.rejected_lines += 1
                replies.append("ERR INVALID-ARGUMENT\n")
                client.closing = True
            if replies:
                writer.write("".join(replies).encode("utf-8"))
                await writer.drain()

    # ---- requests -----------------------------------------------------------------------

    def handle_line(self, client: _Client, line: str) -> str | None:
        """The complete reply (lines ending in newline) to one request line, None for a blank."""
        try:
            args = split_line(line)
        except NutLineError:
            return self._error("UNKNOWN-COMMAND")
        if not args:
            return None
        self.stats.requests += 1
        command = self._commands.get(args[0].upper())
        if command is None:
            return self._error("UNKNOWN-COMMAND")
        if command.needs_user:
            if client.username is None:
                return self._error("USERNAME-REQUIRED")
            if client.password is None:
                return self._error("PASSWORD-REQUIRED")
        try:
            reply = command.fn(client, args[1:])
        except _Err as e:
            return self._error(e.code)
        log.debug("NUT %s: %s -> %s", client.peer, args[0], reply.split("\n", 1)[0])
        return reply if reply.endswith("\n") else reply + "\n"

    def _error(self, code: str) -> str:
        self.stats.errors[code] += 1
        return f"ERR {code}\n"

    def _ups(self, name: str, *, available: bool = True) -> str:
        """The UPS's own name for `name` (case-insensitive, as upsd), checking it answers."""
        found = next((n for n in self.site.ups_names() if n.lower() == name.lower()), None)
        if found is None:
            raise _Err("UNKNOWN-UPS")
        if available:
            ups = self.site.get_ups(found)
            if ups.driver_down:
                raise _Err("DRIVER-NOT-CONNECTED")
            if ups.comm_dead:
                raise _Err("DATA-STALE")
        return found

    def _user(self, client: _Client) -> NutUser | None:
        """The user if the name and password match, as upsd checks at each privileged request."""
        user = self.users.get(client.username or "")
        if user is None or client.password != user.password:
            return None
        return user

    def _allowed(self, client: _Client, action: str) -> None:
        user = self._user(client)
        if user is None or not user.may(action):
            raise _Err("ACCESS-DENIED")

    def _find_var(self, ups: str, var: str) -> tuple[str, str]:
        values = self.site.nut_vars(ups)
        if var in values:
            return var, values[var]
        for name, value in values.items():
            if name.lower() == var.lower():
                return name, value
        raise _Err("VAR-NOT-SUPPORTED")

    # simple commands

    def _ver(self, _c: _Client, _a: list[str]) -> str:
        return f"Network UPS Tools upsd {UPSD_VERSION} - https://www.networkupstools.org/"

    def _netver(self, _c: _Client, _a: list[str]) -> str:
        return PROTOCOL_VERSION

    def _starttls(self, _c: _Client, _a: list[str]) -> str:
        raise _Err("FEATURE-NOT-CONFIGURED")

    def _username(self, client: _Client, args: list[str]) -> str:
        return _credential(client, args, "username")

    def _password(self, client: _Client, args: list[str]) -> str:
        return _credential(client, args, "password")

    def _login(self, client: _Client, args: list[str]) -> str:
        if len(args) != 1:
            raise _Err("INVALID-ARGUMENT")
        if client.login_ups is not None:
            raise _Err("ALREADY-LOGGED-IN")
        ups = self._ups(args[0], available=False)
        self._allowed(client, "LOGIN")
        client.login_ups = ups
        return "OK"

    def _logout(self, client: _Client, args: list[str]) -> str:
        if args:
            raise _Err("INVALID-ARGUMENT")
        client.closing = True
        return "OK Goodbye"

    def _primary(self, client: _Client, args: list[str]) -> str:
        self._check_primary(client, args)
        return "OK PRIMARY-GRANTED"

    def _master(self, client: _Client, args: list[str]) -> str:
        self._check_primary(client, args)
        return "OK MASTER-GRANTED"

    def _check_primary(self, client: _Client, args: list[str]) -> None:
        if len(args) != 1:
            raise _Err("INVALID-ARGUMENT")
        self._ups(args[0], available=False)
        self._allowed(client, "MASTER")

    def _fsd(self, client: _Client, args: list[str]) -> str:
        if len(args) != 1:
            raise _Err("INVALID-ARGUMENT")
        ups = self._ups(args[0], available=False)
        self._allowed(client, "FSD")
        self.site.set_fsd(ups)
        log.info("NUT: %s@%s set FSD on %s", client.username, client.peer, ups)
        return "OK FSD-SET"

    # GET

    def _get(self, client: _Client, args: list[str]) -> str:
        if not args:
            raise _Err("INVALID-ARGUMENT")
        sub = args[0].upper()
        if sub == "TRACKING":
            if len(args) < 2:
                return "ON" if client.tracking else "OFF"
            if not client.tracking:
                raise _Err("FEATURE-NOT-CONFIGURED")
            return self._tracking.get(args[1], "ERR UNKNOWN")
        if len(args) < 2:
            raise _Err("INVALID-ARGUMENT")
        name = args[1]
        if sub == "NUMLOGINS":
            ups = self._ups(name)
            count = sum(1 for c in self._clients.values() if c.login_ups == ups)
            return f"NUMLOGINS {name} {count}"
        if sub == "UPSDESC":
            ups = self._ups(name, available=False)
            return f"UPSDESC {name} {quote(self.site.ups_description(ups))}"
        if len(args) < 3:
            raise _Err("INVALID-ARGUMENT")
        item = args[2]
        if sub == "VAR":
            if item.lower() == "server.info":
                return f"VAR {name} server.info {quote(self._ver(client, []))}"
            if item.lower() == "server.version":
                return f"VAR {name} server.version {quote(UPSD_VERSION)}"
            if item.lower().startswith("server."):
                raise _Err("VAR-NOT-SUPPORTED")
            ups = self._ups(name)
            _var, value = self._find_var(ups, item)
            return f"VAR {name} {item} {quote(value)}"
        if sub == "TYPE":
            ups = self._ups(name)
            var, _value = self._find_var(ups, item)
            rw = self.site.nut_rw_vars(ups)
            if var in rw:
                return f"TYPE {name} {item} RW {rw[var]}"
            return f"TYPE {name} {item} {'STRING:64' if var in STRING_VARS else 'NUMBER'}"
        if sub == "DESC":
            self._ups(name)
            desc = VAR_DESCRIPTIONS.get(item.lower(), "Description unavailable")
            return f"DESC {name} {item} {quote(desc)}"
        if sub == "CMDDESC":
            ups = self._ups(name)
            cmds = self.site.nut_commands(ups)
            desc = cmds.get(item.lower(), "Description unavailable")
            return f"CMDDESC {name} {item} {quote(desc)}"
        raise _Err("INVALID-ARGUMENT")

    # LIST

    def _list(self, client: _Client, args: list[str]) -> str:
        if not args:
            raise _Err("INVALID-ARGUMENT")
        sub = args[0].upper()
        if sub == "UPS":
            lines = ["BEGIN LIST UPS"]
            lines += [
                f"UPS {n} {quote(self.site.ups_description(n))}" for n in self.site.ups_names()
            ]
            lines.append("END LIST UPS")
            return "\n".join(lines)
        if len(args) < 2:
            raise _Err("INVALID-ARGUMENT")
        name = args[1]
        if sub == "VAR":
            ups = self._ups(name)
            values = self.site.nut_vars(ups)
            body = [f"VAR {name} {k} {quote(values[k])}" for k in sorted(values)]
            return "\n".join([f"BEGIN LIST VAR {name}", *body, f"END LIST VAR {name}"])
        if sub == "RW":
            ups = self._ups(name)
            values = self.site.nut_vars(ups)
            rw = self.site.nut_rw_vars(ups)
            body = [f"RW {name} {k} {quote(values.get(k, ''))}" for k in sorted(rw)]
            return "\n".join([f"BEGIN LIST RW {name}", *body, f"END LIST RW {name}"])
        if sub == "CMD":
            ups = self._ups(name)
            body = [f"CMD {name} {c}" for c in sorted(self.site.nut_commands(ups))]
            return "\n".join([f"BEGIN LIST CMD {name}", *body, f"END LIST CMD {name}"])
        if sub == "CLIENT":
            ups = self._ups(name, available=False)
            body = [f"CLIENT {name} {c.peer}" for c in self._clients.values() if c.login_ups == ups]
            return "\n".join([f"BEGIN LIST CLIENT {name}", *body, f"END LIST CLIENT {name}"])
        if len(args) < 3:
            raise _Err("INVALID-ARGUMENT")
        if sub in ("ENUM", "RANGE"):
            ups = self._ups(name)
            self._find_var(ups, args[2])
            # No enumerated or ranged variables here: an empty, well-formed list.
            return f"BEGIN LIST {sub} {name} {args[2]}\nEND LIST {sub} {name} {args[2]}"
        raise _Err("INVALID-ARGUMENT")

    # SET and INSTCMD

    def _set(self, client: _Client, args: list[str]) -> str:
        if len(args) < 2:
            raise _Err("INVALID-ARGUMENT")
        sub = args[0].upper()
        if sub == "TRACKING":
            if args[1].upper() not in ("ON", "OFF"):
                raise _Err("INVALID-ARGUMENT")
            client.tracking = args[1].upper() == "ON"
            return "OK"
        if sub != "VAR" or len(args) < 4:
            raise _Err("INVALID-ARGUMENT")
        ups = self._ups(args[1])
        self._allowed(client, "SET")
        var, _old = self._find_var(ups, args[2])
        try:
            self.site.set_nut_var(ups, var, args[3])
        except SiteError as e:
            raise _Err(e.code) from None
        log.info("NUT: %s@%s set %s on %s to %r", client.username, client.peer, var, ups, args[3])
        return self._tracked(client, "SUCCESS")

    def _instcmd(self, client: _Client, args: list[str]) -> str:
        if len(args) < 2:
            raise _Err("INVALID-ARGUMENT")
        ups = self._ups(args[0])
        cmd = args[1].lower()
        if cmd not in self.site.nut_commands(ups):
            raise _Err("CMD-NOT-SUPPORTED")
        user = self._user(client)
        if user is None or not user.may_instcmd(cmd):
            raise _Err("ACCESS-DENIED")
        outcome = "SUCCESS"
        try:
            self.site.run_nut_command(ups, cmd)
        except SiteError as e:
            if not client.tracking:
                raise _Err("INSTCMD-FAILED") from e
            outcome = "ERR FAILED"
        log.info("NUT: %s@%s ran %s on %s", client.username, client.peer, cmd, ups)
        return self._tracked(client, outcome)

    def _tracked(self, client: _Client, outcome: str) -> str:
        if not client.tracking:
            return "OK"
        tracking_id = str(uuid.uuid4())
        if len(self._tracking) > 10_000:  # old results are dropped like upsd's cleanup
            self._tracking.clear()
        self._tracking[tracking_id] = outcome
        return f"OK TRACKING {tracking_id}"
