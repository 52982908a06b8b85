"""The protobuf wire format, the little of it a tf.train.Example needs, written and read by hand.

Encoding gives exactly the bytes of `SerializeToString(deterministic=True)` when the caller orders
map entries by key; decoding yields raw (field number, wire type, value) triples.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any

_SMALL_VARINTS = [bytes([i]) for i in range(128)]


def varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    value &= 0xFFFFFFFFFFFFFFFF  # int64 -> two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def bytes_list(values: Sequence[bytes]) -> bytes:
    return field(1, b"".join(field(1, v) for v in values))  # Feature.bytes_list = 1


def float_list(values: Sequence[float]) -> bytes:
    packed = field(1, struct.pack(f"<{len(values)}f", *values)) if values else b""
    return field(2, packed)  # Feature.float_list = 2


def int64_list(values: Sequence[int]) -> bytes:
    packed = field(1, b"".join(varint(int(v)) for v in values)) if values else b""
    return field(3, packed)  # Feature.int64_list = 3


def to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def signed64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value
