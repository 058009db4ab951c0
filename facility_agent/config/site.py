"""The site file: YAML in, a validated and typed `SiteConfig` out, or every problem at once.

Problems carry the key path (`devices[2].port`) and the line in the file, because the person
reading them is standing in a server room with an editor, not a debugger.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from facility_agent.config import loader as site_yaml
from facility_agent.config.outputs import (
    HomeAssistantConfig,
    InfluxConfig,
    NotifyRoute,
    OutboxConfig,
    PrometheusConfig,
)
from facility_agent.config.policy import PolicyConfig
from facility_agent.config.secrets import SecretRefError, remember_model, substitute
from facility_agent.core.driver import DeviceConfig, Driver
from facility_agent.core.registry import driver_classes
from facility_agent.core.units import Duration, Identifier

Loc = tuple[str | int, ...]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    """TLS towards the broker. `tls: true` uses the system CAs."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Skip hostname and certificate checks; for a lab only.
    insecure: bool = False


class MqttConfig(_Section):
    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = Field(default="facility", pattern=r"^[^#+/\s][^#+\s]*[^#+/\s]$|^[^#+/\s]$")
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive: Duration = 30.0
    #: State is republished at least this often even when nothing changed.
    heartbeat: Duration = 60.0
    #: Messages kept in memory while the broker is away; the oldest go first past this.
    queue_limit: int = Field(default=10000, ge=10)
    reconnect_min: Duration = 0.5
    reconnect_max: Duration = 30.0
    #: Home Assistant MQTT discovery (off by default).
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value


class SiteConfig(PolicyConfig):
    site: Identifier
    #: Where the agent keeps what must survive a restart (plan journal, outbox). Default:
    #: $STATE_DIRECTORY (systemd), else /var/lib/facility-agent when writable, else
    #: ~/.local/state/facility-agent.
    state_dir: Path | None = None
    mqtt: MqttConfig | None = None
    devices: list[DeviceConfig] = Field(default_factory=list)
    influxdb: InfluxConfig | None = None
    prometheus: PrometheusConfig | None = None
    notify: list[NotifyRoute] | None = None
    #: The durable outbox under MQTT, InfluxDB and chat (output_config.py).
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    #: Top-level sections that drivers own (`Driver.site_sections`: the SNMP driver's `traps:`,
    #: the NUT driver's `nut_server:`), each validated by its driver's model.
    sections: dict[str, Any] = Field(default_factory=dict)
    # The policy keys (topology, groups, hooks, shutdown, recovery) come from PolicyConfig.

    @property
    def policy(self) -> PolicyConfig:
        """Just the policy part, as the engine reads it."""
        return PolicyConfig(**{name: getattr(self, name) for name in PolicyConfig.model_fields})

    def state_path(self) -> Path:
        """The state directory, created if needed."""
        if self.state_dir is not None:
            path = self.state_dir
        elif os.environ.get("STATE_DIRECTORY"):
            path = Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        elif os.access("/var/lib", os.W_OK):
            path = Path("/var/lib/facility-agent")
        else:
            path = Path.home() / ".local" / "state" / "facility-agent"
        path = path / self.site if self.state_dir is None else path
        path.mkdir(parents=True, exist_ok=True)
        return path

    def device(self, device_id: str) -> DeviceConfig:
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path or '<file>'}{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in a site file, not just the first one."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Lines:
    """Line numbers of every key path in a YAML document (1-based)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.lines: dict[Loc, int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
                self.lines[(*loc, name)] = key.start_mark.line + 1
                self._walk(value, (*loc, name))
                self.lines[(*loc, name)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*loc, i))

    def line(self, loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _substitute_all(
    data: Any,
    loc: Loc,
    env: Mapping[str, str] | None,
    base: Path | None,
    errors: list[tuple[Loc, str]],
) -> Any:
    if isinstance(data, dict):
        return {k: _substitute_all(v, (*loc, k), env, base, errors) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute_all(v, (*loc, i), env, base, errors) for i, v in enumerate(data)]
    try:
        return substitute(data, env, base)
    except SecretRefError as exc:
        msg = str(exc)
        if msg.startswith("environment variable "):
            name = msg.split()[2]
            msg += f" (export it, or for the service put {name}=... in /etc/facility-agent/env)"
        errors.append((loc, msg))
        return None


def _field_names(model: Any, seen: set[Any] | None = None) -> set[str]:
    """Every key a site file can hold anywhere under this model: the vocabulary of the
    "did you mean" hints."""
    seen = set() if seen is None else seen
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, info in getattr(model, "model_fields", {}).items():
        names.add(info.alias or name)
        stack = [info.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                names |= _field_names(ann, seen)
            stack.extend(get_args(ann))
    return names


def _did_you_mean(key: object, model: Any) -> str:
    if not isinstance(key, str):
        return ""
    words = sorted(_field_names(model))
    close = difflib.get_close_matches(key, words, n=1, cutoff=0.75)
    return f": did you mean `{close[0]}`?" if close else ""


def _pydantic_problems(
    exc: ValidationError, prefix: Loc, model: Any = None
) -> list[tuple[Loc, str]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc: Loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "extra_forbidden":
            msg = "unknown key" + (_did_you_mean(loc[-1], model) if loc and model else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "string_pattern_mismatch" and "a-z0-9_-" in str(err.get("ctx")):
            msg = "may only hold lowercase letters, digits, '-' and '_'"
        out.append(((*prefix, *loc), msg))
    return out


def parse_site(
    text: str,
    source: str = "<site>",
    *,
    env: Mapping[str, str] | None = None,
    base: Path | None = None,
    drivers: Callable[[], Mapping[str, type[Driver]]] = driver_classes,
) -> SiteConfig:
    """Validate a whole site file; raises ConfigError listing every problem."""
    try:
        root, data = site_yaml.load(text)
    except site_yaml.SiteYamlError as exc:
        problems = [ConfigProblem(format_loc(loc), msg, line) for loc, msg, line in exc.problems]
        raise ConfigError(source, problems) from None
    lines = _Lines(root)
    errors: list[tuple[Loc, str]] = []
    if not isinstance(data, dict):
        raise ConfigError(
            source, [ConfigProblem("", "the site file must be a mapping (site:, devices: ...)", 1)]
        )

    data = _substitute_all(data, (), env, base, errors)
    raw_devices = data.pop("devices", None)
    devices: list[DeviceConfig] = []
    if raw_devices is None:
        raw_devices = []
    if not isinstance(raw_devices, list):
        errors.append((("devices",), "must be a list of devices"))
        raw_devices = []
    known = drivers()
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_devices):
        loc: Loc = ("devices", i)
        if not isinstance(raw, dict):
            errors.append((loc, "each device must be a mapping with id: and driver:"))
            continue
        raw_id = raw.get("id")
        if isinstance(raw_id, str) and raw_id in seen:
            msg = f"duplicate device id {raw_id!r} (also devices[{seen[raw_id]}])"
            errors.append(((*loc, "id"), msg))
            continue
        if isinstance(raw_id, str):
            seen[raw_id] = i
        name = raw.get("driver")
        if name is None:
            errors.append(((*loc, "driver"), "required key is missing"))
            continue
        if name not in known:
            names = ", ".join(sorted(known)) or "none installed"
            errors.append(((*loc, "driver"), f"unknown driver {name!r} (installed: {names})"))
            continue
        model = known[name].config_model
        try:
            devices.append(model.model_validate(raw))
        except ValidationError as exc:
            errors.extend(_pydantic_problems(exc, loc, model))

    sections: dict[str, BaseModel] = {}
    for cls in known.values():
        for key, section_model in cls.site_sections.items():
            raw_section = data.pop(key, None)
            if raw_section is None:
                continue
            try:
                sections[key] = section_model.model_validate(raw_section)
            except ValidationError as exc:
                errors.extend(_pydantic_problems(exc, (key,), section_model))
    if "sections" in data:  # a field of SiteConfig, filled from the drivers' sections above
        data.pop("sections")
        owned = ", ".join(sorted(f"{k}:" for c in known.values() for k in c.site_sections))
        errors.append((("sections",), f"unknown key (drivers' own sections: {owned or 'none'})"))

    site: SiteConfig | None = None
    try:
        site = SiteConfig.model_validate({**data, "devices": []})
    except ValidationError as exc:
        errors.extend(_pydantic_problems(exc, (), SiteConfig))
    if site is not None:
        errors.extend(_policy_problems(site, seen))
    # A reference that could not be resolved left None behind: its "should be a string" is noise.
    unresolved = {loc for loc, msg in errors if _is_ref_problem(msg)}
    errors = [(loc, msg) for loc, msg in errors if loc not in unresolved or _is_ref_problem(msg)]
    if errors or site is None:
        errors.sort(key=lambda e: lines.line(e[0]) or 0)
        problems = [ConfigProblem(format_loc(loc), msg, lines.line(loc)) for loc, msg in errors]
        raise ConfigError(source, problems)
    site = site.model_copy(update={"devices": devices, "sections": sections})
    # The log redaction filter (redact.py) masks these from now on; names are not secrets.
    remember_model(site, [site.site, *seen, *(g.id for g in site.groups)])
    return site


def _is_ref_problem(msg: str) -> bool:
    return msg.startswith(_REF_PROBLEM_PREFIXES)


_REF_PROBLEM_PREFIXES = ("environment variable ", "cannot read secret file ", "'${")


def _policy_problems(site: SiteConfig, named: dict[str, int]) -> list[tuple[Loc, str]]:
    """Cross-references the models cannot see: groups, plans and hooks naming real things."""
    out: list[tuple[Loc, str]] = []
    devices = set(named)
    defined = ", ".join(sorted(named)) or "none"
    group_ids = [g.id for g in site.groups]
    for gi, group in enumerate(site.groups):
        if group.id in devices or f"group-{group.id}" in devices:
            out.append((("groups", gi, "id"), f"{group.id!r} is also a device id"))
        if group_ids.count(group.id) > 1 and group_ids.index(group.id) != gi:
            out.append((("groups", gi, "id"), f"duplicate group id {group.id!r}"))
        for mi, member in enumerate(group.members):
            if member.device not in devices:
                out.append(
                    (
                        ("groups", gi, "members", mi),
                        f"no device {member.device!r} (defined devices: {defined})",
                    )
                )
    if site.shutdown is not None:
        if site.shutdown.group not in group_ids:
            out.append((("shutdown", "group"), f"no group {site.shutdown.group!r}"))
        else:
            kind = site.groups[group_ids.index(site.shutdown.group)].kind
            if kind != "power":
                out.append(
                    (("shutdown", "group"), f"group {site.shutdown.group!r} is not a power group")
                )
        gen = site.shutdown.triggers.generator_not_running
        if gen is not None and gen.device not in devices:
            out.append(
                (
                    ("shutdown", "triggers", "generator_not_running", "device"),
                    f"no device {gen.device!r} (defined devices: {defined})",
                )
            )
    for section in ("shutdown", "recovery"):
        plan = getattr(site, section)
        for si, stage in enumerate(plan.stages if plan else []):
            for ti, step in enumerate(stage.steps):
                if step.device is not None and step.device not in devices:
                    out.append(
                        (
                            (section, "stages", si, "steps", ti, "device"),
                            f"no device {step.device!r} (defined devices: {defined})",
                        )
                    )
    if site.recovery is not None and site.shutdown is None:
        out.append(
            (("recovery",), "recovery needs a shutdown section (it brings back what that stopped)")
        )
    return out


def load_site(path: str | Path, *, env: Mapping[str, str] | None = None) -> SiteConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            str(path), [ConfigProblem("", f"cannot read the file: {exc.strerror}")]
        ) from None
    return parse_site(text, str(path), env=env, base=path.parent)
