"""render-config / load_config: round trip, determinism and validation messages naming the key path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgetpu_retrain import cli
from edgetpu_retrain.common import UserError
from edgetpu_retrain.model import config


@pytest.fixture()
def dataset_dir(tmp_path: Path) -> Path:
    """A minimal dataset snapshot: what render-config reads from build-dataset's output."""
    root = tmp_path / "ds"
    (root / "tfrecords").mkdir(parents=True)
    for name in (
        "train.tfrecord-00000-of-00002",
        "train.tfrecord-00001-of-00002",
        "val.tfrecord-00000-of-00001",
    ):
        (root / "tfrecords" / name).write_bytes(b"")
    (root / "label_map.pbtxt").write_text('item {\n  id: 1\n  name: "RBC"\n}\n')
    manifest = {
        "version": 1,
        "label_map": "label_map.pbtxt",
        "num_classes": 3,
        "classes": [{"id": 2, "name": "WBC"}, {"id": 1, "name": "RBC"}, {"id": 3, "name": "Platelets"}],
        "tfrecords": {
            "train": ["tfrecords/train.tfrecord-00000-of-00002", "tfrecords/train.tfrecord-00001-of-00002"],
            "val": ["tfrecords/val.tfrecord-00000-of-00001"],
            "test": [],
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def render(dataset_dir: Path, out: Path, *sets: str, base: str = "mobilenet_v2_ssd") -> int:
    argv = ["render-config", "--dataset", str(dataset_dir), "--base-model", base, "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    return cli.main(argv)


ROUND_TRIP_SETS = (
    "model.input_size=256",
    "train.steps=1234",
    "model.backbone_weights=null",
    "train.augmentation.flip=false",
    "train.schedule=constant",
    "model.head=ssd",
)


def test_render_round_trip(dataset_dir, tmp_path, capsys):
    out = tmp_path / "run" / "config.yaml"
    assert render(dataset_dir, out, *ROUND_TRIP_SETS) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == {
        "config": str(out.resolve()),
        "base_model": "mobilenet_v2_ssd",
        "num_classes": 3,
        "input_size": 256,
        "head": "ssd",
        "backbone_weights": None,
        "backbone_weights_warning": None,
    }
    text = out.read_text()
    assert text.count("\n# ") >= 4 and "# NMS IoU threshold" in text  # commented, readable
    cfg = config.load_config(out)
    assert cfg.model.base == "mobilenet_v2_ssd" and cfg.model.head == "ssd" and cfg.model.input_size == 256
    assert cfg.model.backbone_weights is None and cfg.model.num_classes == 3 and cfg.model.bn_momentum == 0.9
    assert (
        cfg.train.steps == 1234 and cfg.train.schedule == "constant" and cfg.train.augmentation.flip is False
    )
    assert cfg.data.classes == ("RBC", "WBC", "Platelets")  # label-map id order
    assert cfg.data.tfrecords["train"][0] == str(
        (dataset_dir / "tfrecords/train.tfrecord-00000-of-00002").resolve()
    )
    assert cfg.data.tfrecords["test"] == ()
    # dump(load(x)) == x and re-rendering gives the same bytes (deterministic)
    assert config.dump_config(cfg).splitlines()[-10:] == text.splitlines()[-10:]
    assert config.config_from_dict(yaml.safe_load(text)) == cfg
    before = out.read_bytes()
    assert render(dataset_dir, out, *ROUND_TRIP_SETS) == 0
    assert out.read_bytes() == before


def test_templates_for_both_bases(dataset_dir, tmp_path):
    for base, head in (("mobilenet_v1_ssd", "ssd"), ("mobilenet_v2_ssd", "ssdlite")):
        text, cfg = config.render_config(dataset_dir, base)
        assert cfg.model.base == base and cfg.model.head == head and cfg.model.backbone_weights == "bundled"
        assert cfg.train.loss == "focal" and cfg.postprocess.max_detections == 20
        assert cfg.train.warmup_steps == "auto" and cfg.train.backbone_bn == "auto"
        assert cfg.train.backbone_lr_multiplier == "auto" and cfg.train.optimizer == "adamw"
        assert "warmup_steps: auto" in text and "backbone_bn: auto" in text


def test_recipe_keys_round_trip(dataset_dir, tmp_path):
    sets = [
        "train.warmup_steps=30",
        "train.backbone_bn=frozen",
        "train.freeze_backbone_steps=50",
        "train.backbone_lr_multiplier=0.1",
        "train.optimizer=adamw",
    ]
    text, cfg = config.render_config(dataset_dir, "mobilenet_v2_ssd", config.parse_set(sets))
    assert (cfg.train.warmup_steps, cfg.train.backbone_bn, cfg.train.freeze_backbone_steps) == (
        30,
        "frozen",
        50,
    )
    assert cfg.train.backbone_lr_multiplier == 0.1 and cfg.train.optimizer == "adamw"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert config.load_config(path) == cfg
    assert "an integer >= 0 or auto" in text


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("model.head=yolo", ["'model.head'", "ssd, ssdlite"]),
        ("model.input_size=abc", ["'model.input_size'", "integer"]),
        ("model.input_size=8", ["'model.input_size'", "[32, 1024]"]),
        ("train.steps=0", ["'train.steps'", ">= 1"]),
        ("train.learning_rate=0", ["'train.learning_rate'", "> 0"]),
        ("train.batch_size=2.5", ["'train.batch_size'", "integer"]),
        ("train.augmentation.flip=maybe", ["'train.augmentation.flip'", "true/false"]),
        (
            "train.augmentation.flp=true",
            ["'train.augmentation.flp'", "did you mean 'flip'", "flip, scale_crop"],
        ),
        ("train.schedule=step", ["'train.schedule'", "cosine, constant"]),
        ("train.optimizer=rmsprop", ["'train.optimizer'", "sgd, adam"]),
        ("model.backbone_weights=weights.txt", ["'model.backbone_weights'", "imagenet"]),
        ("modle.head=ssd", ["'modle'", "did you mean 'model'"]),
        ("train.augmentation=1", ["'train.augmentation' is a section", "flip"]),
        ("model.num_classes=7", ["'model.num_classes'", "'data.classes'"]),
        ("train.unmatched_threshold=0.7", ["'train.unmatched_threshold'"]),
        ("model.score_converter=softmax", ["'train.loss' focal", "model.score_converter=sigmoid"]),
        ("train.warmup_steps=some", ["'train.warmup_steps'", "an integer >= 0 or auto"]),
        ("train.warmup_steps=-5", ["'train.warmup_steps'", "an integer >= 0 or auto"]),
        ("train.warmup_steps=2.5", ["'train.warmup_steps'", "an integer >= 0 or auto"]),
        ("train.backbone_bn=half", ["'train.backbone_bn'", "auto, frozen, train"]),
        ("train.freeze_backbone_steps=-1", ["'train.freeze_backbone_steps'", ">= 0"]),
        ("train.backbone_lr_multiplier=-0.5", ["'train.backbone_lr_multiplier'", "a number >= 0.0 or auto"]),
        ("train.backbone_lr_multiplier=fast", ["'train.backbone_lr_multiplier'", "a number >= 0.0 or auto"]),
    ],
)
def test_set_errors_name_the_key(dataset_dir, tmp_path, capsys, item, expected):
    out = tmp_path / "config.yaml"
    assert render(dataset_dir, out, item) == 2
    err = capsys.readouterr().err
    for piece in expected:
        assert piece in err, (piece, err)
    assert not out.exists()


def test_load_rejects_unknown_and_bad_keys(dataset_dir, tmp_path):
    text, _ = config.render_config(dataset_dir, "mobilenet_v2_ssd")
    raw = yaml.safe_load(text)
    raw["train"]["stepz"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"unknown key 'train.stepz'.*did you mean 'steps'"):
        config.load_config(bad)
    raw["train"].pop("stepz")
    raw["postprocess"]["iou_threshold"] = 1.5
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"'postprocess.iou_threshold'.*\[0.0, 1.0\]"):
        config.load_config(bad)
    raw["postprocess"]["iou_threshold"] = 0.5
    del raw["model"]["base"]
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"missing key 'model.base'"):
        config.load_config(bad)
    with pytest.raises(UserError, match="config file not found"):
        config.load_config(tmp_path / "nope.yaml")


def test_missing_manifest_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert render(tmp_path / "empty", tmp_path / "c.yaml") == 2
    assert "manifest.json" in capsys.readouterr().err
