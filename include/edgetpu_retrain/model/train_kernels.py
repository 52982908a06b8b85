"""Faster kernels for the training model only (same maths; the exported graph does not change).

Keras 3's BatchNormalization on the TensorFlow backend is unfused: tf.nn.moments + tf.nn.batch_normalization,
whose gradient is a chain of Mul / Sum / Tile / SquaredDifference ops over every activation. On the 2-core
CPU that chain took more time than all the convolutions of a MobileNet SSD train step. FusedBatchNormV3
(and its gradient, one kernel each, oneDNN-accelerated on x86) computes the same function.

Pointwise (1x1, stride 1) convolutions are most of a MobileNet's work; as a MatMul on [B*H*W, C] their
backward pass avoids oneDNN's Conv2D backprop kernels, which are slow on MobileNet V2's narrow layers
(measured: V2 SSDLite step 1.5x faster on top of the fused BatchNorm, V1 SSD about the same).

`use_bfloat16_convs(model)` (train.compute_dtype=bfloat16) gives the pointwise (1x1, stride 1) Conv2D
layers Keras' mixed_bfloat16 policy: float32 variables, bf16 inputs and kernel in the MatMul, bf16 output.
Everything else (full convs, BatchNorm, ReLU6, depthwise convs, the loss) stays float32. Per step on the
Zen 5 CPU (op time, V1 SSD 300 / V2 SSDLite 320 px, batch 16) float32 1.43 / 1.48 s, whole model in
mixed_bfloat16 1.62 / 1.48 s (oneDNN's bf16 depthwise backward ~4x slower than float32, Eigen's bf16
ReLU6 ~2x), all Conv2D layers in bf16 1.15 / 1.27 s. Full convs are kept in float32 because oneDNN's bf16
filter gradient of a 3x3 stride-2 conv on a 1x1 map (V1 SSD's last extra layer at 160 px) returned NaN
for the taps that see only padding: the forward pass skips them (finite loss) but the NaN kernel left
that conv unquantized in the int8 model (Edge TPU pre-flight failed).
The fused BatchNorm also takes bf16 inputs (float32 statistics and moving-average updates), for a
model built under mixed_bfloat16.

`fold_frozen_batch_norm(model)` (train.fold_frozen_batch_norm, with train.backbone_bn frozen): a frozen
BatchNorm is a fixed affine map per channel, so the conv before it computes it: conv(x, kernel * s) plus a
bias, s = gamma / sqrt(moving_variance + eps). A pretrained start spent 15% of a V2 SSDLite step in the
frozen backbone's FusedBatchNorm and FusedBatchNormGrad kernels, which then do not run.

`use_training_kernels(model, ...)` switches layers of a built model to subclasses that only replace
how the output is computed (same variables, names and checkpoint keys). It is meant for the model
`train` builds: export rebuilds a plain detector from the checkpoint, so the exported graph (and its
Edge TPU op list) is the same as without it.
Same maths as Keras: normalization and moving statistics use the biased batch variance (the fused
kernel returns the Bessel-corrected one, which is undone here) and the same momentum update.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def _fusable(layer: keras.layers.BatchNormalization, inputs: tf.Tensor, mask: Any) -> bool:
    """Cases the fused kernel covers exactly: NHWC float32 or bfloat16 (mixed precision: float32
    statistics, gamma/beta), last axis, no mask/renorm/sync, scale+center."""
    axis = layer.axis if isinstance(layer.axis, int) else -1
    return (
        mask is None
        and not layer.renorm
        and not layer.synchronized
        and layer.scale
        and layer.center
        and inputs.shape.rank == 4
        and axis in (-1, 3)
        and inputs.dtype in (tf.float32, tf.bfloat16)
    )


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization computed with FusedBatchNormV3 (see the module docstring)."""

    def call(self, inputs, training=None, mask=None):
        if not _fusable(self, inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        gamma = tf.convert_to_tensor(self.gamma)
        beta = tf.convert_to_tensor(self.beta)
        if not (training and self.trainable):
            out, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance),
                epsilon=self.epsilon,
                is_training=False,
            )
            return out
        out, mean, corrected = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, is_training=True
        )
        shape = tf.shape(inputs)
        count = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = corrected * (tf.maximum(count - 1.0, 0.0) / count)  # the biased variance Keras uses
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return out


class MatMulConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D whose 1x1 / stride 1 case runs as one MatMul (see the module docstring)."""

    def convolution_op(self, inputs, kernel):
        if not _pointwise(self, inputs):
            return super().convolution_op(inputs, kernel)
        shape = tf.shape(inputs)
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        out = tf.matmul(flat, tf.reshape(kernel, [inputs.shape[-1], self.filters]))
        return tf.reshape(out, tf.concat([shape[:3], [self.filters]], 0))


def _pointwise(layer: keras.layers.Conv2D, inputs: tf.Tensor) -> bool:
    return (
        tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.data_format == "channels_last"
        and inputs.shape.rank == 4
        and inputs.shape[-1] is not None
    )


def use_training_kernels(
    model: keras.Model, *, fused_batch_norm: bool = True, pointwise_matmul: bool = True
) -> dict[str, int]:
    """Switch the plain BatchNormalization / 1x1 Conv2D layers of `model` (nested models too).

    Returns how many layers of each kind were switched. Only the computation changes: weights, names
    and checkpoint keys stay, so a checkpoint restores into a plain model.
    """
    switched = {"batch_norm": 0, "pointwise_conv": 0}
    for layer in _all_layers(model):
        if fused_batch_norm and type(layer) is keras.layers.BatchNormalization:
            layer.__class__ = FusedBatchNormalization
            switched["batch_norm"] += 1
        elif pointwise_matmul and type(layer) is keras.layers.Conv2D and _pointwise_layer(layer):
            layer.__class__ = MatMulConv2D
            switched["pointwise_conv"] += 1
    return switched


class FoldedAwayBatchNormalization(keras.layers.BatchNormalization):
    """A frozen BatchNormalization whose affine map the convolution before it computes: passes its input
    through (cast to its compute dtype, as the layer's own output is). Same variables, names and keys."""

    def call(self, inputs, training=None, mask=None):
        return tf.cast(inputs, self.compute_dtype)


class _FoldsBatchNorm:
    """Mixin: conv(x, kernel * s) + (beta - moving_mean * s), s = gamma / sqrt(moving_variance + eps):
    the convolution followed by its frozen BatchNorm as one convolution and a bias add (see
    fold_frozen_batch_norm). The kernel product is tiny; the per-activation BatchNorm ops and their
    gradient are gone."""

    _folded_bn: keras.layers.BatchNormalization
    convolution_op: Any  # Conv2D's, for the Conv2D subclasses below

    def _conv(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        return self.convolution_op(inputs, kernel)

    def call(self, inputs):
        bn = self._folded_bn
        scale = tf.math.rsqrt(tf.convert_to_tensor(bn.moving_variance) + bn.epsilon)
        if bn.scale:
            scale *= tf.convert_to_tensor(bn.gamma)
        shift = -tf.convert_to_tensor(bn.moving_mean) * scale
        if bn.center:
            shift += tf.convert_to_tensor(bn.beta)
        kernel = tf.cast(self.kernel, tf.float32)
        # output channel c of a depthwise kernel [kh, kw, in, multiplier] is (c // multiplier, c % multiplier)
        depthwise = isinstance(self, keras.layers.DepthwiseConv2D)
        kernel *= tf.reshape(scale, kernel.shape[-2:]) if depthwise else scale
        out = tf.cast(self._conv(inputs, tf.cast(kernel, inputs.dtype)), tf.float32)
        if self.use_bias:
            shift += tf.cast(self.bias, tf.float32) * scale
        return tf.nn.bias_add(out, shift)


class FoldedConv2D(_FoldsBatchNorm, keras.layers.Conv2D):
    pass


class FoldedMatMulConv2D(_FoldsBatchNorm, MatMulConv2D):
    pass


class FoldedDepthwiseConv2D(_FoldsBatchNorm, keras.layers.DepthwiseConv2D):
    def _conv(self, inputs, kernel):
        return keras.ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )


_FOLDED = {
    keras.layers.Conv2D: FoldedConv2D,
    MatMulConv2D: FoldedMatMulConv2D,
    keras.layers.DepthwiseConv2D: FoldedDepthwiseConv2D,
}


def fold_frozen_batch_norm(model: keras.Model) -> int:
    """Fold every frozen BatchNorm (trainable=False: moving statistics, fixed gamma/beta, an affine map
    per channel) into the convolution that feeds it alone; returns how many were folded.

    Training only, like use_training_kernels: the layers keep their variables, names and checkpoint
    keys (the conv reaches its BatchNorm through an untracked attribute), and export rebuilds a plain
    detector. Call it after the BatchNorm layers are frozen; a BatchNorm that is unfrozen later would
    keep passing its input through, so the model must not be trained with batch statistics after this.
    """
    folded = 0
    for layer in list(_all_layers(model)):
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.trainable:
            continue
        conv = _sole_producer(layer)
        if conv is None or layer.axis not in (-1, 3, [3], [-1]):
            continue
        object.__setattr__(conv, "_folded_bn", layer)  # untracked: no new weights or checkpoint keys
        conv.__class__ = _FOLDED[type(conv)]
        layer.__class__ = FoldedAwayBatchNormalization
        folded += 1
    return folded


def _sole_producer(bn: keras.layers.BatchNormalization) -> keras.layers.Layer | None:
    """The linear channels-last conv layer whose output feeds only `bn` (both called once), else None."""
    if len(bn._inbound_nodes) != 1 or len(bn._inbound_nodes[0].parent_nodes) != 1:
        return None
    conv = bn._inbound_nodes[0].parent_nodes[0].operation
    linear = getattr(conv, "activation", None) in (None, keras.activations.linear)
    if type(conv) not in _FOLDED or not linear or conv.data_format != "channels_last":
        return None
    if len(conv._inbound_nodes) != 1 or len(conv._outbound_nodes) != 1:
        return None
    return conv


def use_bfloat16_convs(model: keras.Model) -> int:
    """Give the pointwise Conv2D layers of `model` the mixed_bfloat16 policy (see the module
    docstring): variables stay float32 with the same names; returns how many layers."""
    convs = [layer for layer in _all_layers(model) if _pointwise_layer(layer)]
    for layer in convs:
        layer.dtype_policy = "mixed_bfloat16"
    return len(convs)


def _pointwise_layer(layer: keras.layers.Layer) -> bool:
    """A 1x1 stride-1 Conv2D, plain or already switched to MatMulConv2D."""
    return (
        type(layer) in (keras.layers.Conv2D, MatMulConv2D)
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
    )


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
