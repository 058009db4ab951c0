"""NUT protocol text rules: splitting, quoting, ERR mapping, numbers (no I/O)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from facility_agent.core.driver import AuthError, DeviceError, NotFoundError, ProtocolError
from facility_agent.drivers.nut import protocol as p
from facility_agent.drivers.nut.driver import NutDeviceConfig, NutDriver, convert_metric

WHERE = "10.0.0.9:3493"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('VAR ups1 ups.status "OL CHRG"', ["VAR", "ups1", "ups.status", "OL CHRG"]),
        ('VAR ups1 ups.id ""', ["VAR", "ups1", "ups.id", ""]),
        (r'VAR u d "say \"hi\" \\ ok"', ["VAR", "u", "d", 'say "hi" \\ ok']),
        ("BEGIN LIST VAR ups1", ["BEGIN", "LIST", "VAR", "ups1"]),
        ("  OK   TRACKING  abc ", ["OK", "TRACKING", "abc"]),
        (r"a\ b c", ["a b", "c"]),
        ('pre"fix and"post x', ["prefix andpost", "x"]),
        ("", []),
    ],
)
def test_split_line(line: str, words: list[str]) -> None:
    assert p.split_line(line) == words


@pytest.mark.parametrize("line", ['VAR u x "open', "VAR u x trailing\\"])
def test_split_line_rejects_broken_quoting(line: str) -> None:
    with pytest.raises(ProtocolError):
        p.split_line(line)


@pytest.mark.parametrize(
    ("word", "sent"),
    [
        ("ups1", "ups1"),
        ("battery.charge", "battery.charge"),
        ("two words", '"two words"'),
        ("", '""'),
        ('a"b', r'"a\"b"'),
        ("a\\b", r'"a\\b"'),
    ],
)
def test_quote(word: str, sent: str) -> None:
    assert p.quote(word) == sent
    assert p.split_line(sent) == [word]


@pytest.mark.parametrize("bad", ["x\nLOGOUT", "x\rFSD ups", "x\0"])
def test_quote_refuses_line_breaks_and_nul(bad: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        p.quote(bad)


def test_format_command_round_trips() -> None:
    line = p.format_command("SET", "VAR", "ups1", "ups.id", 'rack "3" \\ left')
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.split_line(line.decode().rstrip("\n")) == [
        "SET",
        "VAR",
        "ups1",
        "ups.id",
        'rack "3" \\ left',
    ]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("ACCESS-DENIED", AuthError),
        ("INVALID-PASSWORD", AuthError),
        ("USERNAME-REQUIRED", AuthError),
        ("PASSWORD-REQUIRED", AuthError),
        ("UNKNOWN-UPS", NotFoundError),
        ("CMD-NOT-SUPPORTED", p.NutServerError),
        ("VAR-NOT-SUPPORTED", p.NutServerError),
        ("SOMETHING-NEW", p.NutServerError),
    ],
)
def test_err_codes_map_to_error_kinds(code: str, kind: type[DeviceError]) -> None:
    err = p.error_from_words(["ERR", code], WHERE)
    assert type(err) is kind
    assert WHERE in err.reason and code in err.reason
    assert isinstance(err, DeviceError)


def test_unmapped_codes_are_protocol_errors_with_their_code() -> None:
    err = p.error_from_words(["ERR", "INVALID-VALUE", "too", "big"], WHERE)
    assert isinstance(err, ProtocolError) and isinstance(err, p.NutServerError)
    assert err.code == "INVALID-VALUE"
    assert "too big" in err.reason


@pytest.mark.parametrize(
    ("code", "words"),
    [("DATA-STALE", "stale"), ("DRIVER-NOT-CONNECTED", "not connected to the UPS driver")],
)
def test_driver_trouble_is_a_plain_device_error(code: str, words: str) -> None:
    err = p.error_from_words(["ERR", code], WHERE)
    assert type(err) is DeviceError
    assert words in err.reason and WHERE in err.reason and code in err.reason


def test_check_ok_and_unexpected() -> None:
    assert p.check_ok(["OK"], WHERE) == ""
    assert p.check_ok(["OK", "TRACKING", "1234"], WHERE) == "TRACKING 1234"
    with pytest.raises(AuthError):
        p.check_ok(["ERR", "ACCESS-DENIED"], WHERE)
    with pytest.raises(ProtocolError, match="unexpected reply: 'HELLO there'"):
        p.check_ok(["HELLO", "there"], WHERE)


def test_parse_var_and_list_markers() -> None:
    assert p.parse_var(["VAR", "u", "battery.charge", "80"], "u", WHERE) == ("battery.charge", "80")
    with pytest.raises(ProtocolError):
        p.parse_var(["VAR", "other", "battery.charge", "80"], "u", WHERE)
    with pytest.raises(NotFoundError):
        p.parse_var(["ERR", "UNKNOWN-UPS"], "u", WHERE)
    assert p.list_header(["BEGIN", "LIST", "VAR", "u"], ("VAR", "u"))
    assert not p.list_header(["BEGIN", "LIST", "VAR", "v"], ("VAR", "u"))
    assert p.list_footer(["END", "LIST", "UPS"], ("UPS",))
    assert not p.list_footer(["END", "LIST"], ("UPS",))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100", 100),
        ("-5", -5),
        ("27.1", 27.1),
        ("50.0", 50.0),
        (".5", 0.5),
        ("0", 0),
        ("0.25", 0.25),
        ("0012", "0012"),
        ("01.5", "01.5"),
        ("1e3", "1e3"),
        ("nan", "nan"),
        ("2.8.0", "2.8.0"),
        ("OL", "OL"),
        ("", ""),
    ],
)
def test_convert_value(text: str, value: object) -> None:
    got = p.convert_value(text)
    assert got == value and type(got) is type(value)


def test_identifiers_stay_text_even_when_numeric() -> None:
    assert convert_metric("ups.serial", "123456") == "123456"
    assert convert_metric("ups.firmware", "1.0") == "1.0"
    assert convert_metric("battery.charge", "100") == 100


def _cfg(**extra: object) -> NutDeviceConfig:
    keys = {"id": "ups-a", "driver": "nut", "host": "127.0.0.1", "ups": "ups-a", **extra}
    return NutDeviceConfig.model_validate(keys)


def test_config_defaults() -> None:
    cfg = _cfg()
    assert (cfg.port, cfg.interval, cfg.login, cfg.allow_writes) == (3493, 1.0, False, False)
    assert cfg.username is None and cfg.password is None
    assert _cfg(interval="500ms").interval == 0.5


def test_config_refuses_line_breaks_and_hides_the_password() -> None:
    for key in ("ups", "host", "username", "password"):
        with pytest.raises(ValidationError):
            _cfg(**{key: "x\nFSD ups-a"})
    cfg = _cfg(username="mon", password="hunter2")
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())


async def test_pool_shares_by_server_and_credentials() -> None:
    a = NutDriver(_cfg(username="u", password="pw-secret"))
    b = NutDriver(_cfg(id="ups-b", ups="ups-b", username="u", password="pw-secret"))
    c = NutDriver(_cfg(id="ups-c", username="u", password="other"))
    d = NutDriver(_cfg(id="ups-d", username="u", password="pw-secret", login=True))
    try:
        assert a._conn() is b._conn()
        assert c._conn() is not a._conn() and d._conn() is not a._conn()
        assert repr(a._conn()) != "p" and "password" not in repr(a._conn())
    finally:
        for driver in (a, b, c, d):
            await driver.close()
