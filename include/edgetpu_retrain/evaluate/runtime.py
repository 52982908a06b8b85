"""One small interface to run an exported detector: a SavedModel folder or a .tflite file.

    det = open_detector("runs/r1/model_int8.tflite", num_threads=2)   # or a SavedModel dir
    image = resize_to_input(decode_image(jpeg_bytes), det.input_size)  # uint8 [h, w, 3]
    found = det.detect(image)   # Detections: boxes [n,4], classes [n], scores [n]

Output conventions (docs/contracts.md "Serving signature"): boxes are (ymin, xmin, ymax, xmax)
normalized to the model input (so also to the original image, since resizing keeps relative
positions), classes are 0-based (label-map id - 1), only the first `count` rows are returned.

Output tensors are found by name, never by position:
- a SavedModel: `serving_default` outputs `boxes`, `classes`, `scores`, `count`;
- a .tflite with a signature: pycoral's names `output_0..3` = (count, scores, classes, boxes), or the
  contract names; without a signature: pycoral's positional rules (boxes, classes, scores, count when
  the 4th output has one element, else scores, boxes, count, classes).
Input: uint8 images are fed as they are; a quantized uint8/int8 input with another scale/zero point
is quantized with its parameters; a float32 input gets the 0..255 values as float.

TensorFlow is imported only to run a SavedModel; .tflite files run under ai_edge_litert alone.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetpu_retrain.common import UserError

PYCORAL_NAMES = {"output_0": "count", "output_1": "scores", "output_2": "classes", "output_3": "boxes"}
CONTRACT_NAMES = ("boxes", "classes", "scores", "count")


@dataclasses.dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # [n, 4] float32 (ymin, xmin, ymax, xmax), normalized
    classes: np.ndarray  # [n] int64, 0-based
    scores: np.ndarray  # [n] float32

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def from_outputs(cls, *, boxes: Any, classes: Any, scores: Any, count: Any) -> Detections:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        classes = np.asarray(classes, np.float32).reshape(-1)
        scores = np.asarray(scores, np.float32).reshape(-1)
        n = int(np.asarray(count).reshape(-1)[0])
        n = max(0, min(n, scores.shape[0], boxes.shape[0]))
        return cls(boxes[:n].copy(), np.rint(classes[:n]).astype(np.int64), scores[:n].copy())


class Detector:
    """Base class: `kind`, `path`, `input_size` (height, width), `input_dtype`, `detect(image)`."""

    kind = "?"
    quantized = False  # True for a TFLite model with a quantized (uint8/int8) input

    def __init__(self, path: Path, input_size: tuple[int, int], input_dtype: str) -> None:
        self.path = path
        self.input_size = input_size
        self.input_dtype = input_dtype

    def detect(self, image: np.ndarray) -> Detections:
        """image: uint8 [h, w, 3] at the model's input size (see resize_to_input)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 [h, w, 3] image, got {image.dtype} {image.shape}")
        if tuple(image.shape[:2]) != tuple(self.input_size):
            image = resize_to_input(image, self.input_size)
        return self._run(image[np.newaxis])

    def timed_detect(self, image: np.ndarray) -> tuple[Detections, float]:
        """detect() plus its wall time in milliseconds (model only: the image is already resized)."""
        start = time.perf_counter()
        found = self.detect(image)
        return found, (time.perf_counter() - start) * 1000.0

    def _run(self, batch: np.ndarray) -> Detections:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "input_size": list(self.input_size),
            "input_dtype": self.input_dtype,
            "quantized": self.quantized,
        }


class SavedModelDetector(Detector):
    kind = "saved_model"

    def __init__(self, path: Path, signature: str = "serving_default") -> None:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        if signature not in loaded.signatures:
            raise UserError(
                f"{path}: SavedModel has no '{signature}' signature (has {sorted(loaded.signatures)}); "
                "re-export it with `edgetpu-retrain export`"
            )
        fn = loaded.signatures[signature]
        inputs = fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise UserError(f"{path}: '{signature}' takes {len(inputs)} inputs, expected one image input")
        ((self._input_name, spec),) = inputs.items()
        shape = spec.shape.as_list()
        missing = [n for n in CONTRACT_NAMES if n not in fn.structured_outputs]
        if len(shape) != 4 or shape[1] is None or shape[2] is None or missing:
            raise UserError(
                f"{path}: '{signature}' is not a detection signature (input {shape}, outputs "
                f"{sorted(fn.structured_outputs)}); re-export it with `edgetpu-retrain export`"
            )
        self._tf = tf
        self._loaded = loaded  # keeps the variables alive
        self._fn = fn
        self._dtype = spec.dtype
        super().__init__(path, (int(shape[1]), int(shape[2])), spec.dtype.name)

    def _run(self, batch: np.ndarray) -> Detections:
        x = self._tf.constant(batch, dtype=self._dtype)
        out = self._fn(**{self._input_name: x})
        return Detections.from_outputs(**{n: out[n].numpy()[0] for n in CONTRACT_NAMES})


class TFLiteDetector(Detector):
    kind = "tflite"

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise UserError(
                f"{path}: cannot load this .tflite ({exc}); an _edgetpu.tflite needs the Edge TPU "
                "delegate — evaluate the CPU model_int8.tflite instead"
            ) from exc
        details = interpreter.get_input_details()
        if len(details) != 1 or len(details[0]["shape"]) != 4:
            raise UserError(
                f"{path}: expected one image input [1, h, w, 3], got {[d['shape'] for d in details]}"
            )
        self._interpreter = interpreter
        self._input = details[0]
        self.output_indices = self._find_outputs(interpreter)
        shape = details[0]["shape"]
        super().__init__(path, (int(shape[1]), int(shape[2])), np.dtype(details[0]["dtype"]).name)
        scale = (details[0].get("quantization") or (0.0, 0))[0]
        self.quantized = self.input_dtype in ("uint8", "int8") and scale > 0

    @staticmethod
    def _find_outputs(interpreter: Any) -> dict[str, int]:
        """{"boxes"|"classes"|"scores"|"count": tensor index}, by signature name when there is one."""
        signatures = interpreter._get_full_signature_list() or {}  # noqa: SLF001 (pycoral does the same)
        if len(signatures) == 1:
            outputs = next(iter(signatures.values()))["outputs"]
            if set(PYCORAL_NAMES) <= set(outputs):
                return {PYCORAL_NAMES[k]: int(outputs[k]) for k in PYCORAL_NAMES}
            if set(CONTRACT_NAMES) <= set(outputs):
                return {k: int(outputs[k]) for k in CONTRACT_NAMES}
        details = interpreter.get_output_details()
        if len(details) != 4:
            raise UserError(
                f"expected 4 detection outputs, got {len(details)}; export with `edgetpu-retrain export`"
            )
        idx = [int(d["index"]) for d in details]
        if int(np.prod(details[3]["shape"])) == 1:
            return dict(zip(("boxes", "classes", "scores", "count"), idx, strict=False))
        return dict(zip(("scores", "boxes", "count", "classes"), idx, strict=False))

    def _run(self, batch: np.ndarray) -> Detections:
        it = self._interpreter
        quantization = self._input.get("quantization", (0.0, 0))
        it.set_tensor(self._input["index"], quantize_input(batch, self._input["dtype"], quantization))
        it.invoke()
        out = {k: it.get_tensor(i) for k, i in self.output_indices.items()}
        return Detections.from_outputs(
            boxes=out["boxes"][0], classes=out["classes"][0], scores=out["scores"][0], count=out["count"]
        )

    def describe(self) -> dict[str, Any]:
        scale, zero = self._input.get("quantization", (0.0, 0))
        return {**super().describe(), "input_quantization": [float(scale), int(zero)]}


def is_identity_quantization(scale: float, zero_point: int) -> bool:
    """True for scale 1, zero point 0: uint8 pixels 0..255 are the quantized values themselves."""
    return abs(scale - 1.0) < 1e-6 and zero_point == 0


def quantize_input(batch: np.ndarray, dtype: Any, quantization: tuple[float, int]) -> np.ndarray:
    """uint8 pixels 0..255 -> the values a .tflite input of `dtype` with (scale, zero point) takes.

    float32: the pixel values as floats; uint8 without quantization or with the identity one: as
    they are; otherwise round(x / scale + zero point), clipped to the integer type's range.
    """
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return batch.astype(np.float32)
    scale, zero = quantization
    if dtype == np.uint8 and (scale == 0.0 or is_identity_quantization(scale, zero)):
        return batch.astype(np.uint8, copy=False)
    info = np.iinfo(dtype)
    q = np.rint(batch.astype(np.float32) / scale + zero)
    return np.clip(q, info.min, info.max).astype(dtype)


def open_detector(path: str | Path, *, num_threads: int | None = None) -> Detector:
    """A SavedModel directory or a .tflite file -> Detector."""
    path = Path(path).resolve()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UserError(
                f"{path}: not a SavedModel folder (no saved_model.pb); pass the export output or a .tflite"
            )
        return SavedModelDetector(path)
    if path.is_file() and path.suffix == ".tflite":
        return TFLiteDetector(path, num_threads=num_threads)
    raise UserError(f"{path}: model not found; pass a SavedModel folder (export) or a .tflite file (tflite)")


# ------------------------------------------------------------------------------------- images
def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 [H, W, 3] RGB, stored pixel order (EXIF orientation NOT applied: the
    labels refer to the stored pixels, as in the TFRecords and tf.io.decode_image)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def resize_to_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (height, width), half-pixel centers, no antialias — the same arithmetic as
    tf.image.resize(method="bilinear") used in training — then rounded to uint8. Aspect ratio is not
    kept (boxes stay valid in normalized coordinates)."""
    image = np.asarray(image)
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image.astype(np.uint8, copy=False)
    src = image.astype(np.float32)
    ys0, ys1, wy = _axis_weights(image.shape[0], h)
    xs0, xs1, wx = _axis_weights(image.shape[1], w)
    top = src[ys0][:, xs0] * (1 - wx)[None, :, None] + src[ys0][:, xs1] * wx[None, :, None]
    bottom = src[ys1][:, xs0] * (1 - wx)[None, :, None] + src[ys1][:, xs1] * wx[None, :, None]
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = n_in / n_out
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    pos = np.clip(pos, 0.0, None)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)
