"""The shared BER codec against pysnmp's own (pyasn1) as an independent oracle, both directions,
and the rules only a strict codec keeps (docs/snmp.md, "The BER codec")."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api, rfc1905

from facility_agent.drivers.snmp import wire as snmp_ber
from facility_agent.simulators.faces import snmp as sa
from facility_wire import ber

P: Any = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
U32 = 2**32 - 1
ORACLE = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# ---- strategies -----------------------------------------------------------------------------

arc = st.integers(0, U32)
oids = st.one_of(
    st.tuples(st.integers(0, 1), st.integers(0, 39)),
    st.tuples(st.just(2), st.integers(0, U32 - 80)),
).flatmap(lambda head: st.lists(arc, max_size=20).map(lambda rest: (*head, *rest)))
values = st.one_of(
    st.tuples(st.just(ber.INTEGER), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.sampled_from([ber.COUNTER32, ber.GAUGE32, ber.TIMETICKS]), st.integers(0, U32)),
    st.tuples(st.just(ber.COUNTER64), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(ber.OCTET_STRING), st.binary(max_size=300)),
    st.tuples(st.just(ber.OPAQUE), st.binary(max_size=40)),
    st.tuples(st.just(ber.IP_ADDRESS), st.binary(min_size=4, max_size=4)),
    st.tuples(st.just(ber.OBJECT_ID), oids),
    st.tuples(st.sampled_from([ber.NULL, *sorted(ber.EXCEPTIONS)]), st.none()),
)
varbinds = st.lists(st.tuples(oids, values), max_size=12)
int32 = st.integers(-(2**31), 2**31 - 1)
pdu_types = st.sampled_from([ber.GET, ber.GETNEXT, ber.RESPONSE, ber.GETBULK, ber.TRAP2])

# ---- the oracle's side ----------------------------------------------------------------------

_TO_ASN1: dict[int, Any] = {
    ber.INTEGER: P.Integer,
    ber.COUNTER32: P.Counter32,
    ber.GAUGE32: P.Gauge32,
    ber.TIMETICKS: P.TimeTicks,
    ber.COUNTER64: P.Counter64,
    ber.OCTET_STRING: P.OctetString,
    ber.OPAQUE: P.Opaque,
    ber.IP_ADDRESS: P.IpAddress,
    ber.OBJECT_ID: P.ObjectIdentifier,
}
_MARKERS: dict[int, Any] = {
    ber.NULL: P.Null(""),
    ber.NO_SUCH_OBJECT: rfc1905.noSuchObject,
    ber.NO_SUCH_INSTANCE: rfc1905.noSuchInstance,
    ber.END_OF_MIB_VIEW: rfc1905.endOfMibView,
}
_PDUS: dict[int, Any] = {
    ber.GET: P.GetRequestPDU,
    ber.GETNEXT: P.GetNextRequestPDU,
    ber.RESPONSE: P.ResponsePDU,
    ber.GETBULK: P.GetBulkRequestPDU,
    ber.TRAP2: P.SNMPv2TrapPDU,
}


def _asn1_value(value: ber.Value) -> Any:
    tag, raw = value
    return _MARKERS[tag] if tag in _MARKERS else _TO_ASN1[tag](raw)


def _tag(obj: Any) -> int:
    t = obj.tagSet[0]
    return int(t.tagClass | t.tagFormat | t.tagId)


def _py_value(obj: Any) -> ber.Value:
    tag = _tag(obj)
    if tag in ber.INT_TAGS:
        return tag, int(obj)
    if tag in ber.STRING_TAGS:
        return tag, bytes(obj.asOctets())
    if tag == ber.OBJECT_ID:
        return tag, tuple(obj)
    return tag, None


def oracle_encode(
    version: int, community: bytes, pdu_type: int, rid: int, f1: int, f2: int, vbs: Any
) -> bytes:
    pdu = _PDUS[pdu_type]()
    P.apiPDU.set_defaults(pdu)
    P.apiPDU.set_request_id(pdu, rid)
    if pdu_type == ber.GETBULK:
        P.apiBulkPDU.set_non_repeaters(pdu, f1)
        P.apiBulkPDU.set_max_repetitions(pdu, f2)
    else:
        P.apiPDU.set_error_status(pdu, f1)
        P.apiPDU.set_error_index(pdu, f2)
    P.apiPDU.set_varbinds(pdu, [(oid, _asn1_value(v)) for oid, v in vbs])
    msg = P.Message()
    P.apiMessage.set_defaults(msg)
    msg["version"] = version
    P.apiMessage.set_community(msg, community)
    P.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def oracle_decode(data: bytes) -> tuple[int, bytes, int, int, int, int, list[ber.VarBind]]:
    msg, rest = decoder.decode(data, asn1Spec=P.Message())
    assert not rest
    pdu = P.apiMessage.get_pdu(msg)
    fields = [int(pdu.getComponentByPosition(i)) for i in (0, 1, 2)]
    vbs = [(tuple(o), _py_value(v)) for o, v in P.apiPDU.get_varbinds(pdu)]
    return (
        int(msg["version"]),
        bytes(P.apiMessage.get_community(msg)),
        _tag(pdu),
        fields[0],
        fields[1],
        fields[2],
        vbs,
    )


# ---- both directions ------------------------------------------------------------------------

message = st.tuples(
    st.sampled_from([0, 1]),
    st.binary(max_size=30),
    pdu_types,
    int32,
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**31 - 1),
    varbinds,
)


@ORACLE
@given(message)
def test_what_we_encode_the_oracle_decodes_to_the_same(m: Any) -> None:
    version, community, pdu, rid, f1, f2, vbs = m
    data = ber.encode_message(
        version, community, pdu, rid, f1, f2, b"".join(ber.enc_varbind(o, v) for o, v in vbs)
    )
    assert oracle_decode(data) == (version, community, pdu, rid, f1, f2, vbs)


@ORACLE
@given(message)
def test_what_the_oracle_encodes_we_decode_to_the_same(m: Any) -> None:
    version, community, pdu, rid, f1, f2, vbs = m
    got = ber.decode_message(oracle_encode(*m))
    assert (got.version, got.community, got.pdu_type, got.request_id) == (
        version,
        community,
        pdu,
        rid,
    )
    assert (got.field1, got.field2, got.varbinds) == (f1, f2, vbs)


@ORACLE
@given(st.sampled_from([0, 1]), int32, st.lists(oids, max_size=10), st.integers(0, 500))
def test_driver_requests_and_simulator_replies_agree_with_the_oracle(
    version: int, rid: int, asked: list[ber.Oid], reps: int
) -> None:
    request = snmp_ber.encode_request(version, b"ups-a", ber.GETBULK, rid, asked, 0, reps)
    assert oracle_decode(request) == (
        version,
        b"ups-a",
        ber.GETBULK,
        rid,
        0,
        reps,
        [(o, (ber.NULL, None)) for o in asked],
    )
    req = sa.decode_request(oracle_encode(version, b"ups-a", ber.GETBULK, rid, 0, reps, []))
    assert (req.request_id, req.max_repetitions) == (rid, reps)
    vbs = [(o, (ber.COUNTER32, 2**32 + 7)) for o in asked]  # the simulator wraps counters
    reply = sa.encode_message(
        version, b"ups-a", sa.RESPONSE, rid, 0, 0, b"".join(sa._enc_varbind(*vb) for vb in vbs)
    )
    assert oracle_decode(reply)[6] == [(o, (ber.COUNTER32, 7)) for o in asked]
    resp = snmp_ber.decode_response(reply, b"ups-a")
    assert resp.varbinds == [(o, (ber.COUNTER32, 7)) for o in asked]


@ORACLE
@given(message, st.integers(0, 2**16), st.integers(0, 255))
def test_a_corrupted_message_only_ever_raises_ber_error(m: Any, where: int, byte: int) -> None:
    data = bytearray(oracle_encode(*m))
    data[where % len(data)] = byte
    for parse in (ber.decode_message, sa.decode_request, snmp_ber.decode_response):
        with contextlib.suppress(ber.BerError):
            parse(bytes(data))
    rid = snmp_ber.peek_request_id(bytes(data))
    assert rid is None or isinstance(rid, int)


# ---- the rules, one by one ------------------------------------------------------------------


def _response(*vbs: bytes, pdu_extra: bytes = b"", msg_extra: bytes = b"") -> bytes:
    body = ber.enc_int(1) + ber.enc_int(0) + ber.enc_int(0) + ber.tlv(ber.SEQUENCE, b"".join(vbs))
    pdu = ber.tlv(ber.RESPONSE, body + pdu_extra)
    return ber.tlv(ber.SEQUENCE, ber.enc_int(1) + ber.tlv(ber.OCTET_STRING, b"c") + pdu + msg_extra)


def _vb(value: bytes, oid: ber.Oid = (1, 3, 6, 1)) -> bytes:
    return ber.tlv(ber.SEQUENCE, ber.enc_oid(oid) + value)


@pytest.mark.parametrize(
    "oid", [(2, 48), (2, 100, 3), (2, 999, 1, 2), (2, U32 - 80), (1, 39, U32), (0, 0)]
)
def test_first_arcs_of_2_48_and_above_round_trip(oid: ber.Oid) -> None:
    data = _response(_vb(ber.enc_oid(oid), oid))
    assert ber.decode_message(data).varbinds == [(oid, (ber.OBJECT_ID, oid))]
    assert oracle_decode(data)[6] == [(oid, (ber.OBJECT_ID, oid))]
    assert oracle_encode(1, b"c", ber.RESPONSE, 1, 0, 0, [(oid, (ber.NULL, None))]) == _response(
        _vb(b"\x05\x00", oid)
    )


def _raw_oid(body: bytes) -> bytes:
    return _response(ber.tlv(ber.SEQUENCE, ber.tlv(ber.OBJECT_ID, body) + b"\x05\x00"))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_raw_oid(b"\x2b\x90\x80\x80\x80\x00"), "above 2"),  # 2^32
        (_raw_oid(b"\x2b\xff\xff\xff\xff\xff\xff\xff\x7f"), "above 2"),
        (_raw_oid(b"\x2b" + b"\x01" * 127), "more than 128"),
        (_raw_oid(b"\x2b\x80\x01"), "padded"),
        (_raw_oid(b"\x2b\x81"), "truncated"),
        (_raw_oid(b""), "empty"),
        (_response(_vb(b"\x05\x00"), pdu_extra=b"\x05\x00"), "inside the PDU"),
        (_response(_vb(b"\x05\x00"), msg_extra=b"\x05\x00"), "inside the message"),
        (_response(_vb(b"\x05\x00")) + b"\x00", "after the message"),
        (_response(ber.tlv(ber.SEQUENCE, ber.enc_oid((1, 3)) + b"\x05\x00\x05\x00")), "varbind"),
        (_response(_vb(b"\x41\x05\x01\x00\x00\x00\x00")), "out of range"),  # Counter32 2^32
        (_response(_vb(b"\x41\x05\xff\xff\xff\xff\xff")), "out of range"),  # -1 in 5 octets
        (_response(_vb(b"\x41\x06\x00\x01\x00\x00\x00\x00")), "too long"),
        (_response(_vb(b"\x02\x05\x00\x80\x00\x00\x00")), "out of range"),  # INTEGER 2^31
        (_response(_vb(b"\x46\x0a" + b"\x00" * 10)), "too long"),
        (_response(_vb(b"\x40\x05\x01\x02\x03\x04\x05")), "IpAddress of 5"),
        (_response(_vb(b"\x40\x03\x01\x02\x03")), "IpAddress of 3"),
        (_response(_vb(b"\x05\x01\x00")), "with content"),
        (_response(_vb(b"\x80\x01\x00")), "with content"),
        (_response(_vb(b"\x82\x02\x00\x00")), "with content"),
        (_response(_vb(b"\x02\x00")), "empty integer"),
        (_response(_vb(b"\x9f\x22\x00")), "multi-octet tags"),
        (_response(_vb(b"\x24\x00")), "unknown value type"),
        (b"\x30\x80" + _response()[2:] + b"\x00\x00", "indefinite"),
    ],
)
def test_malformed_is_rejected_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(ber.BerError, match=why):
        ber.decode_message(data)
    with pytest.raises(ber.BerError):
        sa.decode_request(data)


def test_unsigned_without_its_leading_zero_reads_as_meant() -> None:
    got = ber.decode_message(_response(_vb(b"\x41\x04\xff\xff\xff\xff"), _vb(b"\x42\x01\x80")))
    assert [v for _, v in got.varbinds] == [(ber.COUNTER32, U32), (ber.GAUGE32, 128)]


@pytest.mark.parametrize(
    "bad",
    [
        (ber.COUNTER32, 2**32),
        (ber.GAUGE32, -1),
        (ber.INTEGER, 2**31),
        (ber.COUNTER64, 2**64),
        (ber.IP_ADDRESS, b"\x01\x02\x03"),
        (ber.INTEGER, "7"),
        (0x47, b""),
    ],
)
def test_values_out_of_range_are_not_encoded(bad: ber.Value) -> None:
    with pytest.raises(ber.BerError):
        ber.enc_value(bad)


@pytest.mark.parametrize(
    "oid", [(1,), (1, 40), (3, 1), (1, 3, 2**32), (1, 3, -1), (1, 3, *[1] * 127)]
)
def test_oids_that_cannot_be_encoded(oid: ber.Oid) -> None:
    with pytest.raises(ber.BerError):
        ber.enc_oid(oid)


def test_the_simulator_codec_is_the_driver_codec() -> None:
    """Not a near-copy any more: one module serves both sides."""
    assert sa.ber is ber
    assert snmp_ber.decode_message is ber.decode_message
