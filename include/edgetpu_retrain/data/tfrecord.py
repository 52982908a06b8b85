"""TF Example encoding/decoding and TFRecord framing in the TF Object Detection API schema.

Shared by build-dataset (writing), training and evaluation (reading with tf.data) and the tests
(reading without TensorFlow).

* `encode_example(record, image_bytes)` turns one accepted.json image record into serialized
  `tf.train.Example` bytes. The protobuf wire format is written by hand (`protobuf.py`, sorted
  feature keys), which gives exactly the bytes of
  `tf.train.Example.SerializeToString(deterministic=True)` without importing TensorFlow (tests check this).
* `TFRecordWriter` writes the TFRecord framing (length, masked CRC32C of the length, data, masked
  CRC32C of the data). CRC32C (`crc.py`) is computed with numpy over many 256-byte lanes at once and the lane
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
from edgetpu_retrain.data import protobuf as pb
from edgetpu_retrain.data.crc import crc32c_many, crc32c_py, masked_crc32c

_FLUSH_BYTES = 16 << 20  # the writer computes CRCs in batches of about this many bytes


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
            out.write(struct.pack("<I", masked_crc32c(crc32c_py(header))))
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
            if verify and masked_crc32c(crc32c_py(header[:8])) != length_crc:
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
# tf.train.Example (hand-written, deterministic: features sorted by key)


def serialize_features(features: Mapping[str, tuple[str, Sequence[Any]]]) -> bytes:
    """Serialize {key: (kind, values)} with kind in 'bytes' | 'float' | 'int64' as a tf.train.Example."""
    body = bytearray()
    for key in sorted(features):
        kind, values = features[key]
        if kind == "bytes":
            feature = pb.bytes_list([pb.to_bytes(v) for v in values])
        elif kind == "float":
            feature = pb.float_list([float(v) for v in values])
        elif kind == "int64":
            feature = pb.int64_list([int(v) for v in values])
        else:
            raise ValueError(f"feature {key}: unknown kind {kind!r}")
        # Features.feature (map<string, Feature>) = 1: entries {key = 1, value = 2}
        body += pb.field(1, pb.field(1, key.encode("utf-8")) + pb.field(2, feature))
    return pb.field(1, bytes(body))  # Example.features = 1


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


def decode_example(serialized: bytes) -> dict[str, list]:
    """Decode a serialized tf.train.Example into {key: list of bytes | float | int} without TF."""
    out: dict[str, list] = {}
    for number, _, features in pb.fields(serialized):
        if number != 1:
            continue
        for entry_number, _, entry in pb.fields(features):
            if entry_number != 1:
                continue
            key = b""
            feature = b""
            for n, _, v in pb.fields(entry):
                if n == 1:
                    key = v
                elif n == 2:
                    feature = v
            values: list = []
            for kind, _, payload in pb.fields(feature):
                for n, wire, v in pb.fields(payload):
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
                                item, pos = pb.read_varint(v, pos)
                                values.append(pb.signed64(item))
                        else:
                            values.append(pb.signed64(v))
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
