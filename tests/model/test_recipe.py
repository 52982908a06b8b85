"""The fine-tuning recipe's training-only options (train.backbone_bn, freeze_backbone_steps,
backbone_lr_multiplier, warmup_steps: auto): real `train` runs of a tiny detector (MobileNet V1 alpha
0.25, 96x96) on 8 real BCCD photos (tests/fixtures) built with the real validate + build-dataset verbs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402
from testdata import TINY_TRAIN_SETS, copy_labelimg_folder, train_only_snapshot

from edgetpu_retrain import cli
from edgetpu_retrain.model import config, optim, step, train
from edgetpu_retrain.model import detector as model
from edgetpu_retrain.model.detector import backbone_of

SETS = [
    *TINY_TRAIN_SETS,
    "train.learning_rate=0.01",
    "train.warmup_steps=0",
    "train.schedule=constant",
    "train.checkpoint_every=100",
]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, bccd_dir) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    images = copy_labelimg_folder(bccd_dir, root / "labelimg", first=8)
    return train_only_snapshot(images, root)


def _cfg(dataset_dir: Path, *sets: str):
    return config.render_config(dataset_dir, "mobilenet_v1_ssd", config.parse_set(SETS + list(sets)))[1]


def _initial(cfg):
    """The detector exactly as `train` initializes it (same seed, same build)."""
    keras.utils.set_random_seed(cfg.train.seed)
    return model.build_detector(cfg)


def _values(variables) -> dict[str, np.ndarray]:
    return {v.path: v.numpy().copy() for v in variables}


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> list[str]:
    return [k for k in before if not np.array_equal(before[k], after[k])]


def _backbone_bn(det) -> list:
    return [
        v
        for layer in backbone_of(det).layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta)
    ]


def _trained(cfg, out: Path, steps: int):
    train.train(cfg, out, steps=steps)
    return model.load_detector(cfg, out)


def test_warmup_auto_scales_with_the_run_and_a_long_set_one_warns(caplog):
    auto = config.TrainConfig()
    assert auto.warmup_steps == "auto"
    assert [optim.resolve_warmup(auto, n) for n in (10, 210, 1000, 5000)] == [1, 21, 100, 200]
    set_200 = dataclasses.replace(auto, warmup_steps=200)
    with caplog.at_level(logging.WARNING, logger="edgetpu_retrain"):
        assert optim.resolve_warmup(set_200, 5000) == 200
        assert not caplog.records
        assert optim.resolve_warmup(set_200, 210) == 200
    assert "train.warmup_steps=200 is 95% of the 210 training steps" in caplog.text
    assert "train.warmup_steps=auto" in caplog.text


def test_frozen_backbone_bn_keeps_its_statistics(dataset_dir, tmp_path):
    cfg = _cfg(dataset_dir, "train.backbone_bn=frozen")
    assert step.backbone_bn_frozen(cfg)
    assert not step.backbone_bn_frozen(_cfg(dataset_dir))  # auto + random init: batch statistics
    assert step.backbone_bn_frozen(
        dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, backbone_bn="auto"),
            model=dataclasses.replace(cfg.model, backbone_weights="bundled"),
        )
    )
    init = _initial(cfg)
    before_bn, before_all = _values(_backbone_bn(init)), _values(init.weights)
    det = _trained(cfg, tmp_path / "frozen", 4)
    assert not _changed(before_bn, _values(_backbone_bn(det)))
    changed = set(_changed(before_all, _values(det.weights)))
    backbone = {v.path for v in backbone_of(init).weights}
    assert any(k.endswith("kernel") for k in changed & backbone)  # the backbone convs still train
    assert any(k.endswith("moving_mean") for k in changed - backbone)  # head BN is not frozen

    # the same run with batch statistics moves them (the check above is not vacuous)
    trained = _trained(_cfg(dataset_dir, "train.backbone_bn=train"), tmp_path / "train", 4)
    assert _changed(before_bn, _values(_backbone_bn(trained)))


def test_freeze_backbone_steps_hold_the_backbone_then_release_it(dataset_dir, tmp_path):
    cfg = _cfg(dataset_dir, "train.freeze_backbone_steps=3", "train.backbone_bn=frozen")
    init = _initial(cfg)
    backbone = _values(backbone_of(init).weights)
    head = _values([w for w in init.weights if w.path not in backbone])
    det = _trained(cfg, tmp_path / "run", 3)
    assert not _changed(backbone, _values(backbone_of(det).weights))
    assert _changed(head, _values([w for w in det.weights if w.path in head]))
    det = _trained(cfg, tmp_path / "run", 5)  # resumed: steps 4-5 update the backbone
    assert _changed(backbone, _values(backbone_of(det).weights))


def test_backbone_lr_multiplier_zero_fixes_the_backbone(dataset_dir, tmp_path):
    cfg = _cfg(
        dataset_dir, "train.backbone_lr_multiplier=0", "train.optimizer=sgd", "train.weight_decay=0.01"
    )
    backbone = _values(backbone_of(_initial(cfg)).trainable_weights)  # (BN statistics still move)
    assert optim.backbone_lr_multiplier(cfg) == 0.0
    auto = _cfg(dataset_dir)
    assert (
        auto.train.backbone_lr_multiplier == "auto" and optim.backbone_lr_multiplier(auto) == 1.0
    )  # random init
    pretrained = dataclasses.replace(auto, model=dataclasses.replace(auto.model, backbone_weights="bundled"))
    assert optim.backbone_lr_multiplier(pretrained) == 0.1
    groups = optim.optimizer_groups(cfg, _initial(cfg), 10)
    assert set(groups) == {"optimizer", "backbone_optimizer"}
    trained = backbone_of(_trained(cfg, tmp_path / "run", 3))
    assert not _changed(backbone, _values(trained.trainable_weights))


def test_make_demo_config_trains_from_bundled_weights(tmp_path):
    """The Makefile's DEMO_CONF renders a valid config whose backbone has bundled ImageNet weights (the
    demo's accuracy/time figures are measured by benchmarks/bench_accuracy.py, not here)."""
    import json
    import subprocess

    from testdata import REPO

    from edgetpu_retrain.model.pretrained import weights_note

    rule = "demo-conf: ; @printf '%s\\n' '$(DEMO_CONF)'"
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", rule, "demo-conf"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    conf = json.loads(done.stdout)
    assert conf["backbone_weights"] == "bundled"
    assert cli.main(["demo-data", "--out", str(tmp_path / "drop"), "--images", "12"]) == 0
    assert (
        cli.main(["validate", "--images", str(tmp_path / "drop"), "--out", str(tmp_path / "validated")]) == 0
    )
    assert (
        cli.main(
            [
                "build-dataset",
                "--validated",
                str(tmp_path / "validated"),
                "--out",
                str(tmp_path / "ds"),
                "--split",
                conf["split"],
                "--workers",
                "1",
            ]
        )
        == 0
    )
    sets = [
        ("model.input_size", conf["input_size"]),
        ("train.steps", conf["steps"]),
        ("train.batch_size", conf["batch_size"]),
        ("model.backbone_weights", conf["backbone_weights"]),
        *conf["config_overrides"].items(),
    ]
    _, cfg = config.render_config(tmp_path / "ds", conf["base_model"], sets)
    assert weights_note(cfg.model.base, cfg.model.alpha, cfg.model.backbone_weights) is None
    overrides = conf["config_overrides"]
    assert step.backbone_bn_frozen(cfg)
    assert optim.backbone_lr_multiplier(cfg) == overrides.get("train.backbone_lr_multiplier", 0.1)
    assert (
        cfg.train.optimizer == "adamw"
        and optim.resolve_warmup(cfg.train, cfg.train.steps) < cfg.train.steps // 5
    )
