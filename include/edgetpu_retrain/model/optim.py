"""The learning-rate schedules and optimizers `train` uses (train.optimizer, learning_rate, ...).

Schedule: linear warm-up from 10% of the peak over train.warmup_steps (auto: min(200, 10% of the run),
so a short run still decays), then cosine decay to 0 at the run's last step (or constant). Weight decay
applies to kernels only, not to biases or batch norm. The backbone can get its own optimizer
(`optimizer_groups`): its schedule scaled by train.backbone_lr_multiplier and held at 0 for
train.freeze_backbone_steps. The run's length is a `ScheduleLength` (total and warm-up steps in
tf.Variables, shared by every optimizer), so a time budget (`budget`) can re-size the schedule while it
trains. TensorFlow and Keras are imported inside the functions (--help stays light).
"""

from __future__ import annotations

import math
from typing import Any

from edgetpu_retrain.common import log
from edgetpu_retrain.model.config import Config, TrainConfig

AUTO_WARMUP_FRACTION = 0.1  # warmup_steps: auto = min(AUTO_WARMUP_MAX, 10% of the steps)
AUTO_WARMUP_MAX = 200
WARMUP_WARN_FRACTION = 0.5  # a set warm-up this long leaves (almost) no decay: warn
PRETRAINED_BACKBONE_LR = 0.1  # backbone_lr_multiplier: auto with pretrained weights (measured, see README)


def warmup_length(t: TrainConfig, total_steps: int) -> int:
    """train.warmup_steps for a run of total_steps (`auto` scales with the run)."""
    if t.warmup_steps == "auto":
        return min(AUTO_WARMUP_MAX, round(AUTO_WARMUP_FRACTION * total_steps))
    return int(t.warmup_steps)


def resolve_warmup(t: TrainConfig, total_steps: int) -> int:
    """warmup_length, with a warning when a set warm-up takes most of the run (no room to decay)."""
    warm = warmup_length(t, total_steps)
    if t.warmup_steps != "auto" and warm >= WARMUP_WARN_FRACTION * total_steps:
        log.warning(
            "train.warmup_steps=%d is %.0f%% of the %d training steps: the learning rate barely reaches "
            "its peak before it decays; use train.warmup_steps=auto (min(%d, %d%% of the steps))",
            warm,
            100.0 * warm / max(total_steps, 1),
            total_steps,
            AUTO_WARMUP_MAX,
            int(AUTO_WARMUP_FRACTION * 100),
        )
    return warm


class ScheduleLength:
    """The run's length as the schedules read it: total and warm-up steps in tf.Variables (float32, not
    trainable, not in the checkpoint), so `resize` during training moves the cosine's end (and an auto
    warm-up with it) without retracing the train step. Create it under the device strategy's scope."""

    def __init__(self, t: TrainConfig, total_steps: int) -> None:
        import tensorflow as tf

        self.train = t
        self.total = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="schedule_total")
        self.warmup = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="schedule_warmup")
        self.resize(total_steps)

    @property
    def steps(self) -> int:
        """The total as a Python int (read every training step: no device read)."""
        return self._steps

    def resize(self, total_steps: int) -> None:
        """The schedule now ends (lr 0 for cosine) at total_steps; warmup_steps auto follows."""
        self._steps = int(total_steps)
        self.total.assign(float(total_steps))
        self.warmup.assign(float(warmup_length(self.train, total_steps)))


def schedule_length(t: TrainConfig, total_steps: int | ScheduleLength) -> ScheduleLength:
    return total_steps if isinstance(total_steps, ScheduleLength) else ScheduleLength(t, total_steps)


def make_schedule(
    cfg: Config, total_steps: int | ScheduleLength, *, scale: float = 1.0, delay: int = 0
) -> Any:
    """Linear warm-up from 10% of the peak, then cosine decay to 0 at total_steps (or constant).

    total_steps: a number, or a ScheduleLength read at every step (re-sized by a time budget).
    scale multiplies the whole schedule (backbone_lr_multiplier); with delay > 0 it is 0 for the first
    `delay` steps and then ramps up linearly over the warm-up length (freeze_backbone_steps), so an
    unfrozen backbone does not take the full rate at once.
    """
    import keras
    import tensorflow as tf

    t = cfg.train
    length = schedule_length(t, total_steps)
    peak_value = float(t.learning_rate) * float(scale)

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(peak_value, tf.float32)
            warm = tf.convert_to_tensor(length.warmup)
            if t.schedule == "cosine":
                span = tf.maximum(tf.convert_to_tensor(length.total) - warm, 1.0)
                progress = tf.clip_by_value((step - warm) / span, 0.0, 1.0)
                lr = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
            else:
                lr = peak
            ramp = peak * (0.1 + 0.9 * tf.minimum(step / tf.maximum(warm, 1.0), 1.0))
            lr = tf.where(step < warm, ramp, lr)  # warm 0: never
            if delay > 0:
                lr = lr * tf.clip_by_value((step + 1.0 - float(delay)) / tf.maximum(warm, 1.0), 0.0, 1.0)
            return lr

        def get_config(self):
            return {}

    return WarmupCosine()


def make_optimizer(
    cfg: Config, total_steps: int | ScheduleLength, *, scale: float = 1.0, delay: int = 0
) -> Any:
    import keras

    t = cfg.train
    lr = make_schedule(cfg, total_steps, scale=scale, delay=delay)
    wd = t.weight_decay or None
    if t.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=t.momentum, weight_decay=wd)
    elif t.optimizer == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=lr, beta_1=t.momentum, weight_decay=t.weight_decay)
    else:
        opt = keras.optimizers.Adam(learning_rate=lr, beta_1=t.momentum, weight_decay=wd)
    if wd:
        opt.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    return opt


def backbone_lr_multiplier(cfg: Config) -> float:
    """train.backbone_lr_multiplier resolved: auto = 0.1 for a pretrained backbone, 1 for random init."""
    value = cfg.train.backbone_lr_multiplier
    if value == "auto":
        return PRETRAINED_BACKBONE_LR if cfg.model.backbone_weights is not None else 1.0
    return float(value)


def optimizer_groups(
    cfg: Config, model: Any, total_steps: int | ScheduleLength
) -> dict[str, tuple[Any, list[Any]]]:
    """{'optimizer': (opt, variables)} and, when the backbone is delayed or has its own rate,
    {'backbone_optimizer': (opt, backbone variables)}: a second optimizer whose schedule is scaled and
    held at 0 for freeze_backbone_steps (lr 0 also stops decoupled weight decay and SGD momentum).
    The names are the checkpoint keys. Both read the same ScheduleLength (one re-size moves both)."""
    from edgetpu_retrain.model.detector import backbone_of

    t = cfg.train
    total_steps = schedule_length(t, total_steps)
    multiplier = backbone_lr_multiplier(cfg)
    if t.freeze_backbone_steps == 0 and multiplier == 1.0:
        return {"optimizer": (make_optimizer(cfg, total_steps), list(model.trainable_variables))}
    backbone_ids = {id(v) for v in backbone_of(model).trainable_variables}
    head = [v for v in model.trainable_variables if id(v) not in backbone_ids]
    backbone = [v for v in model.trainable_variables if id(v) in backbone_ids]
    groups = {"optimizer": (make_optimizer(cfg, total_steps), head)}
    if backbone:
        backbone_opt = make_optimizer(cfg, total_steps, scale=multiplier, delay=t.freeze_backbone_steps)
        groups["backbone_optimizer"] = (backbone_opt, backbone)
    return groups


def current_lr(optimizer: Any) -> float:
    """The optimizer's learning rate at its current iteration (0.0 when it has none to read)."""
    lr = optimizer.learning_rate
    return float(lr.numpy()) if hasattr(lr, "numpy") else 0.0
