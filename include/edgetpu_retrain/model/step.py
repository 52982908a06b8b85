"""One training step of the detector, on one device or split over GPUs (tf.distribute).

`strategy()` is MirroredStrategy over all visible GPUs (memory growth on), else the default strategy.
`make_train_step` returns the tf.function `train` calls once per step.
"""

from __future__ import annotations

from typing import Any

from edgetpu_retrain.model.config import Config


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


def make_train_step(cfg: Config, model: Any, optimizer: Any, *, strategy: Any, step_var: Any) -> Any:
    """tf.function(images, labels) -> losses of one optimizer step over the (distributed) batch.

    One replica: one tf.function (jit_compile = train.jit_compile). Several GPUs: forward/backward per
    replica under strategy.run, gradients all-reduced by apply_gradients; losses are averaged over
    replicas, positives summed over the global batch.
    """
    import tensorflow as tf

    from edgetpu_retrain.model import losses

    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables
    jit = cfg.train.jit_compile

    def compute(images, box_t, cls_t):
        with tf.GradientTape() as tape:
            box_p, logits = model(images, training=True)
            parts = losses.detection_loss(cfg, box_p, logits, box_t, cls_t)
            scaled = parts["total"] / replicas
        return parts, tape.gradient(scaled, variables)

    compute_fn = compute if replicas == 1 else tf.function(compute, jit_compile=jit)

    def replica_step(images, labels):
        parts, grads = compute_fn(images, labels["box_targets"], labels["cls_targets"])
        optimizer.apply_gradients(zip(grads, variables, strict=False))
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
