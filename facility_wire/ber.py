"""The BER subset of SNMP v1/v2c messages (RFC 3416 PDUs, X.690 encoding), both directions.

One codec for both sides of the wire: the SNMP driver encodes requests and decodes responses,
the simulator decodes requests and encodes responses and traps. It is strict where a lenient
reading would hide a broken peer, and bounded so that no datagram costs more than its size:

- lengths are definite, at most 4 length octets, and never beyond the enclosing TLV;
- every constructed value (message, PDU, varbind list, varbind) must be used up exactly:
  trailing bytes inside one are an error, as are bytes after the message;
- an OBJECT IDENTIFIER has 2 to 128 arcs, each at most 2^32-1, no 0x80 padding octet; its first
  octets carry `x*40 + y`, so arcs 2.48 and above take more than one octet;
- INTEGER is an Integer32; Counter32, Gauge32 and TimeTicks are 0..2^32-1, Counter64 0..2^64-1.
  An unsigned value sent without its leading zero octet (`41 04 ff ff ff ff`, a common agent
  bug) reads as the unsigned number it plainly means, as net-snmp reads it;
- IpAddress is exactly 4 octets; NULL and the v2 exception markers carry no content.

Values are `(tag, python value)`: the integer types -> int, OCTET STRING/IpAddress/Opaque ->
bytes, OBJECT IDENTIFIER -> tuple of ints, NULL and the exception markers -> None. Anything
malformed raises `BerError` (a ValueError), never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass
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
SET: Final = 0xA3
GETBULK: Final = 0xA5
INFORM: Final = 0xA6
TRAP2: Final = 0xA7
REPORT: Final = 0xA8
#: PDUs that share the v2 layout: request-id, two integers, varbind list (the v1 Trap-PDU differs).
PDU_TYPES: Final = frozenset({GET, GETNEXT, RESPONSE, SET, GETBULK, INFORM, TRAP2, REPORT})

MAX_ARCS: Final = 128
MAX_ARC: Final = 2**32 - 1
INT32: Final = (-(2**31), 2**31 - 1)
#: Inclusive ranges of the integer types.
INT_RANGES: Final = {
    INTEGER: INT32,
    COUNTER32: (0, 2**32 - 1),
    GAUGE32: (0, 2**32 - 1),
    TIMETICKS: (0, 2**32 - 1),
    COUNTER64: (0, 2**64 - 1),
}
#: Tags whose value is an integer.
INT_TAGS: Final = frozenset(INT_RANGES)
#: Unsigned integer tags, and the most content octets each may take (with the leading zero).
_UNSIGNED_OCTETS: Final = {COUNTER32: 5, GAUGE32: 5, TIMETICKS: 5, COUNTER64: 9}
#: The SNMPv2 "no value here" markers, handled per OID.
EXCEPTIONS: Final = frozenset({NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW})
STRING_TAGS: Final = frozenset({OCTET_STRING, IP_ADDRESS, OPAQUE})


class BerError(ValueError):
    """The bytes are not a well-formed SNMP v1/v2c message (or a value cannot be encoded)."""


# ---- encoding -------------------------------------------------------------------------------


def enc_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + enc_len(len(body)) + body


def enc_int(value: int, tag: int = INTEGER) -> bytes:
    """An integer of `tag` in two's complement, minimal length; out of range raises BerError."""
    lo, hi = INT_RANGES[tag]
    if not lo <= value <= hi:
        raise BerError(f"{value} is out of range for tag 0x{tag:02x}")
    length = max(1, (value.bit_length() + 8) // 8)
    return tlv(tag, value.to_bytes(length, "big", signed=True))


def _base128(value: int, out: bytearray) -> None:
    if value < 0x80:
        out.append(value)
        return
    chunk = []
    while value:
        chunk.append(value & 0x7F)
        value >>= 7
    for i in range(len(chunk) - 1, -1, -1):
        out.append(chunk[i] | (0x80 if i else 0))


def check_oid(oid: Oid) -> None:
    """Raise BerError unless `oid` can be encoded (and would decode back to itself)."""
    if not 2 <= len(oid) <= MAX_ARCS:
        raise BerError(f"an OID has 2 to {MAX_ARCS} arcs, not {len(oid)}")
    if oid[0] not in (0, 1, 2) or (oid[0] < 2 and oid[1] >= 40):
        raise BerError(f"bad first arcs {oid[0]}.{oid[1]}")
    if min(oid) < 0 or max(oid) > MAX_ARC:
        raise BerError("an OID arc is out of range 0..2^32-1")


def enc_oid(oid: Oid) -> bytes:
    check_oid(oid)
    out = bytearray()
    _base128(oid[0] * 40 + oid[1], out)
    for arc in oid[2:]:
        _base128(arc, out)
    return tlv(OBJECT_ID, bytes(out))


def enc_value(value: Value) -> bytes:
    """One varbind value; a str for a string type is sent as UTF-8."""
    tag, raw = value
    if tag in INT_TAGS:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise BerError(f"tag 0x{tag:02x} needs an int, not {type(raw).__name__}")
        return enc_int(raw, tag)
    if tag in STRING_TAGS:
        data = raw.encode() if isinstance(raw, str) else raw
        if not isinstance(data, bytes | bytearray):
            raise BerError(f"tag 0x{tag:02x} needs bytes, not {type(raw).__name__}")
        if tag == IP_ADDRESS and len(data) != 4:
            raise BerError("an IpAddress is 4 octets")
        return tlv(tag, bytes(data))
    if tag == OBJECT_ID:
        if not isinstance(raw, tuple):
            raise BerError("an OBJECT IDENTIFIER value is a tuple of ints")
        return enc_oid(raw)
    if tag == NULL or tag in EXCEPTIONS:
        return bytes((tag, 0))
    raise BerError(f"cannot encode tag 0x{tag:02x}")


def enc_varbind(oid: Oid, value: Value) -> bytes:
    return tlv(SEQUENCE, enc_oid(oid) + enc_value(value))


_NULL_VALUE: Final = b"\x05\x00"


def encode_message(
    version: int,
    community: bytes,
    pdu_type: int,
    request_id: int,
    field1: int,
    field2: int,
    varbinds: bytes,
) -> bytes:
    """A whole message around already-encoded varbinds. `field1`/`field2` are error-status and
    error-index, or non-repeaters and max-repetitions for a GETBULK."""
    body = enc_int(request_id) + enc_int(field1) + enc_int(field2) + tlv(SEQUENCE, varbinds)
    return tlv(SEQUENCE, enc_int(version) + tlv(OCTET_STRING, community) + tlv(pdu_type, body))


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
        return encode_message(
            version, community, pdu_type, request_id, non_repeaters, max_repetitions, vbs
        )
    return encode_message(version, community, pdu_type, request_id, 0, 0, vbs)


# ---- decoding -------------------------------------------------------------------------------


def header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the TLV at `pos`, which must end by `end`."""
    if pos + 2 > end:
        raise BerError("truncated TLV")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-octet tags are not SNMP")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0:
            raise BerError("indefinite length")
        if n > 4 or pos + n > end:
            raise BerError("bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise BerError("length beyond the enclosing value")
    return tag, pos, pos + length


def expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    got, start, stop = header(data, pos, end)
    if got != tag:
        raise BerError(f"expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def dec_int(data: bytes, start: int, stop: int, tag: int = INTEGER) -> int:
    """An integer of `tag`, range-checked (see the module's rules on unsigned types)."""
    n = stop - start
    if n == 0:
        raise BerError("empty integer")
    if n > _UNSIGNED_OCTETS.get(tag, 5):
        raise BerError(f"integer of {n} octets is too long for tag 0x{tag:02x}")
    value = int.from_bytes(data[start:stop], "big", signed=True)
    lo, hi = INT_RANGES[tag]
    if value < 0 and lo == 0 and n < _UNSIGNED_OCTETS[tag]:
        value += 1 << (8 * n)
    if not lo <= value <= hi:
        raise BerError(f"{value} is out of range for tag 0x{tag:02x}")
    return value


def dec_oid(body: bytes) -> Oid:
    if not body:
        raise BerError("empty OID")
    if body[-1] & 0x80:
        raise BerError("truncated OID arc")
    arcs: list[int] = []
    value = 0
    fresh = True
    for b in body:
        if fresh and b == 0x80:
            raise BerError("padded OID arc")
        value = (value << 7) | (b & 0x7F)
        if b & 0x80:
            if value > MAX_ARC + 80:  # stop a run of continuation octets early
                raise BerError("OID arc above 2^32-1")
            fresh = False
            continue
        if not arcs:
            first = 0 if value < 40 else 1 if value < 80 else 2
            arcs.append(first)
            value -= 40 * first
        if value > MAX_ARC:
            raise BerError("OID arc above 2^32-1")
        arcs.append(value)
        if len(arcs) > MAX_ARCS:
            raise BerError(f"OID of more than {MAX_ARCS} arcs")
        value = 0
        fresh = True
    return tuple(arcs)


def dec_value(data: bytes, start: int, stop: int, tag: int) -> object:
    if tag in INT_TAGS:
        return dec_int(data, start, stop, tag)
    if tag in STRING_TAGS:
        if tag == IP_ADDRESS and stop - start != 4:
            raise BerError(f"IpAddress of {stop - start} octets")
        return data[start:stop]
    if tag == OBJECT_ID:
        return dec_oid(data[start:stop])
    if tag == NULL or tag in EXCEPTIONS:
        if stop != start:
            raise BerError(f"tag 0x{tag:02x} with content")
        return None
    raise BerError(f"unknown value type 0x{tag:02x}")


def dec_varbinds(data: bytes, start: int, stop: int) -> list[VarBind]:
    """The varbinds of a varbind list's content; each varbind is exactly an OID and a value."""
    out: list[VarBind] = []
    pos = start
    while pos < stop:
        b0, b1 = expect(data, pos, stop, SEQUENCE)
        o0, o1 = expect(data, b0, b1, OBJECT_ID)
        tag, x0, x1 = header(data, o1, b1)
        if x1 != b1:
            raise BerError("trailing bytes inside a varbind")
        out.append((dec_oid(data[o0:o1]), (tag, dec_value(data, x0, x1, tag))))
        pos = b1
    return out


@dataclass(slots=True)
class Message:
    """A decoded v1/v2c message with a v2-layout PDU."""

    version: int
    community: bytes
    pdu_type: int
    request_id: int
    #: error-status (non-repeaters for a GETBULK)
    field1: int
    #: error-index (max-repetitions for a GETBULK)
    field2: int
    varbinds: list[VarBind]


def _envelope(data: bytes) -> tuple[int, bytes, int, int, int]:
    """(version, community, PDU tag, PDU start, PDU end) of a whole message."""
    end = len(data)
    start, stop = expect(data, 0, end, SEQUENCE)
    if stop != end:
        raise BerError("trailing bytes after the message")
    v0, v1 = expect(data, start, stop, INTEGER)
    version = dec_int(data, v0, v1)
    if version not in (0, 1):
        raise BerError("not an SNMP v1/v2c message")
    c0, c1 = expect(data, v1, stop, OCTET_STRING)
    pdu, p0, p1 = header(data, c1, stop)
    if p1 != stop:
        raise BerError("trailing bytes inside the message")
    return version, data[c0:c1], pdu, p0, p1


def decode_message(data: bytes, pdu_types: frozenset[int] = PDU_TYPES) -> Message:
    """Decode a whole message whose PDU is one of `pdu_types`."""
    version, community, pdu, p0, p1 = _envelope(data)
    if pdu not in pdu_types:
        raise BerError(f"unexpected PDU type 0x{pdu:02x}")
    r0, r1 = expect(data, p0, p1, INTEGER)
    s0, s1 = expect(data, r1, p1, INTEGER)
    i0, i1 = expect(data, s1, p1, INTEGER)
    l0, l1 = expect(data, i1, p1, SEQUENCE)
    if l1 != p1:
        raise BerError("trailing bytes inside the PDU")
    return Message(
        version,
        community,
        pdu,
        dec_int(data, r0, r1),
        dec_int(data, s0, s1),
        dec_int(data, i0, i1),
        dec_varbinds(data, l0, l1),
    )


def peek_request_id(data: bytes) -> int | None:
    """The request-id of a v1/v2c message, or None when it is not one (cheap demultiplexing)."""
    try:
        _, _, _, p0, p1 = _envelope(data)
        r0, r1 = expect(data, p0, p1, INTEGER)
        return dec_int(data, r0, r1)
    except BerError:
        return None
