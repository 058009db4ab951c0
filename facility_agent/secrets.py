"""`${ENV_VAR}` and `${file:/path}` references in the site file.

Substitution happens on the raw YAML values before validation, so a secret can sit anywhere a
string can. The values themselves are never put into an error message: only the name of what
was missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_REF = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretRefError(ValueError):
    pass


def _resolve_one(ref: str, env: Mapping[str, str], base: Path | None) -> str:
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
