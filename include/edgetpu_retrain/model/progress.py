"""What a training run reports while it runs: the progress line, TensorBoard scalars, metrics.jsonl.

Every train.log_every steps (and at the last step): one log line (losses, positives per image, learning
rate, images/s, ETA), TensorBoard scalars in OUT/tensorboard and one JSON line in OUT/metrics.jsonl
(step, loss, box_loss, cls_loss, lr, images_per_s; what the run report plots and MLflow logs).
Throughput leaves out the first step (tf.function tracing) and counts closed windows only.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import atomic_path, log
from edgetpu_retrain.model.config import Config

METRICS_FILE = "metrics.jsonl"


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def scalar(name: str, value: float, step: int) -> None:
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


class Progress:
    """Step timing and the periodic reports of one run (open at `start`, `close()` at the end)."""

    def __init__(self, cfg: Config, out: Path, *, start: int) -> None:
        import tensorflow as tf

        self.batch_size = cfg.train.batch_size
        self.writer = tf.summary.create_file_writer(str(out / "tensorboard"))
        self.metrics = open_metrics_log(out, start)
        self.window_start = time.perf_counter()
        self.window_steps = 0
        self.timed_steps = 0
        self.timed_seconds = 0.0

    def first_step(self, step: int, total: int) -> None:
        """The first step traces/compiles the tf.function: logged, not timed."""
        log.info(
            "step %d/%d: first step (tracing/compiling) took %.1f s",
            step,
            total,
            time.perf_counter() - self.window_start,
        )
        self.window_start, self.window_steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.window_steps += 1

    def close_window(self) -> float:
        """Count the open window into the run's throughput; its seconds per step (nan when empty)."""
        now = time.perf_counter()
        sec_per_step = float("nan")
        if self.window_steps:
            sec_per_step = (now - self.window_start) / self.window_steps
            self.timed_steps += self.window_steps
            self.timed_seconds += now - self.window_start
        self.window_start, self.window_steps = now, 0
        return sec_per_step

    def images_per_sec(self) -> float:
        """Images per second over the timed (closed) windows so far; 0.0 before any."""
        return self.batch_size * self.timed_steps / self.timed_seconds if self.timed_seconds else 0.0

    def report(self, step: int, total: int, values: dict[str, float], *, lr: float) -> None:
        """The progress line, TensorBoard scalars and the metrics.jsonl line of `step`."""
        sec_per_step = self.close_window()
        timed = math.isfinite(sec_per_step) and sec_per_step > 0
        ips = self.batch_size / sec_per_step if timed else 0.0
        positives = values["num_pos"] / self.batch_size
        log.info(
            "step %d/%d loss %.4f (box %.4f class %.4f) pos/img %.1f lr %.5f %.2f img/s %.3f s/step ETA %s",
            step,
            total,
            values["total"],
            values["box"],
            values["class"],
            positives,
            lr,
            ips,
            sec_per_step,
            format_eta(sec_per_step * (total - step)) if math.isfinite(sec_per_step) else "?",
        )
        with self.writer.as_default():
            for k in ("total", "box", "class"):
                scalar(f"loss/{k}", values[k], step)
            scalar("positives_per_image", positives, step)
            scalar("learning_rate", lr, step)
            if ips:
                scalar("images_per_sec", ips, step)
        self.writer.flush()
        self.metrics.write(metrics_line(step, values, lr=lr, images_per_s=ips))
        self.metrics.flush()

    def close(self) -> None:
        self.writer.close()
        self.metrics.close()
