"""The driver's side of SNMP v1/v2c on the wire: requests out, responses in.

Why our own codec: pysnmp decodes every reply through pyasn1's generic BER machinery, which costs
about 3 ms of CPU per 10-object GET here (~270 GETs/s on one core); the issue asks for 600. A
v1/v2c message is a handful of nested TLVs, so encoding a request and decoding a response by hand
costs tens of microseconds. pysnmp still does everything SNMPv3 (USM auth/priv, engine discovery)
and the trap listener, where correctness of crypto matters more than microseconds.

The codec itself (and its rules, see docs/snmp.md) is `facility_wire.ber`, shared with the
simulator; this module adds what only the driver needs. Anything malformed raises `BerError`; the
driver turns it into a ProtocolError.
"""

from __future__ import annotations

from typing import Final

from facility_wire.ber import (
    COUNTER32,
    COUNTER64,
    END_OF_MIB_VIEW,
    EXCEPTIONS,
    GAUGE32,
    GET,
    GETBULK,
    GETNEXT,
    INT_TAGS,
    INTEGER,
    IP_ADDRESS,
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    NULL,
    OBJECT_ID,
    OCTET_STRING,
    OPAQUE,
    RESPONSE,
    SEQUENCE,
    SET,
    TIMETICKS,
    BerError,
    Oid,
    Value,
    VarBind,
    decode_message,
    enc_int,
    enc_oid,
    enc_varbind,
    encode_message,
    encode_request,
    peek_request_id,
    tlv,
)

__all__ = [
    "COUNTER32",
    "COUNTER64",
    "END_OF_MIB_VIEW",
    "ERROR_NAMES",
    "EXCEPTIONS",
    "GAUGE32",
    "GET",
    "GETBULK",
    "GETNEXT",
    "INTEGER",
    "INT_TAGS",
    "IP_ADDRESS",
    "NO_SUCH_INSTANCE",
    "NO_SUCH_OBJECT",
    "NULL",
    "OBJECT_ID",
    "OCTET_STRING",
    "OPAQUE",
    "RESPONSE",
    "SEQUENCE",
    "SET",
    "TIMETICKS",
    "TYPE_NAMES",
    "BerError",
    "Oid",
    "Response",
    "Value",
    "VarBind",
    "decode_response",
    "enc_int",
    "enc_oid",
    "enc_uint",
    "enc_varbind",
    "encode_message",
    "encode_request",
    "oid_str",
    "parse_oid",
    "peek_request_id",
    "tlv",
]

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


def enc_uint(value: int, tag: int) -> bytes:
    """An unsigned value (Counter32, Gauge32, TimeTicks, Counter64)."""
    return enc_int(value, tag)


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


_RESPONSE_ONLY: Final = frozenset({RESPONSE})


def decode_response(data: bytes, community: bytes | None = None) -> Response:
    """Decode a v1/v2c Response; a community other than `community` raises BerError."""
    msg = decode_message(data, _RESPONSE_ONLY)
    if community is not None and msg.community != community:
        raise BerError("response with another community")
    return Response(msg.request_id, msg.field1, msg.field2, msg.varbinds)
