"""The model `train` optimizes and one training step of it, on one device or split over GPUs.

`strategy()` is MirroredStrategy over all visible GPUs (memory growth on), else the default strategy.
`build_training_model` is build_detector plus training-only settings that leave the variables, checkpoint
keys and exported graph unchanged: faster kernels (`train_kernels`: fused BatchNorm, 1x1 convs as MatMul;
train.fused_batch_norm / pointwise_matmul) and train.backbone_bn (the backbone's BatchNorm in inference
mode) and train.compute_dtype (bfloat16: the 1x1 conv layers, as MatMuls, compute in bf16 with float32
variables, on CPUs with native bf16 dot products, where they run ~2x float32).
`make_train_step` returns the tf.function `train` calls once per step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetpu_retrain.common import log
from edgetpu_retrain.model.config import Config

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def strategy() -> Any:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError):
                pass
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def native_bf16(cpuinfo: str) -> bool:
    """True when every `flags` line of /proc/cpuinfo text names a native bf16 dot product (AVX512-BF16,
    AMX-BF16): there TF's oneDNN bf16 matmul/conv run ~2x float32; without it bf16 is emulated (slower)."""
    flags = [line.partition(":")[2].split() for line in cpuinfo.splitlines() if line.startswith("flags")]
    return bool(flags) and all(NATIVE_BF16_FLAGS & set(words) for words in flags)


def resolve_compute_dtype(mode: str, *, gpu: bool, cpuinfo: str) -> str:
    """train.compute_dtype resolved: auto = bfloat16 on a CPU with native bf16 (native_bf16), else
    float32 (GPUs keep float32)."""
    if mode != "auto":
        return mode
    return "bfloat16" if not gpu and native_bf16(cpuinfo) else "float32"


def compute_dtype(cfg: Config) -> str:
    """train.compute_dtype for this machine (reads /proc/cpuinfo; no file = no native bf16)."""
    import tensorflow as tf

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    gpu = bool(tf.config.list_physical_devices("GPU"))
    return resolve_compute_dtype(cfg.train.compute_dtype, gpu=gpu, cpuinfo=cpuinfo)


def backbone_bn_frozen(cfg: Config) -> bool:
    """train.backbone_bn resolved: auto = frozen for a pretrained backbone, batch statistics otherwise."""
    mode = cfg.train.backbone_bn
    if mode == "auto":
        return cfg.model.backbone_weights is not None
    return mode == "frozen"


def freeze_backbone_bn(model: Any) -> int:
    """Put the backbone's BatchNorm layers in inference mode for training (Keras 3: trainable=False
    uses the moving statistics and fixes gamma/beta). Returns the number of layers frozen."""
    import keras

    from edgetpu_retrain.model.detector import backbone_of

    frozen = 0
    for layer in backbone_of(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            frozen += 1
    return frozen


def build_training_model(cfg: Config, *, dtype: str | None = None) -> Any:
    """The detector `train` optimizes: build_detector + the training-only settings of the config.

    dtype: the resolved compute dtype (default compute_dtype(cfg)); bfloat16 gives the 1x1 Conv2D layers
    Keras' mixed_bfloat16 policy (train_kernels.use_bfloat16_convs): the same float32 variables (names,
    checkpoint keys), bf16 matmuls; full and depthwise convs, BatchNorm, ReLU6 and the loss stay float32.
    """
    from edgetpu_retrain.model import detector, train_kernels

    dtype = dtype or compute_dtype(cfg)
    model = detector.build_detector(cfg)
    convs = train_kernels.use_bfloat16_convs(model) if dtype == "bfloat16" else 0
    log.info(
        "training compute dtype %s (train.compute_dtype=%s): %d 1x1 conv layers in bf16",
        dtype,
        cfg.train.compute_dtype,
        convs,
    )
    switched = train_kernels.use_training_kernels(
        model, fused_batch_norm=cfg.train.fused_batch_norm, pointwise_matmul=cfg.train.pointwise_matmul
    )
    log.info(
        "training kernels: %d fused BatchNorm, %d pointwise convs as MatMul",
        switched["batch_norm"],
        switched["pointwise_conv"],
    )
    if backbone_bn_frozen(cfg):
        frozen = freeze_backbone_bn(model)
        folded = train_kernels.fold_frozen_batch_norm(model) if cfg.train.fold_frozen_batch_norm else 0
        log.info(
            "backbone batch norm frozen (inference mode) in %d layers (train.backbone_bn=%s), %d folded "
            "into their convs (train.fold_frozen_batch_norm=%s)",
            frozen,
            cfg.train.backbone_bn,
            folded,
            cfg.train.fold_frozen_batch_norm,
        )
    return model


def make_train_step(
    cfg: Config, groups: dict[str, tuple[Any, list[Any]]], *, model: Any, strategy: Any, step_var: Any
) -> Any:
    """tf.function(images, labels) -> losses of one optimizer step over the (distributed) batch.

    groups: {name: (optimizer, its variables)} (optim.optimizer_groups); each optimizer applies its
    slice of the gradients. One replica: one tf.function (jit_compile = train.jit_compile). Several
    GPUs: forward/backward per replica under strategy.run, gradients all-reduced by apply_gradients;
    losses are averaged over replicas, positives summed over the global batch.
    """
    import tensorflow as tf

    from edgetpu_retrain.model import losses

    replicas = strategy.num_replicas_in_sync
    variables = [v for _, group_vars in groups.values() for v in group_vars]
    jit = cfg.train.jit_compile

    def apply(grads):
        offset = 0
        for opt, group_vars in groups.values():
            opt.apply_gradients(zip(grads[offset : offset + len(group_vars)], group_vars, strict=True))
            offset += len(group_vars)

    def compute(images, box_t, cls_t):
        with tf.GradientTape() as tape:
            box_p, logits = (tf.cast(t, tf.float32) for t in model(images, training=True))  # loss in f32
            parts = losses.detection_loss(cfg, box_p, logits, box_targets=box_t, cls_targets=cls_t)
            scaled = parts["total"] / replicas
        return parts, tape.gradient(scaled, variables)

    compute_fn = compute if replicas == 1 else tf.function(compute, jit_compile=jit)

    def replica_step(images, labels):
        parts, grads = compute_fn(images, labels["box_targets"], labels["cls_targets"])
        apply(grads)
        return parts

    if replicas == 1:
        replica_step = tf.function(replica_step, jit_compile=jit)

    @tf.function
    def train_step(images, labels):
        parts = strategy.run(replica_step, args=(images, labels))
        step_var.assign_add(1)
        return {
            k: strategy.reduce(
                tf.distribute.ReduceOp.SUM if k == "num_pos" else tf.distribute.ReduceOp.MEAN, v, axis=None
            )
            for k, v in parts.items()
        }

    return train_step
