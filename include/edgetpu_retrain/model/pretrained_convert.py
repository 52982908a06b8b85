"""Map a dequantized Coral MobileNet (`pretrained_tflite`) onto keras.applications, with real BatchNorm.

The TFLite convs carry BatchNorm folded into a bias. Loaded as identity BatchNorm the Keras network is
exact in inference mode only: in training mode BatchNorm normalizes each conv output by its batch
statistics, which are nothing like (0, 1), and the network falls apart. So each conv's output mean m
and variance v are measured on real photos and its BatchNorm becomes moving_mean = m,
moving_variance = v, gamma = sqrt(v + eps), beta = m + bias: inference output is unchanged
(gamma (z - m) / sqrt(v + eps) + beta = z + bias). Measured in training mode on a batch of 16 views of
4 photos NOT used for the statistics (benchmarks/bench_pretrained.py): the detector's stride-16
feature layer keeps cosine 0.88-0.93 to inference mode (identity BatchNorm: 0.47-0.56), but the
stride-32 output drifts (0.33-0.58; identity 0.00-0.31) and classifier top-1 in training mode on unseen
photos is not restored (0-1 of 16 either way): batch statistics of a few photos are far from the
population's in the deep, class-specific channels. Fine-tuning with small batches should therefore
still keep (at least the deep) BatchNorm in inference mode.

Statistics images: the 8 photos bundled in `pretrained_weights/images` (the same photos check the
conversion), each seen 4 ways (whole, mirrored, central 80 % crop, mirrored crop) = 32 deterministic
views. Natural photos give the activation statistics the network meets in use; noise or flat images
would not, and nothing needs downloading at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgetpu_retrain.common import UserError, atomic_path, log
from edgetpu_retrain.model.pretrained import bundled_dir
from edgetpu_retrain.model.pretrained_tflite import DW, MobileNetFile

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
STATS_BATCH = 4
MIN_TOP1_AGREEMENT = 0.5  # below this (or cosine < MIN_COSINE) the mapping is wrong, not merely noisy
MIN_COSINE = 0.95


def photo_paths(folder: Path | None = None) -> list[Path]:
    folder = folder or bundled_dir() / "images"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def load_photos(paths: list[Path], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: each whole photo resized to the model's input, as Coral's examples do."""
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append(
                np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.uint8)
            )
    return np.stack(out)


def stats_views(photos: np.ndarray) -> np.ndarray:
    """Whole, mirrored, central 80 % crop (resized back) and its mirror of every photo."""
    from PIL import Image

    size = photos.shape[1]
    lo, hi = size // 10, size - size // 10
    crops = np.stack(
        [
            np.asarray(Image.fromarray(p[lo:hi, lo:hi]).resize((size, size), Image.Resampling.BILINEAR))
            for p in photos
        ]
    )
    return np.concatenate([photos, photos[:, :, ::-1], crops, crops[:, :, ::-1]])


def to_float(mn: MobileNetFile, images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> the float input the TFLite model sees, (q - zero_point) x scale (about [-1, 1])."""
    return ((images.astype(np.float32) - mn.input_zero_point) * mn.input_scale).astype(np.float32)


def keras_backbone(version: int, alpha: float, size: int):
    import keras

    app = keras.applications.MobileNet if version == 1 else keras.applications.MobileNetV2
    images = keras.Input((size, size, 3), name="images")  # a fixed name: the saved file's bytes repeat
    return app(input_tensor=images, alpha=alpha, include_top=False, weights=None)


def conv_bn_pairs(backbone) -> list[tuple[Any, Any]]:
    """(conv, its BatchNormalization) of every Conv2D / DepthwiseConv2D, in layer (= op) order."""
    from keras import layers

    pairs = []
    ordered = backbone.layers
    for i, layer in enumerate(ordered):
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            bn = ordered[i + 1] if i + 1 < len(ordered) else None
            if not isinstance(bn, layers.BatchNormalization) or bn.input is not layer.output:
                raise RuntimeError(f"{backbone.name}: {layer.name} is not followed by its BatchNormalization")
            pairs.append((layer, bn))
    return pairs


def assign_weights(mn: MobileNetFile, pairs: list[tuple[Any, Any]], where: str) -> None:
    """Kernels into the convs, identity-plus-bias into their BatchNorm; every shape checked."""
    from keras import layers

    if len(pairs) != len(mn.convs):
        raise UserError(
            f"{where}: {mn.describe()} has {len(mn.convs)} convs, keras.applications has {len(pairs)}"
        )
    for i, ((conv, bn), src) in enumerate(zip(pairs, mn.convs, strict=True)):
        depthwise = isinstance(conv, layers.DepthwiseConv2D)
        kernel = conv.kernel
        want_out = tuple(conv.output.shape[1:])
        if (
            depthwise != (src.op == DW)
            or tuple(kernel.shape) != src.kernel.shape
            or tuple(src.output_shape[1:]) != want_out
        ):
            raise UserError(
                f"{where}: conv {i} ({src.op} {src.kernel.shape} -> {src.output_shape}) does not fit "
                f"keras layer {conv.name} ({tuple(kernel.shape)} -> {want_out}); {mn.describe()} is "
                f"not laid out like keras.applications"
            )
        kernel.assign(src.kernel)
        channels = src.bias.shape[0]
        bn.gamma.assign(np.ones(channels, np.float32))
        bn.beta.assign(src.bias)
        bn.moving_mean.assign(np.zeros(channels, np.float32))
        bn.moving_variance.assign(np.full(channels, 1.0 - bn.epsilon, np.float32))


def set_batchnorm_statistics(
    backbone, pairs: list[tuple[Any, Any]], mn: MobileNetFile, *, images: np.ndarray
) -> None:
    """Measure every conv's output mean/variance on `images`; re-solve gamma/beta (module docstring).

    Expects the state `assign_weights` leaves (identity BatchNorm, bias in beta): a training-mode call
    in between moves the moving averages and would skew the measurement.
    """
    import keras

    probe = keras.Model(backbone.input, [conv.output for conv, _ in pairs])
    sums = [np.zeros(bn.gamma.shape[0], np.float64) for _, bn in pairs]
    squares = [np.zeros_like(s) for s in sums]
    for start in range(0, len(images), STATS_BATCH):
        outs = probe(to_float(mn, images[start : start + STATS_BATCH]), training=False)
        for k, out in enumerate(outs):
            flat = np.asarray(out, np.float64).reshape(-1, sums[k].shape[0])
            sums[k] += flat.sum(axis=0)
            squares[k] += (flat * flat).sum(axis=0)
    for k, (conv, bn) in enumerate(pairs):
        n = len(images) * int(np.prod(conv.output.shape[1:3]))
        mean = sums[k] / n
        var = np.maximum(squares[k] / n - mean * mean, 0.0)
        bias = np.asarray(bn.beta.numpy(), np.float64)
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(var.astype(np.float32))
        bn.gamma.assign(np.sqrt(var + bn.epsilon).astype(np.float32))
        bn.beta.assign((mean + bias).astype(np.float32))


def tflite_outputs(mn: MobileNetFile, images: np.ndarray) -> np.ndarray:
    """The TFLite model's dequantized output per uint8 image, [N, features], or for a classifier its
    logits (the last conv's output: the uint8 softmax rounds most classes to 0 and ties the top ones)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": reading one is the point
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(
            model_path=mn.path, num_threads=1, experimental_preserve_all_tensors=mn.logits is not None
        )
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    index = mn.logits.output_index if mn.logits is not None else interpreter.get_output_details()[0]["index"]
    scale, zero = next(d["quantization"] for d in interpreter.get_tensor_details() if d["index"] == index)
    rows = []
    for image in images:
        value = to_float(mn, image[None]) if inp["dtype"] == np.float32 else image[None].astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        value = interpreter.get_tensor(index).astype(np.float32).reshape(-1)
        rows.append((value - zero) * scale if scale else value)
    return np.stack(rows)


def keras_outputs(mn: MobileNetFile, backbone, images: np.ndarray, *, training: bool = False) -> np.ndarray:
    """Pooled features (embedding) or 1001 logits (classifier) of the Keras backbone, as TFLite gives."""
    features = np.asarray(backbone(to_float(mn, images), training=training)).mean(axis=(1, 2))
    if mn.logits is None:
        return features
    return features @ mn.logits.kernel[0, 0] + mn.logits.bias


def agreement(mn: MobileNetFile, reference: np.ndarray, ours: np.ndarray) -> dict[str, Any]:
    """Classifier: top-1 matches and mean top-5 overlap; embedding: cosine (min and mean)."""
    if mn.logits is None:
        cos = (reference * ours).sum(1) / (
            np.linalg.norm(reference, axis=1) * np.linalg.norm(ours, axis=1) + 1e-12
        )
        return {
            "photos": len(ours),
            "cosine_min": round(float(cos.min()), 5),
            "cosine_mean": round(float(cos.mean()), 5),
        }
    top1 = int((reference.argmax(1) == ours.argmax(1)).sum())
    ref5, our5 = np.argsort(-reference, 1)[:, :5], np.argsort(-ours, 1)[:, :5]
    overlap = float(np.mean([len(set(a) & set(b)) for a, b in zip(ref5, our5, strict=True)]))
    return {"photos": len(ours), "top1_match": top1, "top5_overlap": round(overlap, 3)}


def _good(result: dict[str, Any]) -> bool:
    if "cosine_min" in result:
        return result["cosine_min"] >= MIN_COSINE
    return result["top1_match"] >= MIN_TOP1_AGREEMENT * result["photos"]


def save_weights(backbone, out: str | os.PathLike[str]) -> Path:
    """Atomic `.weights.h5` (Keras insists on that suffix, so the temp file gets it too)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        keras_path = tmp.with_name(tmp.name + ".weights.h5")
        try:
            backbone.save_weights(str(keras_path))
            os.replace(keras_path, tmp)
        finally:
            keras_path.unlink(missing_ok=True)
    return out


def convert_file(
    mn: MobileNetFile, *, stats_photos: list[Path] | None = None, check_photos: list[Path] | None = None
) -> tuple[Any, dict[str, Any]]:
    """(Keras include_top=False backbone with the file's weights and real BatchNorm, summary dict)."""
    stats = stats_views(load_photos(stats_photos or photo_paths(), mn.input_size))
    checks = load_photos(check_photos or photo_paths(), mn.input_size)
    backbone = keras_backbone(mn.version, mn.alpha, mn.input_size)
    pairs = conv_bn_pairs(backbone)
    assign_weights(mn, pairs, mn.path)
    set_batchnorm_statistics(backbone, pairs, mn, images=stats)
    reference = tflite_outputs(mn, checks)
    inference = agreement(mn, reference, keras_outputs(mn, backbone, checks))
    if not _good(inference):
        raise UserError(
            f"{mn.path}: converted {mn.describe()} disagrees with the TFLite model ({inference}); "
            f"the file is not laid out like keras.applications"
        )
    log.info(
        "%s: %s mapped (%d convs + BatchNorm); agreement with the TFLite model %s",
        mn.path,
        mn.describe(),
        len(pairs),
        inference,
    )
    summary = {
        "tflite": str(Path(mn.path).resolve()),
        "base": mn.base,
        "version": mn.version,
        "alpha": mn.alpha,
        "kind": mn.kind,
        "input_size": mn.input_size,
        "layers_mapped": len(pairs),
        "batchnorm_layers": len(pairs),
        "stats_images": len(stats),
        "agreement": inference,
    }
    return backbone, summary
