"""The root handler's redaction filter: every secret of the site, in every spelling, masked in
every record of every logger, tracebacks included, in each log format."""

from __future__ import annotations

import io
import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from facility_agent.config import secrets
from facility_agent.config.site import parse_site
from facility_agent.runtime.logfmt import formatter
from facility_agent.runtime.redact import MASK, RedactFilter, Redactor, forms, install


def spellings(value: str) -> set[str]:
    return {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),
        urllib.parse.quote_plus(value),
        urllib.parse.quote(value, safe="").lower(),
        json.dumps(value)[1:-1],
    }


def test_every_url_spelling_is_masked(registry: secrets._Registry) -> None:
    value = "p@ss/w0rd+x \u00e9"
    registry.add([value])
    redact = Redactor(registry)
    mixed = "p@ss%2Fw0rd+x%20%C3%A9"  # what apprise and urllib3 log: only some escaped
    for spelled in {*spellings(value), mixed, urllib.parse.quote(value, safe="@+")}:
        assert redact(f"<{spelled}>") == f"<{MASK}>", spelled


def test_a_value_written_url_encoded_is_masked_decoded_too(registry: secrets._Registry) -> None:
    registry.add(["wh%40ok%2Ftok%2B10%20z"])  # a webhook token as written inside a URL path
    redact = Redactor(registry)
    assert redact("POST /hook/wh@ok%2Ftok+10%20z HTTP/1.1") == "POST /hook/*** HTTP/1.1"
    assert redact("token wh@ok/tok+10 z") == "token ***"
    assert '\\"' in "".join(forms('a"b\\c'))


@pytest.fixture
def registry() -> secrets._Registry:
    return secrets._Registry()


def make_logger(fmt: str, registry: secrets._Registry) -> tuple[logging.Logger, io.StringIO]:
    """A logger tree of its own whose one handler carries the filter, as the root's does."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RedactFilter(Redactor(registry)))
    top = logging.getLogger(f"redact-test-{fmt}")
    top.handlers[:] = [handler]
    top.setLevel(logging.DEBUG)
    top.propagate = False
    return top, stream


@pytest.mark.parametrize("fmt", ["text", "journal", "json"])
def test_filter_masks_messages_args_and_tracebacks(fmt: str, registry: secrets._Registry) -> None:
    secret = "p@ss/w0rd+x"
    registry.add([secret, "tok%en-Z9"])
    top, stream = make_logger(fmt, registry)
    lib = top.getChild("paho")  # a library's logger propagating to the handler
    lib.debug("Sending CONNECT (u1, p1) password=%s", secret)
    lib.debug("GET /x?pass=%s&token=%s", urllib.parse.quote(secret, safe=""), "tok%25en-Z9")
    lib.debug("json body %s", json.dumps({"password": secret}))
    lib.info("bad format %s %s", secret)  # a library's broken call must not print raw args
    try:
        raise ValueError(f"login refused for {urllib.parse.quote_plus(secret)}")
    except ValueError:
        lib.exception("failed with %r", secret)
    lib.warning("context", stack_info=True, extra={"device": secret})
    out = stream.getvalue()
    for s in (secret, "tok%en-Z9"):
        for spelled in spellings(s):
            assert spelled not in out, (spelled, out)
    assert out.count(MASK) >= 7
    assert "ValueError: login refused for ***" in out.replace("\\n", "\n")
    assert "Traceback" in out


def test_short_values_and_public_names_are_not_masked(registry: secrets._Registry) -> None:
    registry.add(["abc", "public", "pdu-a"], public=["pdu-a"])
    redact = Redactor(registry)
    assert redact("abc published public pdu-a") == "abc published *** pdu-a"


def test_new_secrets_apply_at_once(registry: secrets._Registry) -> None:
    redact = Redactor(registry)
    assert redact("hello s3cret-value") == "hello s3cret-value"
    registry.add(["s3cret-value"])
    assert redact("hello s3cret-value") == "hello ***"


def test_url_secret_masks_its_password_and_token_parts(registry: secrets._Registry) -> None:
    registry.add(["mailtos://bob:p%40ss%2Fw0rd@127.0.0.1:25?to=x@y&token=abc-def-ghi"])
    redact = Redactor(registry)
    assert redact("login p@ss/w0rd and abc-def-ghi") == "login *** and ***"


@pytest.fixture
def site_file(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "ipmi.pw").write_text("fi!le/secret+7\n")
    path = tmp_path / "site.yaml"
    path.write_text(
        "site: s1\n"
        "mqtt: {host: 127.0.0.1, username: agent, password: '${MQTT_PW_T}'}\n"
        "influxdb: {url: 'http://127.0.0.1:1', org: o, bucket: b, token: liter@l-token/1}\n"
        "devices:\n"
        "  - {id: srv-1, driver: ipmi, host: 127.0.0.1, username: admin,"
        " password: '${file:ipmi.pw}'}\n"
        "  - {id: pdu-a, driver: snmp, host: 127.0.0.1, community: pdu-a, profile: apc-rpdu2}\n"
    )
    yield path


def test_loading_a_site_registers_its_secrets(site_file: Path) -> None:
    from facility_agent.config.site import load_site

    load_site(site_file, env={"MQTT_PW_T": "env/secret+5"})
    redact = Redactor()
    line = "env/secret+5 liter%40l-token%2F1 fi%21le%2Fsecret%2B7 pdu-a public s1"
    assert redact(line) == "*** *** *** pdu-a public s1"


def test_installed_filter_covers_threads_and_warnings(registry: secrets._Registry) -> None:
    secrets.remember("thr3ad-secret/9")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("text"))
    root = logging.getLogger()
    import sys

    old = (root.handlers[:], root.level, threading.excepthook, sys.excepthook)
    root.handlers[:] = [handler]
    try:
        install([handler])

        def boom() -> None:
            raise RuntimeError("thr3ad-secret/9 leaked")

        t = threading.Thread(target=boom, name="worker")
        t.start()
        t.join()
        import warnings

        warnings.warn("thr3ad-secret%2F9 in a warning", UserWarning, stacklevel=1)
    finally:
        root.handlers[:], root.level, threading.excepthook, sys.excepthook = old
        logging.captureWarnings(False)
    out = stream.getvalue()
    assert "thread worker died" in out and "RuntimeError: *** leaked" in out
    assert "*** in a warning" in out
    assert "thr3ad-secret" not in out


def test_parse_site_literal_secretstr_default_is_not_a_secret() -> None:
    site = parse_site(
        "site: s2\ndevices:\n  - {id: p1, driver: snmp, host: h, profile: apc-rpdu2}\n",
        "site.yaml",
        env={},
    )
    assert "public" not in secrets.model_secrets(site)
