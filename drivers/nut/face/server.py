"""A small, read-only upsd-protocol server on the agent's own state.

Each served UPS shows the variables the agent last read from it, with `ups.status` built from
its status flags, plus `FSD` once the plan has reached a stage that says
`notify_nut_secondaries: true`. Existing upsmon secondaries therefore shut their hosts down
when the plan says so, not when each of them guesses. Nothing can be written: SET, INSTCMD,
FSD and PRIMARY are refused.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping

from facility_agent.core.driver import SiteService
from facility_agent.core.model import DeviceState, MetricValue
from facility_agent.drivers.nut.face.config import NutServerConfig
from facility_agent.drivers.nut.protocol import quote
from facility_wire.nut import Session, split_line

log = logging.getLogger(__name__)

#: A request line longer than this closes the connection (upsd's own limit is similar).
MAX_LINE = 1024
UPS_FLAGS = frozenset({"OL", "OB"})
#: GET's requests and how many words each has, its own name included (GET TRACKING: any).
GET_WORDS = {"VAR": 3, "TYPE": 3, "DESC": 3, "CMDDESC": 3, "UPSDESC": 2, "NUMLOGINS": 2}


class NutError(Exception):
    """An `ERR CODE` reply."""


def quoted(value: str) -> str:
    """A value as upsd sends it: always in double quotes (`VAR ups battery.charge "100"`). CR, LF
    and NUL become spaces: no device string may end a reply line and forge another."""
    for c in "\r\n\0":
        value = value.replace(c, " ")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_value(value: MetricValue) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}" if not value.is_integer() else str(int(value))
    return str(value)


class NutFace(SiteService):
    """The agent's read-only upsd for upsmon secondaries: every UPS's state as NUT variables,
    with FSD while the shutdown plan asks them to go."""

    def __init__(
        self,
        config: NutServerConfig,
        states: Callable[[], Mapping[str, DeviceState]],
        fsd: Callable[[], bool],
    ) -> None:
        self.config = config
        self.states = states
        self.fsd = fsd
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.StreamWriter, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        #: `user@peer` -> when (monotonic) a logged-in client was first served a `ups.status`
        #: with FSD: when each secondary learned it must go (the drill report shows it).
        self.fsd_seen: dict[str, float] = {}

    # -- the view -----------------------------------------------------------------------------

    def units(self) -> dict[str, DeviceState]:
        states = self.states()
        if self.config.ups:
            return {u: states[u] for u in self.config.ups if u in states}
        return {d: s for d, s in states.items() if UPS_FLAGS & set(s.status)}

    def variables(self, ups: str) -> dict[str, str]:
        state = self._unit(ups)
        if state.comm != "ok":
            raise NutError("DATA-STALE")
        unknown = set(state.unknown)
        out = {k: format_value(v) for k, v in state.metrics.items() if k not in unknown}
        flags = [f for f in state.status if f != "FSD"]
        if self.fsd() or "FSD" in state.status:
            flags.append("FSD")
        out["ups.status"] = " ".join(flags)
        out.setdefault("device.type", "ups")
        return dict(sorted(out.items()))

    def _unit(self, ups: str) -> DeviceState:
        state = self.units().get(ups)
        if state is None:
            raise NutError("UNKNOWN-UPS")
        return state

    # -- serving ------------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = self.config.address
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE * 2)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("NUT face listening on %s:%d (read-only)", host, self.port)

    async def stop(self) -> None:
        # Taken before the first await: a second stop() meanwhile has nothing left to stop.
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    def drill_lines(self, decided: float | None, runtime: float | None) -> list[str]:
        """When each secondary was first served FSD, after the decision and against the
        battery runtime left."""
        where = f"{self.config.address[0]}:{self.port}"
        if not self.fsd_seen:
            return [f"  NUT face {where}: no secondary was served FSD"]
        out = []
        for who, at in sorted(self.fsd_seen.items(), key=lambda item: item[1]):
            line = f"  NUT secondary {who} saw FSD"
            if decided is not None:
                after = at - decided
                line += f" at +{after:.2f} s"
                if runtime is not None:
                    line += f" ({runtime - after:.0f} s of battery runtime left)"
            out.append(line)
        return out

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = Session(peer[0] if isinstance(peer, tuple) else str(peer))
        if len(self._clients) >= self.config.max_clients:
            writer.close()
            return
        self._clients[writer] = client
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    break
                if len(raw) > MAX_LINE:
                    break
                reply, close = self._answer(client, raw.decode("utf-8", "replace").strip())
                writer.write(reply.encode())
                await writer.drain()
                if close:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.pop(writer, None)
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    def _answer(self, client: Session, line: str) -> tuple[str, bool]:
        try:
            words = split_line(line)
        except Exception:
            return "ERR INVALID-ARGUMENT\n", False
        if not words:
            return "ERR UNKNOWN-COMMAND\n", False
        cmd, args = words[0].upper(), words[1:]
        try:
            if cmd == "LOGOUT":
                return "OK Goodbye\n", True
            return self._command(client, cmd, args), False
        except NutError as exc:
            return f"ERR {exc}\n", False
        except ValueError:  # a name with CR/LF in it: never sent
            return "ERR INVALID-ARGUMENT\n", False

    def _command(self, client: Session, cmd: str, args: list[str]) -> str:
        if cmd == "VER":
            return "Network UPS Tools upsd-compatible facility-agent face (read-only)\n"
        if cmd in ("NETVER", "PROTVER"):
            return "1.3\n"
        if cmd == "HELP":
            return "Commands: HELP VER GET LIST USERNAME PASSWORD LOGIN LOGOUT STARTTLS\n"
        if cmd == "STARTTLS":
            raise NutError("FEATURE-NOT-CONFIGURED")
        if cmd == "USERNAME":
            return self._set_once(client, "username", args)
        if cmd == "PASSWORD":
            return self._set_once(client, "password", args)
        if cmd == "LOGIN":
            return self._login(client, args)
        if cmd == "GET":
            return self._get(client, args)
        if cmd == "LIST":
            return self._list(client, args)
        if cmd in ("SET", "INSTCMD", "FSD", "PRIMARY", "MASTER"):
            raise NutError("ACCESS-DENIED")
        raise NutError("UNKNOWN-COMMAND")

    def _set_once(self, client: Session, what: str, args: list[str]) -> str:
        if len(args) != 1:
            raise NutError("INVALID-ARGUMENT")
        if getattr(client, what) is not None:
            raise NutError(f"ALREADY-SET-{what.upper()}")
        setattr(client, what, args[0])
        return "OK\n"

    def _login(self, client: Session, args: list[str]) -> str:
        if len(args) != 1:
            raise NutError("INVALID-ARGUMENT")
        if client.login_ups is not None:
            raise NutError("ALREADY-LOGGED-IN")
        if client.username is None:
            raise NutError("USERNAME-REQUIRED")
        if client.password is None:
            raise NutError("PASSWORD-REQUIRED")
        if not self._valid(client.username, client.password):
            raise NutError("ACCESS-DENIED")
        self._unit(args[0])
        client.login_ups = args[0]
        log.info("NUT face: %s logged in to %s from %s", client.username, args[0], client.peer)
        return "OK\n"

    def _valid(self, name: str, password: str) -> bool:
        ok = False
        for user in self.config.users:
            same_name = hmac.compare_digest(user.name.encode(), name.encode())
            same_pw = hmac.compare_digest(
                user.password.get_secret_value().encode(), password.encode()
            )
            ok = ok or (same_name and same_pw)
        return ok

    def _get(self, client: Session, args: list[str]) -> str:
        if not args:
            raise NutError("INVALID-ARGUMENT")
        sub = args[0].upper()
        if sub == "TRACKING":
            return "OFF\n"
        if GET_WORDS.get(sub) != len(args):
            raise NutError("INVALID-ARGUMENT")
        ups = args[1]
        if sub in ("VAR", "TYPE"):
            value = self.variables(ups).get(args[2])
            if value is None:
                raise NutError("VAR-NOT-SUPPORTED")
            if sub == "TYPE":
                kind = "NUMBER" if _is_number(value) else f"STRING:{max(len(value), 1)}"
                return f"TYPE {quote(ups)} {quote(args[2])} {kind}\n"
            if args[2] == "ups.status":
                self._note_fsd(client, value)
            return f"VAR {quote(ups)} {quote(args[2])} {quoted(value)}\n"
        self._unit(ups)
        if sub == "UPSDESC":
            return f"UPSDESC {quote(ups)} {quote('served by facility-agent')}\n"
        if sub == "NUMLOGINS":
            n = sum(1 for c in self._clients.values() if c.login_ups == ups)
            return f"NUMLOGINS {quote(ups)} {n}\n"
        if sub == "DESC":
            return f"DESC {quote(ups)} {quote(args[2])} {quote('Description unavailable')}\n"
        raise NutError("CMD-NOT-SUPPORTED")  # CMDDESC: the face offers no commands

    def _list(self, client: Session, args: list[str]) -> str:
        if not args:
            raise NutError("INVALID-ARGUMENT")
        sub = args[0].upper()
        if sub == "UPS" and len(args) == 1:
            lines = [f"UPS {quote(u)} {quote('served by facility-agent')}" for u in self.units()]
            return _block(["UPS"], lines)
        if sub == "VAR" and len(args) == 2:
            ups = quote(args[1])
            variables = self.variables(args[1]).items()
            self._note_fsd(client, dict(variables).get("ups.status", ""))
            lines = [f"VAR {ups} {quote(k)} {quoted(v)}" for k, v in variables]
            return _block(["VAR", ups], lines)
        if sub in ("RW", "CMD") and len(args) == 2:
            self._unit(args[1])
            return _block([sub, quote(args[1])], [])
        if sub == "CLIENT" and len(args) == 2:
            self._unit(args[1])
            ups = quote(args[1])
            lines = [
                f"CLIENT {ups} {quote(c.peer)}"
                for c in self._clients.values()
                if c.login_ups == args[1]
            ]
            return _block(["CLIENT", ups], lines)
        if sub in ("ENUM", "RANGE") and len(args) == 3:
            if args[2] not in self.variables(args[1]):
                raise NutError("VAR-NOT-SUPPORTED")
            raise NutError("INVALID-ARGUMENT")
        raise NutError("INVALID-ARGUMENT")

    def _note_fsd(self, client: Session, status: str) -> None:
        if client.login_ups is not None and "FSD" in status.split():
            self.fsd_seen.setdefault(f"{client.username}@{client.peer}", time.monotonic())


def _block(query: list[str], lines: list[str]) -> str:
    q = " ".join(query)
    return "".join(f"{x}\n" for x in [f"BEGIN LIST {q}", *lines, f"END LIST {q}"])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
