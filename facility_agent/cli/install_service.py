"""`facility-agent install-service`: the bundled systemd unit, a system user, the directories.

It does what an operator would do by hand (docs/operator-guide.md lists the same steps), and
prints the systemctl commands rather than running them, so the service starts only when the
site file is ready. `--prefix` writes under another root and `--dry-run` prints the unit and
every file, owner and mode it would write: both are how the tests run it.

The point is a unit that *starts*: the service user must be able to read its site file, write
its state directory and run the program in ExecStart. The last one fails quietly when the
program lives in a home directory (pyenv, a user's venv): the user cannot enter it, and the
unit's ProtectHome=yes hides it anyway. So that is checked here, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facility_agent.core.driver import AddCommand

UNIT_NAME = "facility-agent.service"
POLKIT_RULE = "50-facility-agent-poweroff.rules"
#: Hidden from the service by the unit's ProtectHome=yes.
HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
SYSTEM_VENV = "/opt/facility-agent"


def bundled_unit() -> str:
    return (files("facility_agent.data") / "systemd" / UNIT_NAME).read_text()


def bundled_polkit_rule(user: str) -> str:
    text = (files("facility_agent.data") / "systemd" / POLKIT_RULE).read_text()
    return text.replace('"facility-agent"', f'"{user}"')


def console_script() -> str:
    """The `facility-agent` next to this Python (a venv's bin/), else the one on PATH."""
    here = Path(sys.executable).parent / "facility-agent"
    if here.exists():
        return str(here)
    return shutil.which("facility-agent") or "/usr/local/bin/facility-agent"


def render_unit(
    exec_path: str, config: str, user: str, state_dir: str | None = None, group: str | None = None
) -> str:
    """The bundled unit with this box's program, site file and user filled in."""
    text = bundled_unit()
    text = re.sub(r"^ExecStart=.*$", f"ExecStart={exec_path} run -c {config}", text, flags=re.M)
    text = re.sub(r"^User=.*$", f"User={user}", text, flags=re.M)
    text = re.sub(r"^Group=.*$", f"Group={group or user}", text, flags=re.M)
    if state_dir:
        text = re.sub(r"^ReadWritePaths=.*$", f"ReadWritePaths={state_dir}", text, flags=re.M)
    return text


# -- can the service user run it? ---------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    """The service user as the kernel sees it; uid None = not created yet (judged as others)."""

    name: str
    uid: int | None
    gids: frozenset[int]

    @classmethod
    def lookup(cls, user: str, group: str) -> Who:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            return cls(user, None, frozenset())
        gids = {pw.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
        with contextlib.suppress(KeyError):
            gids.add(grp.getgrnam(group).gr_gid)
        return cls(user, pw.pw_uid, frozenset(gids))

    def may(self, st: os.stat_result, bit: str) -> bool:
        """`bit` is r, w or x; root's own bypass is not assumed (the user is not root)."""
        shift = {"r": 2, "w": 1, "x": 0}[bit]
        if self.uid is not None and st.st_uid == self.uid:
            return bool(st.st_mode & (0o100 << shift))
        if st.st_gid in self.gids:
            return bool(st.st_mode & (0o010 << shift))
        return bool(st.st_mode & (0o001 << shift))


def path_problem(path: Path, who: Who, need: str = "x") -> str | None:
    """Why `who` cannot reach `path` (every directory on the way, symlinks followed), or None."""
    seen: set[Path] = set()

    def walk(p: Path) -> str | None:
        p = Path(os.path.abspath(p))
        parts = [Path(*p.parts[: i + 1]) for i in range(len(p.parts))]
        for i, part in enumerate(parts):
            try:
                st = os.lstat(part)
            except OSError as exc:
                return f"{part}: {exc.strerror}"
            if stat.S_ISLNK(st.st_mode):
                if part in seen:
                    return f"{part}: a symlink loop"
                seen.add(part)
                target = Path(os.readlink(part))
                rest = p.parts[i + 1 :]
                return walk((part.parent / target).joinpath(*rest))
            last = i == len(parts) - 1
            bit = need if last else "x"
            if not who.may(st, bit):
                what = {"r": "read", "w": "write", "x": "enter" if not last else "run"}[bit]
                return (
                    f"{part} (mode {stat.S_IMODE(st.st_mode):04o}, owner "
                    f"{_name(st.st_uid, st.st_gid)}): {who.name} may not {what} it"
                )
        return None

    return walk(path)


def _name(uid: int, gid: int) -> str:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def interpreter_of(program: Path) -> list[Path]:
    """What running `program` also needs: its #! interpreter, and a venv's base Python."""
    try:
        with program.open("rb") as fh:
            first = fh.readline(512)
    except OSError:
        return []
    if not first.startswith(b"#!"):
        return []
    words = first[2:].decode(errors="replace").split()
    if not words:
        return []
    interp = Path(words[0])
    if interp.name == "env" and len(words) > 1:
        found = shutil.which(words[1])
        if found is None:
            return []
        interp = Path(found)
    out = [interp]
    cfg = interp.parent.parent / "pyvenv.cfg"
    try:
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                out.append(Path(value.strip()))
    except OSError:
        pass
    return out


def exec_problems(exec_path: str, who: Who) -> list[str]:
    """Every reason the unit's ExecStart would not start as `who` under the shipped sandbox."""
    problems: list[str] = []
    program = Path(exec_path)
    for need, path in [("x", program), *(("x", p) for p in interpreter_of(program))]:
        real = Path(os.path.realpath(path))
        hidden = next((h for h in HOME_DIRS if real.is_relative_to(h)), None)
        if hidden is not None:
            problems.append(
                f"{path} is under {hidden} (really {real}): the unit's ProtectHome=yes hides it"
            )
            continue
        why = path_problem(path, who, need)
        if why:
            problems.append(why)
    return problems


FIX_EXEC = f"""\
fix: install the agent into a system location and run install-service from there:
  /usr/bin/python3 -m venv {SYSTEM_VENV}
  {SYSTEM_VENV}/bin/pip install facility-agent      # or the path of a source checkout
  {SYSTEM_VENV}/bin/facility-agent install-service
(a system Python: a venv made from pyenv or a user's Python still loads that Python from the
home directory). Upgrade later with `{SYSTEM_VENV}/bin/pip install -U facility-agent &&
systemctl restart facility-agent`. Or name a reachable program with --exec-path."""


# -- the installation -------------------------------------------------------------------------


@dataclass
class Planned:
    """One thing install-service does: its line in the report and the work itself."""

    text: str
    work: Callable[[], None] | None = None


def install_service(args: argparse.Namespace) -> int:
    prefix = Path(args.prefix)
    real_root = prefix.resolve() == Path("/")
    exec_path = args.exec_path or console_script()
    user, group = args.user, args.group or args.user
    who = Who.lookup(user, group)
    problems = exec_problems(exec_path, who)
    if problems:
        print(f"install-service: {user} could not start {exec_path}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print(FIX_EXEC, file=sys.stderr)
        return 1

    config = args.config
    if not Path(config).is_absolute():
        print(
            f"install-service: -c {config}: give the absolute path the unit will use",
            file=sys.stderr,
        )
        return 1
    etc_dir = prefix / Path(config).parent.relative_to("/")
    conf_path = prefix / config.lstrip("/")
    secrets_dir = etc_dir / "secrets"
    state_path = prefix / "var/lib/facility-agent"
    unit_path = prefix / "etc/systemd/system" / UNIT_NAME
    unit = render_unit(exec_path, config, user, group=group)
    steps: list[Planned] = []
    user_cmd = [
        "useradd", "--system", "--user-group", "--home-dir", "/var/lib/facility-agent",
        "--shell", "/usr/sbin/nologin", "--groups", "dialout", user,
    ]  # fmt: skip
    if who.uid is None:
        if real_root and os.geteuid() == 0:
            steps.append(Planned(" ".join(user_cmd), lambda: _useradd(user_cmd)))
        else:
            steps.append(Planned(f"(as root, first: {' '.join(user_cmd)})"))

    def owner(path: Path, uid_user: str, mode: int) -> Callable[[], None]:
        return lambda: _own(path, uid_user, group, mode)

    steps.append(
        Planned(f"write {unit_path} (root:root 0644)", lambda: _write(unit_path, unit, 0o644))
    )
    steps.append(
        Planned(f"create {etc_dir} (root:{group} 0750)", lambda: _mkdir(etc_dir, "root", group))
    )
    if conf_path.exists():
        text = f"keep {conf_path} (exists); set it to root:{group} 0640"
        steps.append(Planned(text, owner(conf_path, "root", 0o640)))
    else:
        example = (files("facility_agent.data") / "site.example.yaml").read_text()

        def write_conf() -> None:
            _write(conf_path, example, 0o640)
            _own(conf_path, "root", group, 0o640)

        text = f"write {conf_path} (root:{group} 0640; from site.example.yaml: edit it)"
        steps.append(Planned(text, write_conf))
    text = f"create {secrets_dir} (root:{group} 0750; ${{file:secrets/NAME}} files, mode 0640)"
    steps.append(Planned(text, lambda: _mkdir(secrets_dir, "root", group)))
    text = f"create {state_path} ({user}:{group} 0750; the plan journal and the outbox)"
    steps.append(Planned(text, lambda: _mkdir(state_path, user, group)))
    if args.allow_poweroff:
        rule_path = prefix / "etc/polkit-1/rules.d" / POLKIT_RULE
        rule = bundled_polkit_rule(user)
        text = f"write {rule_path} (root:root 0644; lets {user} power the host off)"
        steps.append(Planned(text, lambda: _write(rule_path, rule, 0o644)))

    if args.dry_run:
        print(f"--- {unit_path} (would be written) ---")
        print(unit.rstrip())
        print("---")
    for step in steps:
        print(("would " if args.dry_run else "") + step.text)
        if not args.dry_run and step.work is not None:
            try:
                step.work()
            except (OSError, subprocess.CalledProcessError) as exc:
                print(f"install-service: {step.text}: {exc}", file=sys.stderr)
                return 2
    print(
        "\nthen, once the site file is right:\n"
        f"  facility-agent check -c {config}\n"
        "  systemctl daemon-reload\n"
        "  systemctl enable --now facility-agent\n"
        "  systemctl status facility-agent; journalctl -u facility-agent -f\n"
        "  systemctl reload facility-agent     # after editing the site file (SIGHUP)\n"
        f"  facility-agent status -c {config}"
    )
    return 0


def _useradd(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def _ids(user: str, group: str) -> tuple[int, int] | None:
    """(uid, gid) to chown to, or None when they do not exist here (a prefix for another box)."""
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _own(path: Path, user: str, group: str, mode: int) -> None:
    path.chmod(mode)
    ids = _ids(user, group)
    if ids is not None and os.geteuid() == 0:
        os.chown(path, *ids)


def _mkdir(path: Path, user: str, group: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _own(path, user, group, 0o750)


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def add_parser(command: AddCommand) -> None:
    from facility_agent.cli.main import DEFAULT_CONFIG

    what = "install the systemd unit, the system user and directories; prints the next steps"
    p = command("install-service", what, install_service)
    p.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help="the site file the unit runs with"
    )
    p.add_argument("--user", default="facility-agent", help="system user to run as")
    p.add_argument("--group", help="its group [the same name as --user]")
    p.add_argument("--exec-path", help="the facility-agent program [the one running this]")
    p.add_argument("--prefix", default="/", help="write under this root instead of /")
    p.add_argument(
        "--allow-poweroff",
        action="store_true",
        help=f"also install the polkit rule ({POLKIT_RULE}) that lets the service user power "
        "the host off at the end of a shutdown plan (`systemctl poweroff`)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the unit and every file, owner and mode; write nothing",
    )
