"""HTTP/2 and gRPC wire details the picker's own gRPC transport needs (RFC 9113, RFC 7541, gRPC over HTTP/2).

Only what a gRPC *server* sends is encoded here: frame headers, SETTINGS, WINDOW_UPDATE, RST_STREAM, GOAWAY,
PING acks, and header blocks. Header blocks use HPACK literals "without indexing" only, which never touch
the dynamic table, so constant blocks (``:status 200``, ``content-type``, ``grpc-status: 0``) are encoded
once and are valid on any connection at any time; decoding the client's headers needs the full HPACK
decoder (``hpack.Decoder``).
"""

from __future__ import annotations

import struct
import urllib.parse

# Frame types and flags
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME = 16_384
MAX_FRAME_LIMIT = 2**24 - 1  # the largest SETTINGS_MAX_FRAME_SIZE a peer may ask for

FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
GRPC_PREFIX = struct.Struct(">BI")  # compressed flag, message length


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def frame_header(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in values.items()))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer (RFC 7541 §5.1) with ``first``'s high bits as the pattern."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes, name_index: int = 0) -> bytes:
    """Literal header field without indexing (RFC 7541 §6.2.2), raw (not Huffman) strings."""
    out = _integer(name_index, 4, 0x00)
    if not name_index:
        out += _integer(len(name), 7, 0x00) + name
    return out + _integer(len(value), 7, 0x00) + value


STATUS_200 = b"\x88"  # static table index 8
RESPONSE_HEADERS = STATUS_200 + literal(b"content-type", b"application/grpc", name_index=31)


def grpc_status(code: int, message: str = "") -> bytes:
    """The ``grpc-status`` / ``grpc-message`` fields of a trailers block (message percent-encoded)."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    return block


TRAILERS_OK = grpc_status(0)
