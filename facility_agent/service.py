"""`facility-agent install-service`: the bundled systemd unit, a system user, the directories.

It does what an operator would do by hand (docs/operator-guide.md lists the same steps), and
prints the systemctl commands rather than running them, so the service starts only when the
site file is ready. `--prefix` writes under another root and `--dry-run` only says what it
would do: both are how the tests run it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

UNIT_NAME = "facility-agent.service"


def bundled_unit() -> str:
    return (files("facility_agent.data") / "systemd" / UNIT_NAME).read_text()


def console_script() -> str:
    """The `facility-agent` next to this Python (a venv's bin/), else the one on PATH."""
    here = Path(sys.executable).parent / "facility-agent"
    if here.exists():
        return str(here)
    return shutil.which("facility-agent") or "/usr/local/bin/facility-agent"


def render_unit(exec_path: str, config: str, user: str, state_dir: str | None = None) -> str:
    """The bundled unit with this box's program, site file and user filled in."""
    text = bundled_unit()
    text = re.sub(r"^ExecStart=.*$", f"ExecStart={exec_path} run -c {config}", text, flags=re.M)
    text = re.sub(r"^User=.*$", f"User={user}", text, flags=re.M)
    text = re.sub(r"^Group=.*$", f"Group={user}", text, flags=re.M)
    if state_dir:
        text = re.sub(r"^ReadWritePaths=.*$", f"ReadWritePaths={state_dir}", text, flags=re.M)
    return text


def install_service(args: argparse.Namespace) -> int:
    prefix = Path(args.prefix)
    real_root = prefix.resolve() == Path("/")
    exec_path = args.exec_path or console_script()
    unit = render_unit(exec_path, args.config, args.user)
    unit_path = prefix / "etc/systemd/system" / UNIT_NAME
    conf_path = prefix / args.config.lstrip("/")
    state_path = prefix / "var/lib/facility-agent"
    actions: list[str] = []

    def do(what: str, fn: object = None) -> None:
        actions.append(what)
        if not args.dry_run and callable(fn):
            fn()

    do(f"write {unit_path}", lambda: _write(unit_path, unit, 0o644))
    if not conf_path.exists():
        example = (files("facility_agent.data") / "site.example.yaml").read_text()
        do(
            f"write {conf_path} (from site.example.yaml: edit it)",
            lambda: _write(conf_path, example, 0o640),
        )
    else:
        actions.append(f"keep {conf_path} (exists)")
    do(f"create {state_path}", lambda: state_path.mkdir(parents=True, exist_ok=True))
    user_cmd = [
        "useradd", "--system", "--user-group", "--home-dir", "/var/lib/facility-agent",
        "--shell", "/usr/sbin/nologin", "--groups", "dialout", args.user,
    ]  # fmt: skip
    if real_root and not _user_exists(args.user):
        if os.geteuid() == 0:
            do(" ".join(user_cmd), lambda: subprocess.run(user_cmd, check=True))
        else:
            actions.append("run as root: " + " ".join(user_cmd))
    for line in actions:
        print(("would " if args.dry_run else "") + line)
    print(
        "\nthen, once the site file is right:\n"
        f"  facility-agent check -c {args.config}\n"
        "  systemctl daemon-reload\n"
        "  systemctl enable --now facility-agent\n"
        "  systemctl status facility-agent; journalctl -u facility-agent -f\n"
        "  systemctl reload facility-agent     # after editing the site file (SIGHUP)\n"
        "  facility-agent status -c " + args.config
    )
    return 0


def _user_exists(user: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "install-service",
        help="install the systemd unit, the system user and directories; prints the next steps",
    )
    p.add_argument("--config", default="/etc/facility-agent/site.yaml", help="the site file")
    p.add_argument("--user", default="facility-agent", help="system user to run as")
    p.add_argument("--exec-path", help="the facility-agent program [the one running this]")
    p.add_argument("--prefix", default="/", help="write under this root instead of /")
    p.add_argument("--dry-run", action="store_true", help="only print what would be done")
    p.set_defaults(func=install_service)
