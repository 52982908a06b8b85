"""Converting the bundled Coral MobileNets onto keras.applications: time, agreement, BatchNorm in
training mode, and what `model.backbone_weights: bundled` costs on first use vs from the cache.

    .venv/bin/python benchmarks/bench_pretrained.py [--size 320] [--skip-detector]

Per bundled file (fresh process state, each converted once):
- conversion seconds (read + dequantize + map + BatchNorm statistics on 32 views + agreement check
  + atomic save);
- agreement with the uint8 TFLite model on the 8 bundled photos: top-1 matches and mean top-5
  overlap of the logits (classifiers), pooled-feature cosine (embedding);
- training-mode BatchNorm on 16 views of 4 photos NOT used for the statistics: cosine between the
  training- and inference-mode output of the detector's stride-16 feature layer and of the last layer,
  identity BatchNorm (the folded network as is) vs measured statistics; and classifier top-1 then.
Then the detector (mobilenet_v2_ssd and mobilenet_v1_ssd, alpha 1.0, --size px): seconds for
build_detector with an empty weights cache (converts) and again with the cache filled.
Plain lines on stdout; nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
FEATURE_LAYER = {1: "conv_pw_11_relu", 2: "block_13_expand_relu"}


def _cosine(a, b) -> float:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def conversion(name: str, out_dir: Path) -> None:
    from edgetpu_retrain.model import pretrained

    started = time.perf_counter()
    summary = pretrained.import_weights(
        pretrained.bundled_dir() / name,
        out_dir / f"{Path(name).stem}.weights.h5",
    )
    seconds = time.perf_counter() - started
    print(
        f"{name}: V{summary['version']} alpha {summary['alpha']:g} {summary['kind']} "
        f"{summary['input_size']} px, {summary['layers_mapped']} convs mapped, converted in {seconds:.1f} s, "
        f"agreement {summary['agreement']}",
        flush=True,
    )


def training_mode(name: str) -> None:
    import keras

    from edgetpu_retrain.model import pretrained_convert as pc
    from edgetpu_retrain.model.pretrained_tflite import read_mobilenet

    mn = read_mobilenet(pc.bundled_dir() / name)
    photos = pc.photo_paths()
    held = pc.stats_views(pc.load_photos(photos[4:], mn.input_size))
    batch = pc.to_float(mn, held)
    backbone = pc.keras_backbone(mn.version, mn.alpha, mn.input_size)
    pairs = pc.conv_bn_pairs(backbone)
    probe = keras.Model(
        backbone.input, [backbone.get_layer(FEATURE_LAYER[mn.version]).output, backbone.output]
    )
    reference = pc.tflite_outputs(mn, held)
    rows = []
    for label in ("identity", "measured"):
        pc.assign_weights(mn, pairs, mn.path)  # (again: training-mode calls move the moving averages)
        if label == "measured":
            pc.set_batchnorm_statistics(
                backbone, pairs, mn, images=pc.stats_views(pc.load_photos(photos[:4], mn.input_size))
            )
        inf, train = probe(batch, training=False), probe(batch, training=True)
        result = pc.agreement(mn, reference, pc.keras_outputs(mn, backbone, held, training=True))
        rows.append(
            f"{label}: stride-16 cos {_cosine(inf[0], train[0]):.3f}, "
            f"last cos {_cosine(inf[1], train[1]):.3f}, {result}"
        )
    print(f"{name}: training-mode BatchNorm on 16 unseen views: " + "; ".join(rows), flush=True)


def detector_build(base: str, size: int) -> None:
    from edgetpu_retrain.model import config
    from edgetpu_retrain.model import detector as model

    raw = {
        "model": {
            "base": base,
            "input_size": size,
            "alpha": 1.0,
            "num_classes": 3,
            "backbone_weights": "bundled",
            "head": "ssdlite" if base == "mobilenet_v2_ssd" else "ssd",
        },
        "data": {
            "dataset_dir": "/d",
            "label_map": "/d/l.pbtxt",
            "classes": ["a", "b", "c"],
            "tfrecords": {"train": ["/d/t.tfrecord"]},
        },
    }
    cfg = config.config_from_dict(raw)
    times = []
    for _ in range(2):
        started = time.perf_counter()
        model.build_detector(cfg)
        times.append(time.perf_counter() - started)
    print(
        f"{base} {size} px build_detector(bundled): first (converts) {times[0]:.1f} s, "
        f"cached {times[1]:.1f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320, help="detector input size (default 320)")
    parser.add_argument("--skip-detector", action="store_true", help="only the per-file measurements")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgetpu_retrain.model import pretrained

    with tempfile.TemporaryDirectory() as tmp:
        os.environ[pretrained.CACHE_ENV] = str(Path(tmp) / "cache")
        for name in sorted(set(pretrained.BUNDLED_FILES.values())):
            conversion(name, Path(tmp))
            training_mode(name)
        if not args.skip_detector:
            for base in ("mobilenet_v2_ssd", "mobilenet_v1_ssd"):
                detector_build(base, args.size)


if __name__ == "__main__":
    main()
