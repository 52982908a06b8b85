"""Session fixtures of the export / tflite / evaluate tests: a tiny detector on real photos.

A small dataset snapshot made of real microcontroller photos, a tiny detector (96x96, alpha 0.35,
192 anchors) whose outputs are made image-dependent and whose top detection is made deterministic, its
checkpoint, config, SavedModel and .tflite files. TensorFlow is imported only when a fixture runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgetpu_retrain import cli
from edgetpu_retrain.data import tfrecord
from edgetpu_retrain.evaluate.runtime import decode_image, resize_to_input
from edgetpu_retrain.model import anchors as anchor_lib
from edgetpu_retrain.model import detector as model
from edgetpu_retrain.model.config import config_from_dict, dump_config

CLASSES = ["Arduino_Nano", "ESP8266", "Heltec_ESP32_Lora", "Raspberry_Pi_3"]
SIZE = 96
MAX_DETECTIONS = 10
TOP_ANCHOR_TYPE, TOP_CLASS = 1, 1  # the deterministic winner: anchor type 1 of the 1x1 map, class ESP8266


def build_snapshot(src: Path, out: Path, *, n_train: int = 6, n_test: int = 4) -> Path:
    """A dataset snapshot (manifest.json, label_map.pbtxt, TFRecords in the OD API schema) from the
    shared microcontroller photos and their CSV labels (first images of each published split)."""
    ids = {name: i for i, name in enumerate(CLASSES, start=1)}
    (out / "tfrecords").mkdir(parents=True)
    (out / "label_map.pbtxt").write_text(
        "".join(f'item {{\n  id: {i}\n  name: "{n}"\n}}\n' for n, i in ids.items())
    )
    shards: dict[str, list[str]] = {"val": []}
    for split, csv_name, count in (
        ("train", "train_labels.csv", n_train),
        ("test", "test_labels.csv", n_test),
    ):
        rows: dict[str, list[dict]] = {}
        with open(src / csv_name, newline="") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(row["filename"], []).append(row)
        records = []
        for filename, objs in sorted(rows.items())[:count]:
            record = {
                "filename": filename,
                "width": int(objs[0]["width"]),
                "height": int(objs[0]["height"]),
                "format": "jpeg",
                "objects": [
                    {
                        "class": o["class"],
                        "label": ids[o["class"]],
                        "xmin": int(o["xmin"]),
                        "ymin": int(o["ymin"]),
                        "xmax": int(o["xmax"]),
                        "ymax": int(o["ymax"]),
                    }
                    for o in objs
                ],
            }
            records.append(tfrecord.encode_example(record, (src / "images" / filename).read_bytes()))
        rel = f"tfrecords/{split}.tfrecord-00000-of-00001"
        tfrecord.write_tfrecord(out / rel, records)
        shards[split] = [rel]
    manifest = {
        "version": 1,
        "label_map": "label_map.pbtxt",
        "num_classes": len(CLASSES),
        "classes": [{"id": i, "name": n} for n, i in ids.items()],
        "tfrecords": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def snapshot_images(dataset: Path, split: str) -> list[np.ndarray]:
    paths = [dataset / rel for rel in json.loads((dataset / "manifest.json").read_text())["tfrecords"][split]]
    return [
        resize_to_input(decode_image(ex["image/encoded"][0]), (SIZE, SIZE))
        for ex in tfrecord.read_examples(paths)
    ]


def make_config(dataset: Path, **post):
    raw = {
        "model": {
            "base": "mobilenet_v2_ssd",
            "head": "ssdlite",
            "input_size": SIZE,
            "alpha": 0.35,
            "num_classes": len(CLASSES),
            "backbone_weights": None,
            "anchors": {"num_layers": 4},
        },
        "data": {
            "dataset_dir": str(dataset),
            "label_map": str(dataset / "label_map.pbtxt"),
            "classes": CLASSES,
            "tfrecords": {
                "train": [str(dataset / "tfrecords/train.tfrecord-00000-of-00001")],
                "test": [str(dataset / "tfrecords/test.tfrecord-00000-of-00001")],
            },
        },
        "postprocess": {"max_detections": MAX_DETECTIONS, "score_threshold": 1e-4, **post},
    }
    return config_from_dict(raw)


def model_only_config(
    base: str = "mobilenet_v2_ssd",
    *,
    head: str = "ssdlite",
    size: int = 96,
    alpha: float = 0.35,
    classes: int = 3,
    train: dict | None = None,
    **model_kw,
):
    """A Config to build a detector from (its data paths are placeholders, never read); `train` keys
    override TrainConfig (for building and stepping training models)."""
    raw = {
        "model": {
            "base": base,
            "head": head,
            "input_size": size,
            "alpha": alpha,
            "num_classes": classes,
            "backbone_weights": None,
            **model_kw,
        },
        "data": {
            "dataset_dir": "/d",
            "label_map": "/d/label_map.pbtxt",
            "classes": [f"c{i}" for i in range(classes)],
            "tfrecords": {"train": ["/d/t.tfrecord"]},
        },
        **({"train": train} if train else {}),
    }
    return config_from_dict(raw)


def make_deterministic_detector(cfg, images: list[np.ndarray]):
    """Random-init detector made useful for format/agreement tests.

    1. One forward pass in training mode on real photos (momentum 0) sets the batch-norm statistics, so the
       features (and box encodings) depend on the image instead of vanishing (random init + default
       moving statistics give ~1e-15 activations).
    2. Class predictors: zero kernels, logit -6 everywhere except anchor type TOP_ANCHOR_TYPE of the
       last (1x1) map, class TOP_CLASS: +6. So every image has one clear top detection whose box comes
       from the real (image-dependent, scaled-down) box branch, and int8 rounding cannot reorder it.
    """
    import keras

    det = model.build_detector(cfg, weights=None)
    norms = [layer for layer in _all_layers(det) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # one training-mode pass sets the moving statistics to the batch's
    det(np.stack(images).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = cfg.model.bn_momentum
    sizes = anchor_lib.feature_map_sizes(cfg)
    assert sizes[-1] == 1
    columns = cfg.model.num_classes + 1
    for i in range(len(sizes)):
        layer = det.get_layer(f"class_{i}_conv")
        kernel, bias = layer.get_weights()
        kernel[:] = 0.0
        bias[:] = -6.0
        if i == len(sizes) - 1:
            bias[TOP_ANCHOR_TYPE * columns + 1 + TOP_CLASS] = 6.0
        layer.set_weights([kernel, bias])
    # the winner's box: a fixed offset plus a small image-dependent part. A random network amplifies int8
    # rounding (top-box IoU int8 vs float was 0.4-0.7 with the raw random box branch), so the image
    # part is scaled down: the box still moves per image, and the check measures the pipeline.
    layer = det.get_layer(f"box_{len(sizes) - 1}_conv")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 0.1, np.tile(np.array([0.5, -0.5, -1.0, -1.5], np.float32), len(bias) // 4)])
    return det


def _all_layers(layer):
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _all_layers(sub)


@pytest.fixture(scope="session")
def micro_snapshot(tmp_path_factory, microcontroller_dir) -> Path:
    return build_snapshot(microcontroller_dir, tmp_path_factory.mktemp("snapshot") / "micro")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, micro_snapshot):
    """{cfg, config, checkpoint, detector, export (CLI JSON line), saved_model}: exported once per
    session."""
    tf = pytest.importorskip("tensorflow")
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_config(micro_snapshot)
    config_path = run_dir / "config.yaml"
    config_path.write_text(dump_config(cfg))
    det = make_deterministic_detector(cfg, snapshot_images(micro_snapshot, "train"))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=det), str(run_dir / "checkpoints"), max_to_keep=1
    )
    checkpoint = manager.save()  # train's layout: checkpoints/ckpt-1 + the `checkpoint` state file
    out = run_dir / "saved_model"
    result = cli_json(
        [
            "export",
            "--config",
            str(config_path),
            "--checkpoint",
            str(run_dir / "checkpoints"),
            "--out",
            str(out),
        ]
    )
    return {
        "cfg": cfg,
        "config": config_path,
        "checkpoint": checkpoint,
        "detector": det,
        "export": result,
        "saved_model": out,
        "dir": run_dir,
    }


@pytest.fixture(scope="session")
def loaded_saved_model(tiny_run):
    tf = pytest.importorskip("tensorflow")
    return tf.saved_model.load(str(tiny_run["saved_model"]))


@pytest.fixture(scope="session")
def tiny_tflite(tiny_run, micro_snapshot):
    """The `tflite` verb's JSON line for the session's export (4 calibration images)."""
    argv = [
        "tflite",
        "--saved-model",
        str(tiny_run["saved_model"]),
        "--dataset",
        str(micro_snapshot),
        "--out",
        str(tiny_run["dir"] / "tflite"),
        "--num-calibration",
        "4",
        "--seed",
        "0",
    ]
    return cli_json(argv)


def cli_json(argv: list[str]) -> dict:
    """Run one verb in-process; its parsed JSON result line (asserts exit code 0)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(argv)
    assert code == 0, f"{argv[0]} exited {code}"
    return json.loads(buffer.getvalue().strip().splitlines()[-1])
