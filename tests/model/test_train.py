"""train / inputs / augment / losses on a tiny TFRecord dataset built from real microcontroller images
with the real `validate` + `build-dataset` verbs. Models are tiny (MobileNet V1 alpha 0.25, 96x96)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402
from testdata import REPO, TINY_TRAIN_SETS, copy_labelimg_folder, train_only_snapshot  # noqa: E402

from edgetpu_retrain.model import (
    augment,  # noqa: E402
    boxes,  # noqa: E402
    config,  # noqa: E402
    inputs,  # noqa: E402
    losses,  # noqa: E402
    train,  # noqa: E402
)
from edgetpu_retrain.model import detector as model  # noqa: E402

SETS = [
    "model.base=mobilenet_v1_ssd",
    "model.head=ssd",
    *TINY_TRAIN_SETS,
    "train.learning_rate=0.002",
    "train.warmup_steps=0",
    "train.schedule=constant",
    "train.checkpoint_every=3",
]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, microcontroller_dir) -> Path:
    root = tmp_path_factory.mktemp("train")
    images = copy_labelimg_folder(microcontroller_dir, root / "labelimg", first=8)
    return train_only_snapshot(images, root, shards=2)


@pytest.fixture(scope="module")
def cfg_path(dataset_dir) -> Path:
    text, _ = config.render_config(
        dataset_dir, "mobilenet_v1_ssd", config.parse_set(SETS + ["train.steps=200"])
    )
    path = dataset_dir.parent / "config.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cfg(cfg_path):
    return config.load_config(cfg_path)


def test_flip_twice_is_identity_and_crop_keeps_boxes_inside():
    image = tf.random.uniform([40, 60, 3], 0, 255)
    bx = tf.constant([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    img2, bx2 = augment.flip(*augment.flip(image, bx))
    np.testing.assert_array_equal(img2.numpy(), image.numpy())
    np.testing.assert_allclose(bx2.numpy(), bx.numpy(), atol=1e-6)
    np.testing.assert_allclose(augment.flip_boxes(bx).numpy()[0], [0.1, 0.1, 0.5, 0.8], atol=1e-6)
    # crop to the right half: box 0 keeps 4/7 of its area (kept, clipped), a box on the left is dropped
    crop = tf.constant([0.0, 0.5, 1.0, 1.0])
    b3 = tf.constant([[0.1, 0.2, 0.5, 0.9], [0.2, 0.0, 0.4, 0.45], [0.2, 0.4, 0.4, 0.6]])
    out, lab = augment.crop_boxes(b3, tf.constant([1, 2, 3]), crop, min_visible=0.5)
    assert lab.numpy().tolist() == [1, 0, 3]
    np.testing.assert_allclose(out.numpy()[0], [0.1, 0.0, 0.5, 0.8], atol=1e-6)
    np.testing.assert_allclose(out.numpy()[2], [0.2, 0.0, 0.4, 0.2], atol=1e-6)


def test_augment_on_real_images_keeps_boxes_consistent(cfg):
    files = inputs.train_files(cfg)
    aug = cfg.train.augmentation
    for i, serialized in enumerate(tf.data.TFRecordDataset(files).take(4)):
        image, bx, lab = inputs.parse_record(serialized)
        assert image.dtype == tf.uint8 and bx.shape[0] == lab.shape[0] > 0
        for k in range(3):
            out, b2, l2 = augment.augment(
                image, bx, lab, seed=tf.constant([k, i], tf.int64), aug=aug, size=96
            )
            assert (
                out.shape == (96, 96, 3)
                and float(tf.reduce_min(out)) >= 0
                and float(tf.reduce_max(out)) <= 255
            )
            b2, l2 = b2.numpy(), l2.numpy()
            assert np.all((b2 >= 0) & (b2 <= 1))
            kept = l2 > 0
            assert set(l2[kept]) <= set(lab.numpy())
            assert np.all(b2[kept, 2] > b2[kept, 0]) and np.all(b2[kept, 3] > b2[kept, 1])
        # same seed -> same result (stateless)
        a1 = augment.augment(image, bx, lab, seed=tf.constant([7, i], tf.int64), aug=aug, size=96)
        a2 = augment.augment(image, bx, lab, seed=tf.constant([7, i], tf.int64), aug=aug, size=96)
        np.testing.assert_array_equal(a1[0].numpy(), a2[0].numpy())


def test_pipeline_shapes_determinism_and_resume_offset(cfg):
    anchors = model.anchors(cfg)
    first = list(inputs.train_dataset(cfg, anchors, with_boxes=True).take(2))
    again = list(inputs.train_dataset(cfg, anchors, with_boxes=True).take(2))
    resumed = next(iter(inputs.train_dataset(cfg, anchors, start_step=1, with_boxes=True)))
    images, labels = first[0]
    assert images.shape == (2, 96, 96, 3) and images.dtype == tf.float32
    assert labels["box_targets"].shape == (2, len(anchors), 4) and labels["cls_targets"].shape == (
        2,
        len(anchors),
    )
    assert labels["boxes"].shape == (2, 8, 4)
    np.testing.assert_array_equal(images.numpy(), again[0][0].numpy())
    np.testing.assert_array_equal(resumed[0].numpy(), first[1][0].numpy())  # resume continues the stream
    cls = labels["cls_targets"].numpy()
    # every real box got at least one positive anchor (force match) with its own class
    for b in range(2):
        real = labels["labels"].numpy()[b]
        assert set(cls[b][cls[b] > 0]) == set(real[real > 0])
    assert set(np.unique(cls)) <= {boxes.IGNORE, 0, 1, 2, 3, 4}


@pytest.mark.slow
def test_loss_finite_and_decreases_on_one_batch(cfg):
    keras.utils.set_random_seed(0)
    anchors = model.anchors(cfg)
    images, labels = next(iter(inputs.train_dataset(cfg, anchors)))
    det = model.build_detector(cfg)
    opt = train.make_optimizer(cfg, 100)
    variables = det.trainable_variables

    # hard-negative mining loss (softmax and sigmoid): finite, with finite gradients
    for converter in ("softmax", "sigmoid"):
        hcfg = dataclasses.replace(
            cfg,
            train=dataclasses.replace(cfg.train, loss="hard_negative"),
            model=dataclasses.replace(cfg.model, score_converter=converter),
        )
        with tf.GradientTape() as tape:
            parts = losses.detection_loss(
                hcfg,
                *det(images, training=False),
                box_targets=labels["box_targets"],
                cls_targets=labels["cls_targets"],
            )
        grads = tape.gradient(parts["total"], variables)
        assert np.isfinite(parts["total"].numpy()) and parts["class"].numpy() > 0
        assert all(np.all(np.isfinite(g.numpy())) for g in grads if g is not None)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            parts = losses.detection_loss(
                cfg,
                *det(images, training=True),
                box_targets=labels["box_targets"],
                cls_targets=labels["cls_targets"],
            )
        opt.apply_gradients(zip(tape.gradient(parts["total"], variables), variables, strict=False))
        return parts

    history = [{k: float(v) for k, v in step().items()} for _ in range(25)]
    assert all(np.isfinite(h["total"]) for h in history)
    assert history[0]["num_pos"] > 0
    assert np.mean([h["total"] for h in history[-3:]]) < 0.6 * history[0]["total"], history


def _train_cmd(cfg_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edgetpu_retrain",
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_train_killed_midway_resumes_from_saved_step(cfg_path, cfg, tmp_path, caplog):
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO / "include")}
    proc = subprocess.Popen(
        _train_cmd(cfg_path, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    state = out / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 90
    try:
        while not state.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written within 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # a real kill, mid-way (target is 200 steps)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL
    saved = tf.train.latest_checkpoint(str(out / "checkpoints"))
    saved_step = int(saved.rsplit("-", 1)[1])
    assert 3 <= saved_step < 200 and saved_step % 3 == 0, stderr[-2000:]
    assert not (out / train.RESULT_FILE).exists()

    # run again (shorter target to keep the test fast): it continues from the saved step
    caplog.set_level("INFO", logger="edgetpu_retrain")
    target = saved_step + 2
    result = train.train(cfg, out, config_path=cfg_path, steps=target)
    assert f"resuming from {saved} at step {saved_step}" in caplog.text
    assert f"step {saved_step + 1}/{target}" in caplog.text and f"step 1/{target}" not in caplog.text
    assert result["steps_done"] == target and result["checkpoint"] == str(
        out / "checkpoints" / f"ckpt-{target}"
    )
    assert all(np.isfinite(result[k]) for k in ("loss", "box_loss", "class_loss"))
    assert result["out_dir"] == str(out) and result["config"] == str(cfg_path)
    assert any((out / "tensorboard").iterdir())
    logged = [json.loads(line)["step"] for line in (out / train.METRICS_FILE).read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == target  # each step once, after a kill + resume

    # already at the target: does nothing, same JSON (also through the CLI)
    caplog.clear()
    assert train.train(cfg, out, config_path=cfg_path, steps=target) == result
    assert "nothing to train" in caplog.text
    assert json.loads((out / train.RESULT_FILE).read_text()) == result

    # a different model config must not silently resume from these checkpoints
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head="ssdlite"))
    with pytest.raises(train.UserError, match="different model config"):
        train.train(other, out, steps=target + 1)


def test_metrics_log_drops_what_a_killed_run_logged_past_its_checkpoint(tmp_path):
    lines = [train.metrics_line(s, {"total": 1.5, "box": 1.0, "class": 0.5}, lr=0.01, images_per_s=3.0)
             for s in (2, 4, 6)]  # fmt: skip
    (tmp_path / train.METRICS_FILE).write_text("".join(lines) + '{"step": 8, "lo')  # cut by the kill
    with train.open_metrics_log(tmp_path, 4) as log:
        log.write(lines[2])
    rows = [json.loads(line) for line in (tmp_path / train.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert rows[0] == {
        "step": 2,
        "loss": 1.5,
        "box_loss": 1.0,
        "cls_loss": 0.5,
        "lr": 0.01,
        "images_per_s": 3.0,
    }
