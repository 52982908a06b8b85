"""CRC32C (Castagnoli), as TFRecord framing uses it, without TensorFlow.

`crc32c_many` computes many buffers at once with numpy over 256-byte lanes, combining the lane results
with precomputed GF(2) "append zeros" tables (benchmarks/bench_data.py measures it); `crc32c_py` is
the plain table-driven version for short buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_LANE = 256  # bytes per lane in the vectorized CRC


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()
_np_cache: dict[str, Any] = {}


def crc32c_py(data: bytes, crc: int = 0) -> int:
    """Plain table-driven CRC32C; fine for short buffers (headers, tests)."""
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _np_tables() -> tuple[Any, list[list[int]]]:
    """(numpy byte table, 4 byte-tables of the linear map 'append _LANE zero bytes' on the raw state)."""
    if not _np_cache:
        import numpy as np

        table = np.array(_TABLE, dtype=np.uint32)
        # Images of the 4*256 single-byte states under _LANE zero bytes; the map is linear over GF(2),
        # so zeros(state) = Z0[b0] ^ Z1[b1] ^ Z2[b2] ^ Z3[b3].
        states = (
            np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]
        ).ravel()
        for _ in range(_LANE):
            states = table[states & 0xFF] ^ (states >> 8)
        _np_cache["table"] = table
        _np_cache["zeros"] = [states[i * 256 : (i + 1) * 256].tolist() for i in range(4)]
    return _np_cache["table"], _np_cache["zeros"]


def crc32c_many(buffers: Sequence[bytes]) -> list[int]:
    """CRC32C of each buffer (same values as crc32c(b) for each b), vectorized with numpy.

    Each buffer is cut into 256-byte lanes (front-padded with zeros, which does not change a CRC whose
    register starts at 0; the standard all-ones start is folded into the first 4 data bytes). All lanes
    of all buffers advance one byte per numpy step; then each buffer's lanes are combined in order with
    the precomputed 'append 256 zeros' tables.
    """
    import numpy as np

    results: list[int | None] = [None] * len(buffers)
    big = [i for i, b in enumerate(buffers) if len(b) >= 64]
    for i, buf in enumerate(buffers):
        if len(buf) < 64:
            results[i] = crc32c_py(buf)
    if big:
        table, (z0, z1, z2, z3) = _np_tables()
        rows_per = [-(-len(buffers[i]) // _LANE) for i in big]
        total_rows = sum(rows_per)
        matrix = np.zeros(total_rows * _LANE, dtype=np.uint8)
        row = 0
        for i, rows in zip(big, rows_per, strict=False):
            buf = buffers[i]
            end = (row + rows) * _LANE
            start = end - len(buf)
            matrix[start:end] = np.frombuffer(buf, dtype=np.uint8)
            matrix[start : start + 4] ^= 0xFF  # register init 0xFFFFFFFF == complement of 4 first bytes
            row += rows
        columns = np.ascontiguousarray(matrix.reshape(total_rows, _LANE).T)
        del matrix
        state = np.zeros(total_rows, dtype=np.uint32)
        for col in columns:
            state = table[(state ^ col) & 0xFF] ^ (state >> 8)
        del columns
        lane_crcs = state.tolist()
        row = 0
        for i, rows in zip(big, rows_per, strict=False):
            acc = 0
            for value in lane_crcs[row : row + rows]:
                acc = z0[acc & 0xFF] ^ z1[(acc >> 8) & 0xFF] ^ z2[(acc >> 16) & 0xFF] ^ z3[acc >> 24] ^ value
            results[i] = acc ^ 0xFFFFFFFF
            row += rows
    return [int(r) for r in results]  # type: ignore[arg-type]


def crc32c(data: bytes) -> int:
    return crc32c_many([data])[0]


def masked_crc32c(crc: int) -> int:
    """TFRecord's masking of a CRC32C value (rotate right 15, add a constant)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF
