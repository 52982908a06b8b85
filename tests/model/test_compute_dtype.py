"""train.compute_dtype: auto picks bfloat16 only on CPUs with native bf16; the bf16 fused BatchNorm
computes what Keras' BatchNorm computes under mixed_bfloat16; a bf16 training step (bf16 conv layers)
keeps a float32 loss and float32 variables, and its checkpoint restores into the plain float32 detector
export builds."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras
from tiny_models import model_only_config

from edgetpu_retrain.model import anchors, optim, step, train_kernels
from edgetpu_retrain.model import detector as model

ZEN5 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 vaes\n"
ICELAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni vaes\n"
SAPPHIRE = "flags\t\t: fpu avx512f amx_bf16 amx_tile\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"


def test_auto_is_bfloat16_only_on_a_cpu_with_native_bf16():
    assert step.native_bf16(ZEN5) and step.native_bf16(SAPPHIRE)
    assert not step.native_bf16(ICELAKE) and not step.native_bf16("")
    assert not step.native_bf16(ZEN5 + ICELAKE)  # one core without it: emulated there
    assert step.resolve_compute_dtype("auto", gpu=False, cpuinfo=ZEN5) == "bfloat16"
    assert step.resolve_compute_dtype("auto", gpu=False, cpuinfo=ICELAKE) == "float32"
    assert step.resolve_compute_dtype("auto", gpu=True, cpuinfo=ZEN5) == "float32"
    assert step.resolve_compute_dtype("float32", gpu=False, cpuinfo=ZEN5) == "float32"
    assert step.resolve_compute_dtype("bfloat16", gpu=True, cpuinfo=ICELAKE) == "bfloat16"


def _cfg(**train):
    return model_only_config(classes=2, train={"batch_size": 2, **train})


@pytest.mark.parametrize("training", [True, False])
def test_bf16_fused_batch_norm_matches_keras_bf16(training):
    shape = (4, 6, 6, 8)
    x = tf.cast(tf.random.stateless_normal(shape, [1, 2], mean=3.0, stddev=2.0), tf.bfloat16)
    upstream = tf.random.stateless_normal(shape, [3, 4])
    results = []
    for fused in (False, True):
        bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, dtype="mixed_bfloat16")
        bn.build(shape)
        bn.gamma.assign(tf.linspace(0.5, 1.5, shape[-1]))
        bn.moving_variance.assign(tf.linspace(0.5, 2.0, shape[-1]))
        if fused:
            train_kernels.use_training_kernels(keras.Sequential([bn]))
            assert type(bn) is train_kernels.FusedBatchNormalization
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=training)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        assert y.dtype == tf.bfloat16 and all(v.dtype == tf.float32 for v in bn.weights)
        grads = tape.gradient(loss, [x, *bn.trainable_variables])
        results.append([y, *grads, *bn.non_trainable_variables])
    for plain, fused in zip(*results, strict=True):
        plain, fused = (np.asarray(tf.cast(t, tf.float32)) for t in (plain, fused))
        np.testing.assert_allclose(fused, plain, rtol=2e-2, atol=5e-2)  # bf16: 8 mantissa bits


@pytest.mark.slow
def test_bf16_training_step_float32_loss_and_checkpoint_restores_into_plain_detector(tmp_path):
    cfg = _cfg(compute_dtype="bfloat16")
    keras.utils.set_random_seed(0)
    det = step.build_training_model(cfg)
    layers = list(train_kernels._all_layers(det))
    bf16 = [layer for layer in layers if layer.compute_dtype == "bfloat16"]
    assert bf16 and {type(layer) for layer in bf16} == {train_kernels.MatMulConv2D}  # the rest float32
    assert all(tuple(layer.kernel_size) == (1, 1) for layer in bf16)
    assert all(v.dtype == tf.float32 for v in det.weights)
    groups = optim.optimizer_groups(cfg, det, 10)
    for opt, group_vars in groups.values():
        opt.build(group_vars)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_step = step.make_train_step(
        cfg, groups, model=det, strategy=tf.distribute.get_strategy(), step_var=step_var
    )
    n = anchors.num_anchors(cfg)
    images = tf.random.stateless_uniform([2, 96, 96, 3], [1, 1], 0, 255)
    labels = {"box_targets": tf.zeros([2, n, 4]), "cls_targets": tf.one_hot([3, 9], n, dtype=tf.int32)}
    before = det.get_layer("box_0_conv").kernel.numpy().copy()
    parts = [train_step(images, labels) for _ in range(2)][-1]
    assert all(v.dtype == tf.float32 for v in parts.values())
    assert np.isfinite(float(parts["total"])) and float(parts["num_pos"]) == 2.0
    assert not np.array_equal(det.get_layer("box_0_conv").kernel.numpy(), before)  # it learned

    expected = [tf.cast(t, tf.float32) for t in det(images, training=False)]
    prefix = tf.train.Checkpoint(model=det).save(str(tmp_path / "ckpt"))
    plain = model.load_detector(cfg, prefix)
    assert {layer.compute_dtype for layer in train_kernels._all_layers(plain)} == {"float32"}
    for got, want in zip(plain(images, training=False), expected, strict=True):
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0.1, atol=0.15)  # bf16 vs f32 forward


def test_a_nan_weight_stops_the_checkpoint_with_the_layer_named():
    """The bf16 filter-gradient NaN hit kernel taps the forward pass never reads: the loss stayed
    finite and only the int8 conversion noticed. train refuses to checkpoint such weights."""
    from edgetpu_retrain.common import UserError
    from edgetpu_retrain.model import train

    good = keras.Variable(np.ones((3, 3), np.float32), name="good")
    bad = keras.Variable(np.array([[1.0, np.nan]], np.float32), name="extra_4_3x3s2_conv_kernel")
    assert train.nonfinite_variables([good, bad]) == [bad.path]
    cfg = _cfg(compute_dtype="bfloat16")
    with pytest.raises(
        UserError, match=r"step 7: 1 weight\(s\) are not finite \(.*extra_4_3x3s2.*compute_dtype=float32"
    ):
        train._check_finite_weights(cfg, 7, [good, bad])
    train._check_finite_weights(cfg, 7, [good])  # finite: no error
