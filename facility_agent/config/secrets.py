"""`${ENV_VAR}` and `${file:/path}` references in the site file.

Substitution happens on the raw YAML values before validation, so a secret can sit anywhere a
string can. The values themselves are never put into an error message: only the name of what
was missing.

Every value resolved here, and every `SecretStr` of a loaded site (`remember_model`), is kept in
a process-wide registry: the log redaction filter (redact.py) masks them all. A value also used
as a public name in the site (a device id, say) is kept apart, since masking it would hide the
name without keeping anything secret.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

_REF = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretRefError(ValueError):
    pass


class _Registry:
    """Secret values and public names seen by this process; `generation` counts changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: set[str] = set()
        self.public: set[str] = set()
        self.generation = 0

    def add(self, values: Iterable[str], public: Iterable[str] = ()) -> None:
        with self.lock:
            before = (len(self.values), len(self.public))
            self.values.update(v for v in values if v)
            self.public.update(p for p in public if p)
            if (len(self.values), len(self.public)) != before:
                self.generation += 1

    def snapshot(self) -> tuple[int, frozenset[str], frozenset[str]]:
        with self.lock:
            return self.generation, frozenset(self.values), frozenset(self.public)


REGISTRY = _Registry()


def remember(*values: str) -> None:
    """Count these values as secrets from now on (the log filter masks them)."""
    REGISTRY.add(values)


def model_secrets(model: BaseModel) -> list[str]:
    """Every `SecretStr` set in a model tree, except a field's own default (`public`)."""
    out: list[str] = []

    def walk(value: Any, default: Any = None) -> None:
        if isinstance(value, SecretStr):
            if not (isinstance(default, SecretStr) and default == value):
                out.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name, info in type(value).model_fields.items():
                walk(getattr(value, name, None), info.default)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(model)
    return out


def remember_model(model: BaseModel, public: Iterable[str] = ()) -> None:
    """Register a loaded site's secrets, and the names (`public`) that are not secrets."""
    REGISTRY.add(model_secrets(model), public)


def _resolve_one(ref: str, env: Mapping[str, str], base: Path | None) -> str:
    value = _lookup(ref, env, base)
    REGISTRY.add((value,))
    return value


def _lookup(ref: str, env: Mapping[str, str], base: Path | None) -> str:
    if ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise SecretRefError(f"cannot read secret file {str(path)!r}: {exc.strerror}") from None
    if not _ENV_NAME.match(ref):
        raise SecretRefError(
            f"'${{{ref}}}' is not a valid reference: use ${{ENV_VAR}} or ${{file:PATH}}"
        )
    if ref not in env:
        raise SecretRefError(f"environment variable {ref} is not set")
    return env[ref]


def substitute(
    value: Any,
    env: Mapping[str, str] | None = None,
    base: Path | None = None,
) -> str | Any:
    """Replace every reference in one string; `$${` stays a literal `${`."""
    if not isinstance(value, str) or "${" not in value:
        return value
    env = os.environ if env is None else env
    parts = value.split("$${")
    out = [_REF.sub(lambda m: _resolve_one(m.group(1), env, base), p) for p in parts]
    return "${".join(out)
