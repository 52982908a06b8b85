"""The learning-rate schedule and the optimizer `train` uses (train.optimizer, learning_rate, ...).

Schedule: linear warm-up from 10% of the peak over train.warmup_steps, then cosine decay to 0 at the
run's last step (or constant). Weight decay applies to kernels only, not to biases or batch norm.
TensorFlow and Keras are imported inside the functions (the verb's --help stays light).
"""

from __future__ import annotations

import math
from typing import Any

from edgetpu_retrain.model.config import Config


def make_schedule(cfg: Config, total_steps: int) -> Any:
    import keras
    import tensorflow as tf

    t = cfg.train

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up from 10% of the peak, then cosine decay to 0 at total_steps (or constant)."""

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(t.learning_rate, tf.float32)
            warm = float(max(t.warmup_steps, 0))
            if t.schedule == "cosine":
                span = max(float(total_steps) - warm, 1.0)
                progress = tf.clip_by_value((step - warm) / span, 0.0, 1.0)
                lr = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
            else:
                lr = peak
            if warm > 0:
                ramp = peak * (0.1 + 0.9 * tf.minimum(step / warm, 1.0))
                lr = tf.where(step < warm, ramp, lr)
            return lr

        def get_config(self):
            return {}

    return WarmupCosine()


def make_optimizer(cfg: Config, total_steps: int) -> Any:
    import keras

    t = cfg.train
    lr = make_schedule(cfg, total_steps)
    wd = t.weight_decay or None
    if t.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=t.momentum, weight_decay=wd)
    else:
        opt = keras.optimizers.Adam(learning_rate=lr, beta_1=t.momentum, weight_decay=wd)
    if wd:
        opt.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    return opt


def current_lr(optimizer: Any) -> float:
    """The optimizer's learning rate at its current iteration (0.0 when it has none to read)."""
    lr = optimizer.learning_rate
    return float(lr.numpy()) if hasattr(lr, "numpy") else 0.0
