"""train_kernels: the fused BatchNorm and MatMul 1x1 convs compute what Keras' layers compute (outputs,
gradients, moving statistics), and a checkpoint of the switched model restores into a plain detector."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras
from testdata import REPO
from tiny_models import model_only_config

from edgetpu_retrain.model import detector as model
from edgetpu_retrain.model import train_kernels


def _forward_backward(layer, x, upstream, training: bool):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return [y.numpy()] + [g.numpy() for g in grads] + [v.numpy() for v in layer.non_trainable_variables]


@pytest.mark.parametrize("shape", [(4, 6, 6, 8), (3, 1, 1, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_matches_keras(shape, training):
    x = tf.random.stateless_normal(shape, [1, 2], mean=3.0, stddev=2.0)
    upstream = tf.random.stateless_normal(shape, [3, 4])
    results = []
    for fused in (False, True):
        bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
        bn.build(shape)
        bn.gamma.assign(tf.linspace(0.5, 1.5, shape[-1]))
        bn.moving_variance.assign(tf.linspace(0.5, 2.0, shape[-1]))
        if fused:
            assert train_kernels.use_training_kernels(keras.Sequential([bn]))["batch_norm"] == 1
            assert type(bn) is train_kernels.FusedBatchNormalization
        results.append(_forward_backward(bn, x, upstream, training))
    for plain, fused in zip(*results, strict=True):
        np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-4)


def test_pointwise_matmul_matches_conv2d():
    x = tf.random.stateless_normal([2, 5, 7, 6], [5, 6])
    upstream = tf.random.stateless_normal([2, 5, 7, 4], [7, 8])
    results = []
    for matmul in (False, True):
        keras.utils.set_random_seed(0)
        conv = keras.layers.Conv2D(4, 1, padding="same", bias_initializer="glorot_uniform")
        conv.build(x.shape)
        if matmul:
            assert train_kernels.use_training_kernels(keras.Sequential([conv]))["pointwise_conv"] == 1
        results.append(_forward_backward(conv, x, upstream, True))
    for plain, fast in zip(*results, strict=True):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)


def test_switched_detector_checkpoint_restores_into_plain_detector(tmp_path):
    cfg = model_only_config(classes=2)
    keras.utils.set_random_seed(0)
    det = model.build_detector(cfg)
    switched = train_kernels.use_training_kernels(det)
    assert switched["batch_norm"] > 50 and switched["pointwise_conv"] > 30
    images = tf.random.stateless_uniform([2, 96, 96, 3], [1, 1], 0, 255)
    det(images, training=True)  # moves the BatchNorm statistics away from their initial values
    _assert_restores_into_plain_detector(cfg, det, images, tmp_path)


def _assert_restores_into_plain_detector(cfg, det, images, tmp_path) -> None:
    """A checkpoint of the training model `det` loads into a plain detector (no training-kernel layer
    classes) that gives the same inference outputs."""
    expected = det(images, training=False)
    prefix = tf.train.Checkpoint(model=det).save(str(tmp_path / "ckpt"))
    plain = model.load_detector(cfg, prefix)
    switched = (
        train_kernels.FusedBatchNormalization,
        train_kernels.FoldedAwayBatchNormalization,
        train_kernels.MatMulConv2D,
        train_kernels.FoldedConv2D,
        train_kernels.FoldedDepthwiseConv2D,
    )
    assert not any(isinstance(layer, switched) for layer in model.backbone_of(plain).layers)
    for got, want in zip(plain(images, training=False), expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


_MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from edgetpu_retrain.model import anchors, config, optim, step
cfg = config.config_from_dict({
    "model": {"base": "mobilenet_v2_ssd", "num_classes": 2, "input_size": 96, "alpha": 0.35,
              "backbone_weights": None},
    "data": {"dataset_dir": "/d", "label_map": "/d/l.pbtxt", "classes": ["a", "b"],
             "tfrecords": {"train": ["/d/t"]}},
    "train": {"batch_size": 4, "backbone_lr_multiplier": 0.5, "compute_dtype": sys.argv[1],
              "backbone_bn": sys.argv[2]}})
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    det = step.build_training_model(cfg)
    groups = optim.optimizer_groups(cfg, det, 10)
    for opt, group_vars in groups.values():
        opt.build(group_vars)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
assert set(groups) == {"optimizer", "backbone_optimizer"}
train_step = step.make_train_step(cfg, groups, model=det, strategy=strategy, step_var=step_var)
n = anchors.num_anchors(cfg)
labels = {"box_targets": tf.zeros([4, n, 4]), "cls_targets": tf.one_hot(tf.range(4) * 7, n, dtype=tf.int32)}
ds = tf.data.Dataset.from_tensors((tf.random.uniform([4, 96, 96, 3], 0, 255), labels)).repeat()
batches = iter(strategy.experimental_distribute_dataset(ds))
moving = det.get_layer("mobilenet_v2_ssd_backbone").get_layer("bn_Conv1").moving_mean
for _ in range(2):
    parts = train_step(*next(batches))
assert int(step_var.numpy()) == 2 and float(parts["num_pos"]) == 4.0, parts
if sys.argv[2] == "train":  # batch statistics move the moving mean
    assert float(tf.reduce_max(tf.abs(moving))) > 0.0
else:  # frozen and folded into the conv: statistics untouched, the step still trains
    folded = det.get_layer("mobilenet_v2_ssd_backbone").get_layer("bn_Conv1")
    assert type(folded).__name__ == "FoldedAwayBatchNormalization"
    assert float(tf.reduce_max(tf.abs(moving))) == 0.0 and bool(tf.math.is_finite(parts["total"]))
print("ok", strategy.num_replicas_in_sync)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "backbone_bn"), [("float32", "train"), ("bfloat16", "frozen")])
def test_train_step_with_kernels_under_mirrored_strategy(dtype, backbone_bn):
    """The multi-GPU path (strategy.run per replica, MirroredVariables, two optimizer groups): no GPU
    here, so two logical CPU devices stand in for two GPUs; set up in a fresh process (logical devices
    must precede TF init)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO / "include")}
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED, dtype, backbone_bn],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and "ok 2" in proc.stdout, proc.stderr[-3000:]


def _random_batch_norm_statistics(det) -> None:
    """Moving statistics and gamma/beta away from their initial 0/1, so a wrong fold shows."""
    for layer in train_kernels._all_layers(det):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(tf.random.stateless_normal([n], [1, n]))
            layer.moving_variance.assign(tf.random.stateless_uniform([n], [2, n], 0.5, 2.0))
            layer.gamma.assign(tf.random.stateless_uniform([n], [3, n], 0.5, 1.5))
            layer.beta.assign(tf.random.stateless_normal([n], [4, n]))


@pytest.mark.parametrize(
    ("base", "dtype"),
    [("mobilenet_v2_ssd", "float32"), ("mobilenet_v1_ssd", "float32"), ("mobilenet_v1_ssd", "bfloat16")],
)
def test_folded_frozen_batch_norm_computes_the_same_detector(base, dtype):
    """build_training_model with a frozen backbone: folding every backbone BatchNorm into its conv gives
    the same outputs and gradients (head in inference mode: on 1x1 maps of a batch of 2, batch statistics
    would magnify rounding), the same backbone features in training mode, and the same variables."""
    from edgetpu_retrain.model import detector, step

    images = tf.random.stateless_uniform([2, 96, 96, 3], [1, 1], 0, 255)
    runs = []
    for fold in (False, True):
        cfg = model_only_config(
            base,
            classes=2,
            train={"backbone_bn": "frozen", "fold_frozen_batch_norm": fold, "compute_dtype": dtype},
        )
        keras.utils.set_random_seed(0)
        det = step.build_training_model(cfg)
        _random_batch_norm_statistics(det)
        backbone = detector.backbone_of(det)
        kinds = {type(layer).__name__ for layer in backbone.layers}
        assert ("FoldedAwayBatchNormalization" in kinds) is fold
        with tf.GradientTape() as tape:
            outputs = det(images, training=False)
            loss = sum(tf.reduce_sum(tf.cast(o, tf.float32) * 0.01) for o in tf.nest.flatten(outputs))
        grads = tape.gradient(loss, det.trainable_variables)
        features = backbone(images / 127.5 - 1.0, training=True)
        runs.append(
            (
                [v.path for v in det.weights],
                [o.numpy() for o in tf.nest.flatten(outputs)],
                [g.numpy() for g in grads],
                [f.numpy() for f in tf.nest.flatten(features)],
            )
        )
    (names, outputs, grads, features), (names_f, outputs_f, grads_f, features_f) = runs
    assert names_f == names
    tol = 2e-2 if dtype == "bfloat16" else 1e-5  # bf16: the kernel x scale product is rounded once more
    for want, got in zip(outputs + features, outputs_f + features_f, strict=True):
        np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())
    scale = max(np.abs(g).max() for g in grads)
    for want, got in zip(grads, grads_f, strict=True):
        np.testing.assert_allclose(got, want, atol=tol * scale)


def test_fold_skips_trainable_and_shared_batch_norm():
    """Only a frozen BatchNorm fed by a linear conv whose output nothing else reads is folded."""
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="a")(inputs)
    a_bn = keras.layers.BatchNormalization(name="a_bn")(a)  # frozen below: folded
    b = keras.layers.Conv2D(4, 1, use_bias=False, name="b")(a_bn)
    b_bn = keras.layers.BatchNormalization(name="b_bn")(b)  # frozen, but b's output is also read below
    c = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="c")(b_bn + b)
    c_bn = keras.layers.BatchNormalization(name="c_bn")(c)  # frozen, after a conv with an activation
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="d")(c_bn)
    d_bn = keras.layers.BatchNormalization(name="d_bn")(d)  # trainable: batch statistics, kept
    net = keras.Model(inputs, d_bn)
    for name in ("a_bn", "b_bn", "c_bn"):
        net.get_layer(name).trainable = False
    x = tf.random.stateless_normal([2, 8, 8, 3], [1, 2])
    _random_batch_norm_statistics(net)
    want = net(x, training=False).numpy()
    assert train_kernels.fold_frozen_batch_norm(net) == 1
    assert type(net.get_layer("a")) is train_kernels.FoldedConv2D
    assert [type(net.get_layer(n)) for n in ("b", "c", "d")] == [
        keras.layers.Conv2D,
        keras.layers.DepthwiseConv2D,
        keras.layers.DepthwiseConv2D,
    ]
    np.testing.assert_allclose(net(x, training=False).numpy(), want, rtol=1e-5, atol=1e-5)


def test_folded_detector_checkpoint_restores_into_plain_detector(tmp_path):
    from edgetpu_retrain.model import step

    cfg = model_only_config(classes=2, train={"backbone_bn": "frozen", "compute_dtype": "float32"})
    keras.utils.set_random_seed(0)
    det = step.build_training_model(cfg)
    _random_batch_norm_statistics(det)
    images = tf.random.stateless_uniform([2, 96, 96, 3], [1, 1], 0, 255)
    _assert_restores_into_plain_detector(cfg, det, images, tmp_path)
