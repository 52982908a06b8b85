"""TF Example encoding/decoding and TFRecord framing in the TF Object Detection API schema.

Shared by build-dataset (writing), training and evaluation (reading with tf.data) and the tests
(reading without TensorFlow).

* `encode_example(record, image_bytes)` turns one accepted.json image record into serialized
  `tf.train.Example` bytes. The protobuf wire format is written by hand (sorted feature keys), which
  gives exactly the bytes of `tf.train.Example.SerializeToString(deterministic=True)` without importing
  TensorFlow (tests check this).
* `TFRecordWriter` writes the TFRecord framing (length, masked CRC32C of the length, data, masked
  CRC32C of the data). CRC32C is computed with numpy over many 256-byte lanes at once and the lane
  results are combined with precomputed GF(2) "append zeros" tables, so a writer process never pays the
  ~3 s TensorFlow import (benchmarks/bench_data.py measures both writers).
* `iter_records(path)` / `decode_example(data)` read TFRecords and Examples in pure Python.
* `parse_example(serialized)` is the tf.data parser (imports TensorFlow on call).

Example keys (the TF Object Detection API schema): image/encoded, image/format ('jpeg' | 'png'),
image/height, image/width, image/filename, image/source_id (the file name), image/key/sha256,
image/object/bbox/{xmin,xmax,ymin,ymax} (float32, normalized 0..1), image/object/class/text,
image/object/class/label (1-based label-map ids), image/object/difficult, image/object/truncated,
image/object/view (the VOC pose).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from edgetpu_retrain.common import sha256_bytes

# ---------------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), as TFRecord framing uses it.

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_LANE = 256  # bytes per lane in the vectorized CRC
_FLUSH_BYTES = 16 << 20  # the writer computes CRCs in batches of about this many bytes


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


def _crc32c_py(data: bytes, crc: int = 0) -> int:
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
            results[i] = _crc32c_py(buf)
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


# ---------------------------------------------------------------------------------------------------
# TFRecord framing


class TFRecordWriter:
    """Write TFRecord framing without TensorFlow (uncompressed, same bytes as tf.io.TFRecordWriter).

    Records are buffered up to ~16 MB so their CRCs are computed in one vectorized pass.
    """

    def __init__(self, path: str | Path) -> None:
        self._file: BinaryIO = open(path, "wb")
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, record: bytes) -> None:
        self._pending.append(bytes(record))
        self._pending_bytes += len(record)
        if self._pending_bytes >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        crcs = crc32c_many(self._pending)
        out = self._file
        for record, crc in zip(self._pending, crcs, strict=False):
            header = struct.pack("<Q", len(record))
            out.write(header)
            out.write(struct.pack("<I", masked_crc32c(_crc32c_py(header))))
            out.write(record)
            out.write(struct.pack("<I", masked_crc32c(crc)))
        self._pending = []
        self._pending_bytes = 0
        out.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TFRecordError(ValueError):
    """A TFRecord file is truncated or fails its CRC check."""


def iter_records(path: str | Path, *, verify: bool = True) -> Iterator[bytes]:
    """Yield the records of an uncompressed TFRecord file; CRCs are checked unless verify=False.

    Data CRCs are checked in batches of ~16 MB (one vectorized pass), before those records are yielded.
    """
    batch: list[tuple[int, bytes, int]] = []
    batch_bytes = 0

    def checked() -> Iterator[bytes]:
        if verify:
            for (index, _data, expected), crc in zip(
                batch, crc32c_many([d for _, d, _ in batch]), strict=False
            ):
                if masked_crc32c(crc) != expected:
                    raise TFRecordError(f"{path}: record {index}: data CRC mismatch")
        for _, data, _ in batch:
            yield data

    with open(path, "rb") as handle:
        index = 0
        while True:
            header = handle.read(12)
            if not header:
                break
            if len(header) < 12:
                raise TFRecordError(f"{path}: record {index}: truncated header")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if verify and masked_crc32c(_crc32c_py(header[:8])) != length_crc:
                raise TFRecordError(f"{path}: record {index}: length CRC mismatch")
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{path}: record {index}: truncated data")
            batch.append((index, data, struct.unpack("<I", footer)[0]))
            batch_bytes += length
            index += 1
            if batch_bytes >= _FLUSH_BYTES:
                yield from checked()
                batch, batch_bytes = [], 0
    yield from checked()


def write_tfrecord(path: str | Path, records: Iterable[bytes]) -> int:
    """Write `records` to `path`; returns the number written."""
    count = 0
    with TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
            count += 1
    return count


# ---------------------------------------------------------------------------------------------------
# tf.train.Example wire format (hand-written, deterministic: features sorted by key)


_SMALL_VARINTS = [bytes([i]) for i in range(128)]


def _varint(value: int) -> bytes:
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


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_list(values: Sequence[bytes]) -> bytes:
    return _field(1, b"".join(_field(1, v) for v in values))  # Feature.bytes_list = 1


def _float_list(values: Sequence[float]) -> bytes:
    packed = _field(1, struct.pack(f"<{len(values)}f", *values)) if values else b""
    return _field(2, packed)  # Feature.float_list = 2


def _int64_list(values: Sequence[int]) -> bytes:
    packed = _field(1, b"".join(_varint(int(v)) for v in values)) if values else b""
    return _field(3, packed)  # Feature.int64_list = 3


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def serialize_features(features: Mapping[str, tuple[str, Sequence[Any]]]) -> bytes:
    """Serialize {key: (kind, values)} with kind in 'bytes' | 'float' | 'int64' as a tf.train.Example."""
    body = bytearray()
    for key in sorted(features):
        kind, values = features[key]
        if kind == "bytes":
            feature = _bytes_list([_to_bytes(v) for v in values])
        elif kind == "float":
            feature = _float_list([float(v) for v in values])
        elif kind == "int64":
            feature = _int64_list([int(v) for v in values])
        else:
            raise ValueError(f"feature {key}: unknown kind {kind!r}")
        # Features.feature (map<string, Feature>) = 1: entries {key = 1, value = 2}
        body += _field(1, _field(1, key.encode("utf-8")) + _field(2, feature))
    return _field(1, bytes(body))  # Example.features = 1


def example_features(record: Mapping[str, Any], image_bytes: bytes, *, sha256: str | None = None) -> dict:
    """The OD API feature dict {key: (kind, values)} of one accepted.json image record."""
    width = int(record["width"])
    height = int(record["height"])
    objects = record.get("objects") or []
    fmt = str(record.get("format") or "jpeg").lower()
    if fmt == "jpg":
        fmt = "jpeg"
    filename = str(record["filename"])
    digest = sha256 or sha256_bytes(image_bytes)
    return {
        "image/encoded": ("bytes", [image_bytes]),
        "image/format": ("bytes", [fmt]),
        "image/height": ("int64", [height]),
        "image/width": ("int64", [width]),
        "image/filename": ("bytes", [filename]),
        "image/source_id": ("bytes", [filename]),
        "image/key/sha256": ("bytes", [digest]),
        "image/object/bbox/xmin": ("float", [o["xmin"] / width for o in objects]),
        "image/object/bbox/xmax": ("float", [o["xmax"] / width for o in objects]),
        "image/object/bbox/ymin": ("float", [o["ymin"] / height for o in objects]),
        "image/object/bbox/ymax": ("float", [o["ymax"] / height for o in objects]),
        "image/object/class/text": ("bytes", [o["class"] for o in objects]),
        "image/object/class/label": ("int64", [int(o["label"]) for o in objects]),
        "image/object/difficult": ("int64", [int(o.get("difficult", 0) or 0) for o in objects]),
        "image/object/truncated": ("int64", [int(o.get("truncated", 0) or 0) for o in objects]),
        "image/object/view": ("bytes", [str(o.get("pose") or "Unspecified") for o in objects]),
    }


def encode_example(record: Mapping[str, Any], image_bytes: bytes, *, sha256: str | None = None) -> bytes:
    """Serialized tf.train.Example for one accepted.json image record.

    `image_bytes` go in unchanged (JPEG stays JPEG, PNG stays PNG, `image/format` from the record);
    boxes are the record's VOC pixel coordinates divided by width/height (float32 on the wire).
    `sha256` is the hex digest of `image_bytes` if the caller already has it.
    """
    return serialize_features(example_features(record, image_bytes, sha256=sha256))


# ---------------------------------------------------------------------------------------------------
# Pure-python decoding (tests, tools); training uses parse_example.


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
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


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def decode_example(serialized: bytes) -> dict[str, list]:
    """Decode a serialized tf.train.Example into {key: list of bytes | float | int} without TF."""
    out: dict[str, list] = {}
    for number, _, features in _fields(serialized):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features):
            if entry_number != 1:
                continue
            key = b""
            feature = b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = v
                elif n == 2:
                    feature = v
            values: list = []
            for kind, _, payload in _fields(feature):
                for n, wire, v in _fields(payload):
                    if n != 1:
                        continue
                    if kind == 1:
                        values.append(bytes(v))
                    elif kind == 2:
                        if wire == 2:
                            values.extend(struct.unpack(f"<{len(v) // 4}f", v))
                        else:
                            values.append(struct.unpack("<f", v)[0])
                    elif kind == 3:
                        if wire == 2:
                            pos = 0
                            while pos < len(v):
                                item, pos = _read_varint(v, pos)
                                values.append(_signed64(item))
                        else:
                            values.append(_signed64(v))
            out[key.decode("utf-8")] = values
    return out


def read_examples(paths: Iterable[str | Path]) -> Iterator[dict[str, list]]:
    """Decoded examples of TFRecord files, in file order (pure python)."""
    for path in paths:
        for record in iter_records(path):
            yield decode_example(record)


# ---------------------------------------------------------------------------------------------------
# tf.data parsing (imports TensorFlow on call)


def feature_spec() -> dict:
    """tf.io feature spec of the OD API keys written by encode_example."""
    import tensorflow as tf

    string = tf.io.FixedLenFeature([], tf.string, default_value="")
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/format": tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": string,
        "image/source_id": string,
        "image/key/sha256": string,
    }
    for key in ("xmin", "xmax", "ymin", "ymax"):
        spec[f"image/object/bbox/{key}"] = tf.io.VarLenFeature(tf.float32)
    spec["image/object/class/text"] = tf.io.VarLenFeature(tf.string)
    spec["image/object/view"] = tf.io.VarLenFeature(tf.string)
    for key in ("image/object/class/label", "image/object/difficult", "image/object/truncated"):
        spec[key] = tf.io.VarLenFeature(tf.int64)
    return spec


def parse_example(serialized: Any, *, decode_image: bool = False) -> dict:
    """Parse one serialized Example (a scalar tf.string tensor) for `dataset.map(parse_example)`.

    Returns every schema key as a dense tensor (per-object keys have shape [N]) plus
    `boxes` float32 [N, 4] as (ymin, xmin, ymax, xmax) normalized and `labels` int64 [N] (1-based).
    With decode_image=True also `image` uint8 [H, W, 3] (JPEG or PNG).
    """
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    out = {
        key: tf.sparse.to_dense(value) if isinstance(value, tf.SparseTensor) else value
        for key, value in parsed.items()
    }
    out["boxes"] = tf.stack(
        [
            out["image/object/bbox/ymin"],
            out["image/object/bbox/xmin"],
            out["image/object/bbox/ymax"],
            out["image/object/bbox/xmax"],
        ],
        axis=-1,
    )
    out["labels"] = out["image/object/class/label"]
    if decode_image:
        image = tf.io.decode_image(out["image/encoded"], channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        out["image"] = image
    return out
