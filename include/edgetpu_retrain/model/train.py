"""`edgetpu-retrain train --config FILE --out DIR`: train the SSD detector, resumably.

Writes DIR/checkpoints/ckpt-N (tf.train.CheckpointManager; the checkpoint holds `model`, `optimizer`
(and `backbone_optimizer` when the backbone has its own learning rate), the step counter and the last
losses), DIR/tensorboard (scalars), DIR/train_result.json (the JSON
line) and DIR/metrics.jsonl (one JSON object per logged step: step, loss, box_loss, cls_loss, lr,
images_per_s; what the run report plots and MLflow logs). A retried task resumes from the latest
checkpoint (data order and augmentation continue where they stopped); when the target step count is
already reached it does nothing and prints the same JSON.
`--no-resume` deletes DIR/checkpoints, DIR/tensorboard and DIR/metrics.jsonl and starts over.
`--max-seconds N` (or train.max_seconds; the option wins): a wall-clock budget the run is sized to
after its first steps, the learning-rate schedule re-sized with it, and a hard cap (`budget`; a resumed
run continues the stored plan, DIR/checkpoints/budget.json).

Devices: tf.distribute.MirroredStrategy over all visible GPUs (the batch is split between them), the
default strategy on CPU. Seeds: keras.utils.set_random_seed(train.seed) + seeded, ordered input.
Fine-tuning (train.backbone_bn, freeze_backbone_steps, backbone_lr_multiplier) changes training only:
the exported graph, and so the Edge TPU op list, is the same.
Modules: `optim` (schedules, optimizers), `step` (the training model, the tf.function of one step,
devices), `progress` (log line, TensorBoard, metrics.jsonl), `budget` (the time budget); this module
runs them in order.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, log, read_json, write_json
from edgetpu_retrain.model import budget as time_budget
from edgetpu_retrain.model.config import Config, load_config
from edgetpu_retrain.model.config.coerce import no_train_records_message
from edgetpu_retrain.model.optim import (
    ScheduleLength,
    backbone_lr_multiplier,
    current_lr,
    optimizer_groups,
    resolve_warmup,
)
from edgetpu_retrain.model.optim import make_optimizer as make_optimizer  # re-exported (tests)
from edgetpu_retrain.model.progress import METRICS_FILE, Progress
from edgetpu_retrain.model.progress import metrics_line as metrics_line  # re-exported (tests)
from edgetpu_retrain.model.progress import open_metrics_log as open_metrics_log  # re-exported (tests)

RESULT_FILE = "train_result.json"
LOSS_KEYS = ("total", "box", "class")


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
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="wall-clock training budget (overrides train.max_seconds): the run is sized to it after its "
        "first steps (learning-rate schedule included) and stops there",
    )


@dataclass
class Run:
    """What one training run holds: the model, its optimizers, the step counter, the checkpoints."""

    cfg: Config
    out: Path
    config_path: Path
    strategy: Any
    model: Any
    groups: dict[str, tuple[Any, list[Any]]]  # checkpoint key -> (optimizer, its variables)
    step_var: Any
    last: dict[str, Any]  # last losses and images/s, stored in the checkpoint for an up-to-date re-run
    manager: Any
    length: ScheduleLength  # the schedules' total and warm-up steps (re-sized by a time budget)
    compute_dtype: str  # train.compute_dtype resolved for this machine (step.compute_dtype)

    def result(
        self, budget: dict[str, Any], losses: dict[str, float], images_per_sec: float
    ) -> dict[str, Any]:
        """The JSON line (and train_result.json); budget = time_budget.Budget.summary()."""
        from edgetpu_retrain.model.pretrained import resolved_weights

        config = str(self.config_path)
        m = self.cfg.model
        weights = resolved_weights(m.base, m.alpha, m.backbone_weights)
        return {
            "checkpoint": self.manager.latest_checkpoint,
            **budget,
            "loss": round(float(losses["total"]), 6),
            "box_loss": round(float(losses["box"]), 6),
            "class_loss": round(float(losses["class"]), 6),
            "images_per_sec": round(float(images_per_sec), 3),
            "compute_dtype": self.compute_dtype,
            "out_dir": str(self.out),
            "config": config if config not in ("", ".") else None,
            "backbone_weights": m.backbone_weights,
            "backbone_weights_file": weights["file"],
            "backbone_weights_source": weights["source"],
        }

    def save(self, step: int, losses: dict[str, float], images_per_sec: float) -> str:
        _check_finite_weights(self.cfg, step, self.model.variables)
        for k in LOSS_KEYS:
            self.last[k].assign(losses[k])
        self.last["ips"].assign(images_per_sec)
        path = self.manager.save(checkpoint_number=step)
        log.info("saved %s", path)
        return path


def _prepare_out(out: Path, *, resume: bool) -> Path:
    """The run folder, emptied of a previous run's outputs unless resuming."""
    if not resume:
        for sub in (out / "checkpoints", out / "tensorboard"):
            shutil.rmtree(sub, ignore_errors=True)
        (out / RESULT_FILE).unlink(missing_ok=True)
        (out / METRICS_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_inputs(cfg: Config, total: int, config_path: Path) -> None:
    from edgetpu_retrain.model import inputs

    if total < 1:
        raise UserError(f"--steps {total}: must be >= 1")
    if not inputs.train_files(cfg):
        raise UserError(no_train_records_message(cfg, str(config_path or "config")))
    for split_file in inputs.train_files(cfg):
        if not Path(split_file).is_file():
            raise UserError(
                f"{split_file}: TFRecord shard not found (data.tfrecords); rebuild the dataset or "
                f"re-render the config"
            )


def _build_run(cfg: Config, out: Path, *, config_path: Path, total: int) -> Run:
    """Model, optimizers and step counter under the device strategy, and their checkpoint manager."""
    import tensorflow as tf

    from edgetpu_retrain.model import step

    strategy = step.strategy()
    replicas = strategy.num_replicas_in_sync
    if cfg.train.batch_size % replicas:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of the {replicas} GPUs in use"
        )
    dtype = step.compute_dtype(cfg)
    with strategy.scope():
        model = step.build_training_model(cfg, dtype=dtype)
        length = ScheduleLength(cfg.train, total)
        groups = optimizer_groups(cfg, model, length)
        for opt, group_vars in groups.values():
            opt.build(group_vars)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        last = {k: tf.Variable(0.0, trainable=False, name=f"last_{k}") for k in (*LOSS_KEYS, "ips")}
    ckpt = tf.train.Checkpoint(
        model=model,
        step=step_var,
        **{name: opt for name, (opt, _) in groups.items()},
        **{f"last_{k}": v for k, v in last.items()},
    )
    manager = tf.train.CheckpointManager(
        ckpt, str(out / "checkpoints"), max_to_keep=cfg.train.keep_checkpoints, checkpoint_name="ckpt"
    )
    _restore(ckpt, manager, step_var)
    return Run(cfg, out, config_path, strategy, model, groups, step_var, last, manager, length, dtype)


def _restore(ckpt: Any, manager: Any, step_var: Any) -> None:
    """Resume from the latest checkpoint in the run folder, if any."""
    import tensorflow as tf

    if not manager.latest_checkpoint:
        return
    try:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise UserError(
            f"{manager.latest_checkpoint}: this checkpoint was trained with a different model "
            f"config ({type(exc).__name__}); use a new --out folder or --no-resume to start over"
        ) from exc
    log.info("resuming from %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))


def _already_done(run: Run, start: int, budget: time_budget.Budget) -> dict[str, Any]:
    """The target is reached: the stored result when it names the latest checkpoint, else rebuilt."""
    log.info("already at step %d (target %d): nothing to train", start, budget.planned)
    stored = run.out / RESULT_FILE
    if stored.is_file():
        previous = read_json(stored)
        if previous.get("checkpoint") == run.manager.latest_checkpoint:
            return previous
    losses = {k: float(run.last[k].numpy()) for k in LOSS_KEYS}
    result = run.result(budget.summary(start), losses, float(run.last["ips"].numpy()))
    write_json(stored, result)
    return result


def _numpy(parts: dict[str, Any]) -> dict[str, float]:
    return {k: float(v.numpy()) for k, v in parts.items()}


def _check_finite(cfg: Config, step: int, values: dict[str, float]) -> None:
    if not all(math.isfinite(v) for v in values.values()):
        raise UserError(
            f"step {step}: loss is not finite ({values}); lower train.learning_rate "
            f"(now {cfg.train.learning_rate}) or check the boxes in the dataset"
        )


def nonfinite_variables(variables: list[Any]) -> list[str]:
    """Names of the variables holding NaN/inf. A kernel tap the forward pass never reads (padding
    only) can go NaN while the loss stays finite; only the int8 conversion would notice, far away."""
    import numpy as np

    return [v.path if hasattr(v, "path") else v.name for v in variables if not np.isfinite(v.numpy()).all()]


def _check_finite_weights(cfg: Config, step: int, variables: list[Any]) -> None:
    """Refuse to checkpoint a model with non-finite weights (it would export but not quantize)."""
    bad = nonfinite_variables(variables)
    if bad:
        raise UserError(
            f"step {step}: {len(bad)} weight(s) are not finite ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); no checkpoint written. Set train.compute_dtype=float32 "
            f"(now {cfg.train.compute_dtype}) or lower train.learning_rate (now {cfg.train.learning_rate})"
        )


def _log_start(run: Run, *, n_anchors: int, start: int, total: int) -> None:
    m, t = run.cfg.model, run.cfg.train
    log.info(
        "training %s (%s head, %dx%d, %d anchors) steps %d -> %d, batch %d on %d replica(s), jit=%s, "
        "%s lr %g, warm-up %d steps",
        m.base,
        m.head,
        m.input_size,
        m.input_size,
        n_anchors,
        start,
        total,
        t.batch_size,
        run.strategy.num_replicas_in_sync,
        t.jit_compile,
        t.optimizer,
        t.learning_rate,
        resolve_warmup(t, total),
    )
    log.info(
        "backbone: lr x%g, frozen for the first %d steps",
        backbone_lr_multiplier(run.cfg),
        t.freeze_backbone_steps,
    )


def _run_steps(run: Run, *, start: int, budget: time_budget.Budget) -> tuple[int, dict[str, float]]:
    """Steps start+1..the planned total (re-sized, or cut, by the time budget); (last step, its losses).
    Checkpoints every train.checkpoint_every steps and at the last step; reports every train.log_every
    steps and at the last step."""
    from edgetpu_retrain.model import anchors, inputs, step

    t = run.cfg.train
    boxes = anchors.anchors(run.cfg)
    dataset = inputs.train_dataset(run.cfg, boxes, start_step=start)
    iterator = iter(run.strategy.experimental_distribute_dataset(dataset))
    train_step = step.make_train_step(
        run.cfg, run.groups, model=run.model, strategy=run.strategy, step_var=run.step_var
    )
    progress = Progress(run.cfg, run.out, start=start)
    _log_start(run, n_anchors=len(boxes), start=start, total=budget.planned)
    values: dict[str, float] = {}
    parts: dict[str, Any] = {}
    n, reported_at, saved_at = start, start, -1
    budget.begin()
    while n < budget.planned and not budget.used_up(n):
        n += 1
        parts = train_step(*next(iterator))
        budget.step_done(n)  # may re-size budget.planned (never below n)
        last = n == budget.planned
        if n == start + 1:
            values = _numpy(parts)
            progress.first_step(n, budget.planned)
        else:
            progress.tick()
        if n % t.log_every == 0 or last:
            values = _report(run, progress, n, parts, total=budget.planned)
            reported_at = n
        if n % t.checkpoint_every == 0 or last:
            values = _numpy(parts)
            run.save(n, values, progress.images_per_sec())
            saved_at = n
    if reported_at != n:  # cut by the budget between two reports
        values = _report(run, progress, n, parts, total=budget.planned)
    if saved_at != n:
        run.save(n, values, progress.images_per_sec())
    progress.close()
    budget.save(done=n)
    return n, values


def _report(run: Run, progress: Progress, n: int, parts: dict[str, Any], *, total: int) -> dict[str, float]:
    values = _numpy(parts)
    _check_finite(run.cfg, n, values)
    progress.report(n, total, values, lr=current_lr(run.groups["optimizer"][0]))
    return values


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

    max_seconds (default cfg.train.max_seconds): a wall-clock budget the run is sized to (`budget`):
    fewer steps, the schedule ending at the budget, and a hard stop there with a checkpoint.
    """
    import keras

    cap = int(steps if steps is not None else cfg.train.steps)
    seconds = time_budget.check_max_seconds(max_seconds if max_seconds is not None else cfg.train.max_seconds)
    _check_inputs(cfg, cap, Path(config_path))
    out = _prepare_out(Path(out).resolve(), resume=resume)
    keras.utils.set_random_seed(cfg.train.seed)
    plan = time_budget.load_plan(out)
    total = time_budget.resume_target(plan, cap)
    run = _build_run(cfg, out, config_path=Path(config_path), total=total)
    start = int(run.step_var.numpy())
    if plan is not None:
        run.length.resize(int(plan["steps_planned"]))  # the same schedule as before the stop
        log.info("resuming the time-budgeted plan of %s: %d steps", time_budget.plan_path(out), total)
    budget = time_budget.Budget(
        max_seconds=seconds, cap=cap, start=start, length=run.length, stored=plan, out=out
    )
    if start >= total:
        return _already_done(run, start, budget)
    done, values = _run_steps(run, start=start, budget=budget)
    ips = float(run.last["ips"].numpy())
    result = run.result(budget.summary(done), values, ips)
    write_json(out / RESULT_FILE, result)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    config_path = Path(args.config).resolve()
    cfg = load_config(config_path)
    return train(
        cfg,
        args.out,
        config_path=config_path,
        steps=args.steps,
        resume=args.resume,
        max_seconds=args.max_seconds,
    )
