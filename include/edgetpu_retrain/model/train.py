"""`edgetpu-retrain train --config FILE --out DIR`: train the SSD detector, resumably.

Writes DIR/checkpoints/ckpt-N (tf.train.CheckpointManager; the checkpoint holds `model`, `optimizer`,
the step counter and the last losses), DIR/tensorboard (scalars), DIR/train_result.json (the JSON
line) and DIR/metrics.jsonl (one JSON object per logged step: step, loss, box_loss, cls_loss, lr,
images_per_s; what the run report plots and MLflow logs). A retried task resumes from the latest
checkpoint (data order and augmentation continue where they stopped); when the target step count is
already reached it does nothing and prints the same JSON.
`--no-resume` deletes DIR/checkpoints, DIR/tensorboard and DIR/metrics.jsonl and starts over.

Devices: tf.distribute.MirroredStrategy over all visible GPUs (the batch is split between them), the
default strategy on CPU. Seeds: keras.utils.set_random_seed(train.seed) + seeded, ordered input.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, atomic_path, log, read_json, write_json
from edgetpu_retrain.model.config import Config, load_config

RESULT_FILE = "train_result.json"
METRICS_FILE = "metrics.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config YAML written by render-config")
    parser.add_argument(
        "--out", required=True, help="run folder: checkpoints/, tensorboard/, train_result.json"
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the latest checkpoint in OUT (default) or start over",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="override train.steps (total, not additional)"
    )


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def make_schedule(cfg: Config, total_steps: int):
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


def make_optimizer(cfg: Config, total_steps: int):
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


def _scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar without the tensorboard package (tf.summary.scalar needs it): the raw
    summary write with the 'scalars' plugin metadata, which is what tf.summary.scalar emits."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata.SerializeToString())


def open_metrics_log(out: Path, start: int) -> Any:
    """OUT/metrics.jsonl opened for appending, without lines past `start` (a killed run logged beyond
    its last checkpoint; the resumed run logs those steps again)."""
    path = out / METRICS_FILE
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if (step := _logged_step(line)) is not None and step <= start]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    return path.open("a", encoding="utf-8")


def _logged_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line a killed run cut short."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row.get("step") if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def metrics_line(step: int, values: dict[str, float], *, lr: float, images_per_s: float) -> str:
    """One metrics.jsonl line (sorted keys, rounded: the same run writes the same text)."""
    row = {
        "step": step,
        "loss": round(values["total"], 6),
        "box_loss": round(values["box"], 6),
        "cls_loss": round(values["class"], 6),
        "lr": round(lr, 8),
        "images_per_s": round(images_per_s, 3),
    }
    return json.dumps(row, sort_keys=True) + "\n"


def _strategy():
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


def _result(
    out: Path, config: Path, checkpoint: str, steps_done: int, losses: dict[str, float], images_per_sec: float
) -> dict[str, Any]:
    return {
        "checkpoint": checkpoint,
        "steps_done": int(steps_done),
        "loss": round(float(losses["total"]), 6),
        "box_loss": round(float(losses["box"]), 6),
        "class_loss": round(float(losses["class"]), 6),
        "images_per_sec": round(float(images_per_sec), 3),
        "out_dir": str(out),
        "config": str(config) if str(config) not in ("", ".") else None,
    }


def train(
    cfg: Config,
    out: str | Path,
    *,
    config_path: str | Path = "",
    steps: int | None = None,
    resume: bool = True,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Train to `steps` (default cfg.train.steps) total steps; returns the JSON-line dict.

    max_seconds (benchmarks): stop early, with a checkpoint, once this much wall time has passed.
    """
    import keras
    import tensorflow as tf

    from edgetpu_retrain.model import detector as model_mod
    from edgetpu_retrain.model import inputs
    from edgetpu_retrain.model import losses as losses_mod

    t = cfg.train
    total = int(steps if steps is not None else t.steps)
    if total < 1:
        raise UserError(f"--steps {total}: must be >= 1")
    out = Path(out).resolve()
    ckpt_dir = out / "checkpoints"
    if not resume:
        for sub in (ckpt_dir, out / "tensorboard"):
            shutil.rmtree(sub, ignore_errors=True)
        (out / RESULT_FILE).unlink(missing_ok=True)
        (out / METRICS_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for split_file in inputs.train_files(cfg):
        if not Path(split_file).is_file():
            raise UserError(
                f"{split_file}: TFRecord shard not found (data.tfrecords); rebuild the dataset or "
                f"re-render the config"
            )

    keras.utils.set_random_seed(t.seed)
    strategy = _strategy()
    replicas = strategy.num_replicas_in_sync
    if t.batch_size % replicas:
        raise UserError(f"train.batch_size={t.batch_size} must be a multiple of the {replicas} GPUs in use")
    with strategy.scope():
        model = model_mod.build_detector(cfg)
        optimizer = make_optimizer(cfg, total)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        last = {
            k: tf.Variable(0.0, trainable=False, name=f"last_{k}") for k in ("total", "box", "class", "ips")
        }
    ckpt = tf.train.Checkpoint(
        model=model, optimizer=optimizer, step=step_var, **{f"last_{k}": v for k, v in last.items()}
    )
    manager = tf.train.CheckpointManager(
        ckpt, str(ckpt_dir), max_to_keep=t.keep_checkpoints, checkpoint_name="ckpt"
    )
    if manager.latest_checkpoint:
        try:
            ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise UserError(
                f"{manager.latest_checkpoint}: this checkpoint was trained with a different model "
                f"config ({type(exc).__name__}); use a new --out folder or --no-resume to start "
                f"over"
            ) from exc
        log.info("resuming from %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
    start = int(step_var.numpy())
    if start >= total:
        log.info("already at step %d (target %d): nothing to train", start, total)
        stored = out / RESULT_FILE
        if stored.is_file():
            previous = read_json(stored)
            if previous.get("checkpoint") == manager.latest_checkpoint:
                return previous
        result = _result(
            out,
            Path(config_path),
            manager.latest_checkpoint,
            start,
            {k: last[k].numpy() for k in ("total", "box", "class")},
            last["ips"].numpy(),
        )
        write_json(stored, result)
        return result

    anchors = model_mod.anchors(cfg)
    dataset = inputs.train_dataset(cfg, anchors, start_step=start)
    dist_dataset = strategy.experimental_distribute_dataset(dataset)
    variables = model.trainable_variables

    def compute(images, box_t, cls_t):
        with tf.GradientTape() as tape:
            box_p, logits = model(images, training=True)
            parts = losses_mod.detection_loss(cfg, box_p, logits, box_t, cls_t)
            scaled = parts["total"] / replicas
        grads = tape.gradient(scaled, variables)
        return parts, grads

    if replicas == 1:

        @tf.function(jit_compile=t.jit_compile)
        def replica_step(images, labels):
            parts, grads = compute(images, labels["box_targets"], labels["cls_targets"])
            optimizer.apply_gradients(zip(grads, variables, strict=False))
            return parts
    else:
        compute_fn = tf.function(compute, jit_compile=t.jit_compile)

        def replica_step(images, labels):
            parts, grads = compute_fn(images, labels["box_targets"], labels["cls_targets"])
            optimizer.apply_gradients(zip(grads, variables, strict=False))
            return parts

    @tf.function
    def train_step(images, labels):
        parts = strategy.run(replica_step, args=(images, labels))
        step_var.assign_add(1)
        # losses: mean over replicas; positives: total over the global batch
        return {
            k: strategy.reduce(
                tf.distribute.ReduceOp.SUM if k == "num_pos" else tf.distribute.ReduceOp.MEAN, v, axis=None
            )
            for k, v in parts.items()
        }

    writer = tf.summary.create_file_writer(str(out / "tensorboard"))
    metrics_log = open_metrics_log(out, start)
    iterator = iter(dist_dataset)
    log.info(
        "training %s (%s head, %dx%d, %d anchors) steps %d -> %d, batch %d on %d replica(s), jit=%s",
        cfg.model.base,
        cfg.model.head,
        cfg.model.input_size,
        cfg.model.input_size,
        len(anchors),
        start,
        total,
        t.batch_size,
        replicas,
        t.jit_compile,
    )
    window_start = time.perf_counter()
    window_steps = 0
    timed_steps = 0
    timed_seconds = 0.0
    values: dict[str, float] = {}
    saved_at = -1
    parts: dict[str, Any] = {}
    started = time.perf_counter()
    for step in range(start + 1, total + 1):
        if max_seconds is not None and step > start + 2 and time.perf_counter() - started > max_seconds:
            total = step - 1  # time budget used up: finish as if this were the target
            values = {k: float(v.numpy()) for k, v in parts.items()}
            if window_steps:
                timed_steps += window_steps
                timed_seconds += time.perf_counter() - window_start
            log.info("time budget of %.0f s used up at step %d", max_seconds, total)
            break
        images, labels = next(iterator)
        parts = train_step(images, labels)
        if step == start + 1:
            values = {k: float(v.numpy()) for k, v in parts.items()}  # first step: tracing, not timed
            log.info(
                "step %d/%d: first step (tracing/compiling) took %.1f s",
                step,
                total,
                time.perf_counter() - window_start,
            )
            window_start = time.perf_counter()
            window_steps = 0
        else:
            window_steps += 1
        if step % t.log_every == 0 or step == total:
            values = {k: float(v.numpy()) for k, v in parts.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise UserError(
                    f"step {step}: loss is not finite ({values}); lower train.learning_rate "
                    f"(now {t.learning_rate}) or check the boxes in the dataset"
                )
            now = time.perf_counter()
            if window_steps:
                sec_per_step = (now - window_start) / window_steps
                timed_steps += window_steps
                timed_seconds += now - window_start
            else:
                sec_per_step = float("nan")
            window_start, window_steps = now, 0
            ips = t.batch_size / sec_per_step if math.isfinite(sec_per_step) and sec_per_step > 0 else 0.0
            lr = float(optimizer.learning_rate.numpy()) if hasattr(optimizer.learning_rate, "numpy") else 0.0
            log.info(
                "step %d/%d loss %.4f (box %.4f class %.4f) pos/img %.1f lr %.5f %.2f img/s %.3f s/step ETA "
                "%s",
                step,
                total,
                values["total"],
                values["box"],
                values["class"],
                values["num_pos"] / t.batch_size,
                lr,
                ips,
                sec_per_step,
                _format_eta(sec_per_step * (total - step)) if math.isfinite(sec_per_step) else "?",
            )
            with writer.as_default():
                for k in ("total", "box", "class"):
                    _scalar(f"loss/{k}", values[k], step)
                _scalar("positives_per_image", values["num_pos"] / t.batch_size, step)
                _scalar("learning_rate", lr, step)
                if ips:
                    _scalar("images_per_sec", ips, step)
            writer.flush()
            metrics_log.write(metrics_line(step, values, lr=lr, images_per_s=ips))
            metrics_log.flush()
        if step % t.checkpoint_every == 0 or step == total:
            values = {k: float(v.numpy()) for k, v in parts.items()}
            ips_all = t.batch_size * timed_steps / timed_seconds if timed_seconds else 0.0
            for k in ("total", "box", "class"):
                last[k].assign(values[k])
            last["ips"].assign(ips_all)
            path = manager.save(checkpoint_number=step)
            saved_at = step
            log.info("saved %s", path)
    if saved_at != total:
        for k in ("total", "box", "class"):
            last[k].assign(values[k])
        last["ips"].assign(t.batch_size * timed_steps / timed_seconds if timed_seconds else 0.0)
        manager.save(checkpoint_number=total)
    ips_all = t.batch_size * timed_steps / timed_seconds if timed_seconds else float(last["ips"].numpy())
    result = _result(out, Path(config_path), manager.latest_checkpoint, total, values, ips_all)
    write_json(out / RESULT_FILE, result)
    writer.close()
    metrics_log.close()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    config_path = Path(args.config).resolve()
    cfg = load_config(config_path)
    return train(cfg, args.out, config_path=config_path, steps=args.steps, resume=args.resume)
