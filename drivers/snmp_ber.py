"""A small BER codec for the SNMP v1/v2c messages the driver sends and receives.

Why our own: pysnmp decodes every reply through pyasn1's generic BER machinery, which costs about
3 ms of CPU per 10-object GET here (~270 GETs/s on one core); the issue asks for 600. A v1/v2c
message is a handful of nested TLVs, so encoding a request and decoding a response by hand costs
tens of microseconds. pysnmp still does everything SNMPv3 (USM auth/priv, engine discovery) and
the trap listener, where correctness of crypto matters more than microseconds.

Values are decoded to `(tag, python value)`: INTEGER/Counter/Gauge/TimeTicks -> int, OCTET
STRING/IpAddress/Opaque -> bytes, OID -> tuple of ints, NULL and the v2 exceptions -> None.
Anything malformed raises `BerError`; the driver turns it into a ProtocolError.
"""

from __future__ import annotations

from typing import Final

Oid = tuple[int, ...]
Value = tuple[int, object]
VarBind = tuple[Oid, Value]

INTEGER: Final = 0x02
OCTET_STRING: Final = 0x04
NULL: Final = 0x05
OBJECT_ID: Final = 0x06
SEQUENCE: Final = 0x30
IP_ADDRESS: Final = 0x40
COUNTER32: Final = 0x41
GAUGE32: Final = 0x42
TIMETICKS: Final = 0x43
OPAQUE: Final = 0x44
COUNTER64: Final = 0x46
NO_SUCH_OBJECT: Final = 0x80
NO_SUCH_INSTANCE: Final = 0x81
END_OF_MIB_VIEW: Final = 0x82

GET: Final = 0xA0
GETNEXT: Final = 0xA1
RESPONSE: Final = 0xA2
GETBULK: Final = 0xA5

#: Tags whose value is an unsigned or signed integer.
INT_TAGS: Final = frozenset({INTEGER, COUNTER32, GAUGE32, TIMETICKS, COUNTER64})
#: The SNMPv2 "no value here" markers, handled per OID.
EXCEPTIONS: Final = frozenset({NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW})

TYPE_NAMES: Final = {
    INTEGER: "INTEGER",
    OCTET_STRING: "OCTET STRING",
    NULL: "NULL",
    OBJECT_ID: "OBJECT IDENTIFIER",
    IP_ADDRESS: "IpAddress",
    COUNTER32: "Counter32",
    GAUGE32: "Gauge32",
    TIMETICKS: "TimeTicks",
    OPAQUE: "Opaque",
    COUNTER64: "Counter64",
    NO_SUCH_OBJECT: "noSuchObject",
    NO_SUCH_INSTANCE: "noSuchInstance",
    END_OF_MIB_VIEW: "endOfMibView",
}

ERROR_NAMES: Final = (
    "noError",
    "tooBig",
    "noSuchName",
    "badValue",
    "readOnly",
    "genErr",
    "noAccess",
    "wrongType",
    "wrongLength",
    "wrongEncoding",
    "wrongValue",
    "noCreation",
    "inconsistentValue",
    "resourceUnavailable",
    "commitFailed",
    "undoFailed",
    "authorizationError",
    "notWritable",
    "inconsistentName",
)


class BerError(ValueError):
    """The bytes are not a well-formed SNMP v1/v2c message."""


def parse_oid(text: str) -> Oid:
    """`1.3.6.1.2.1.1.3.0` (a leading dot allowed) -> a tuple of ints."""
    parts = text.strip().lstrip(".").split(".")
    try:
        oid = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a numeric OID") from None
    if len(oid) < 2 or oid[0] > 2 or any(p < 0 for p in oid):
        raise ValueError(f"{text!r} is not a valid OID")
    return oid


def oid_str(oid: Oid) -> str:
    return ".".join(map(str, oid))


# ---- encoding -------------------------------------------------------------------------------


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _len(len(body)) + body


def enc_int(value: int, tag: int = INTEGER) -> bytes:
    length = max(1, (value.bit_length() + 8) // 8)
    return tlv(tag, value.to_bytes(length, "big", signed=True))


def enc_uint(value: int, tag: int) -> bytes:
    length = max(1, (value.bit_length() + 8) // 8)
    return tlv(tag, value.to_bytes(length, "big", signed=False))


def enc_oid(oid: Oid) -> bytes:
    out = bytearray((oid[0] * 40 + oid[1],))
    for arc in oid[2:]:
        if arc < 0x80:
            out.append(arc)
            continue
        chunk = []
        while arc:
            chunk.append(arc & 0x7F)
            arc >>= 7
        for i in range(len(chunk) - 1, -1, -1):
            out.append(chunk[i] | (0x80 if i else 0))
    return tlv(OBJECT_ID, bytes(out))


_NULL_VALUE = b"\x05\x00"


def encode_request(
    version: int,
    community: bytes,
    pdu_type: int,
    request_id: int,
    oids: list[Oid],
    non_repeaters: int = 0,
    max_repetitions: int = 0,
) -> bytes:
    """A GET, GETNEXT or GETBULK message. `version` is 0 for v1, 1 for v2c."""
    vbs = b"".join(tlv(SEQUENCE, enc_oid(o) + _NULL_VALUE) for o in oids)
    if pdu_type == GETBULK:
        head = enc_int(request_id) + enc_int(non_repeaters) + enc_int(max_repetitions)
    else:
        head = enc_int(request_id) + b"\x02\x01\x00\x02\x01\x00"
    pdu = tlv(pdu_type, head + tlv(SEQUENCE, vbs))
    return tlv(SEQUENCE, enc_int(version) + tlv(OCTET_STRING, community) + pdu)


# ---- decoding -------------------------------------------------------------------------------


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the TLV at `pos`."""
    if pos + 2 > end:
        raise BerError("truncated TLV")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise BerError("bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise BerError("length beyond the message")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    got, start, stop = _header(data, pos, end)
    if got != tag:
        raise BerError(f"expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def _int(data: bytes, start: int, stop: int, signed: bool = True) -> int:
    if stop - start > 9 or stop == start:
        raise BerError("bad integer length")
    return int.from_bytes(data[start:stop], "big", signed=signed)


def dec_oid(body: bytes) -> Oid:
    if not body:
        raise BerError("empty OID")
    first = body[0]
    if first >= 0x80:
        raise BerError("bad first OID arc")
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for b in body[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    if body[-1] & 0x80:
        raise BerError("truncated OID arc")
    return tuple(arcs)


def _value(data: bytes, start: int, stop: int, tag: int) -> object:
    if tag == INTEGER:
        return _int(data, start, stop)
    if tag in INT_TAGS:
        return _int(data, start, stop, signed=False)
    if tag in (OCTET_STRING, IP_ADDRESS, OPAQUE):
        return data[start:stop]
    if tag == OBJECT_ID:
        return dec_oid(data[start:stop])
    if tag == NULL or tag in EXCEPTIONS:
        return None
    raise BerError(f"unknown value type 0x{tag:02x}")


class Response:
    """A decoded response PDU."""

    __slots__ = ("error_index", "error_status", "request_id", "varbinds")

    def __init__(
        self, request_id: int, error_status: int, error_index: int, varbinds: list[VarBind]
    ) -> None:
        self.request_id = request_id
        self.error_status = error_status
        self.error_index = error_index
        self.varbinds = varbinds


def decode_response(data: bytes, community: bytes | None = None) -> Response:
    """Decode a v1/v2c Response; a community other than `community` raises BerError."""
    end = len(data)
    start, stop = _expect(data, 0, end, SEQUENCE)
    if stop != end:
        raise BerError("trailing bytes after the message")
    v0, v1 = _expect(data, start, stop, INTEGER)
    if _int(data, v0, v1) not in (0, 1):
        raise BerError("not an SNMP v1/v2c message")
    c0, c1 = _expect(data, v1, stop, OCTET_STRING)
    if community is not None and data[c0:c1] != community:
        raise BerError("response with another community")
    p0, p1 = _expect(data, c1, stop, RESPONSE)
    r0, r1 = _expect(data, p0, p1, INTEGER)
    s0, s1 = _expect(data, r1, p1, INTEGER)
    i0, i1 = _expect(data, s1, p1, INTEGER)
    l0, l1 = _expect(data, i1, p1, SEQUENCE)
    varbinds: list[VarBind] = []
    pos = l0
    while pos < l1:
        b0, b1 = _expect(data, pos, l1, SEQUENCE)
        o0, o1 = _expect(data, b0, b1, OBJECT_ID)
        tag, x0, x1 = _header(data, o1, b1)
        varbinds.append((dec_oid(data[o0:o1]), (tag, _value(data, x0, x1, tag))))
        pos = b1
    return Response(_int(data, r0, r1), _int(data, s0, s1), _int(data, i0, i1), varbinds)


def peek_request_id(data: bytes) -> int | None:
    """The request-id of a v1/v2c message, or None when it is not one (cheap demultiplexing)."""
    try:
        end = len(data)
        start, stop = _expect(data, 0, end, SEQUENCE)
        _, v1 = _expect(data, start, stop, INTEGER)
        _, c1 = _expect(data, v1, stop, OCTET_STRING)
        _, p0, p1 = _header(data, c1, stop)
        r0, r1 = _expect(data, p0, p1, INTEGER)
        return _int(data, r0, r1)
    except BerError:
        return None
