"""Training-step throughput before/after the training-only kernels and bf16, measured in the same run.

For each base model at its template input size (mobilenet_v2_ssd SSDLite 320 px, mobilenet_v1_ssd SSD
300 px) and batch 16, builds the real training model (`model.step.build_training_model`), optimizer
(`model.optim.optimizer_groups`) and step (`model.step.make_train_step`) on the real input pipeline,
once per variant:

- before:        train.fused_batch_norm=false, train.pointwise_matmul=false, train.compute_dtype=float32
                 (the original code path: Keras' unfused BatchNorm, 1x1 convs as Conv2D, float32);
- after:         fused BatchNorm, 1x1 convs as MatMul, float32;
- after+bf16:    after, with train.compute_dtype=bfloat16 (mixed precision);
- before+frozenbn / after+frozenbn: the same with the backbone's BatchNorm layers in inference mode
                 (train.backbone_bn=frozen, the default for pretrained starts: a training change);
- defaults:      the template defaults of a pretrained start: frozen backbone BN folded into the convs
                 before it (train.fold_frozen_batch_norm), compute_dtype auto (bfloat16 on a CPU with
                 native bf16, else float32);
- defaults-nofold: the same with train.fold_frozen_batch_norm=false (the frozen BN as its own ops).

The variants are measured interleaved (A, B, C, A, B, C, ...) after a warm-up, so machine load (the
2 cores are shared) hits them alike. Prints images/s and images per CPU-second (process CPU time,
all threads) per variant and the speed-up over `before`; a JSON summary is the last line.

    .venv/bin/python benchmarks/bench_train_speed.py --rounds 4 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tests"))

from edgetpu_retrain.model import config  # noqa: E402

TEMPLATE_SIZES = {"mobilenet_v2_ssd": 320, "mobilenet_v1_ssd": 300}
BEFORE = ["train.fused_batch_norm=false", "train.pointwise_matmul=false", "train.compute_dtype=float32"]
F32, BF16 = ["train.compute_dtype=float32"], ["train.compute_dtype=bfloat16"]
VARIANTS = {  # name -> config overrides
    "before": [*BEFORE, "train.backbone_bn=train"],
    "after": [*F32, "train.backbone_bn=train"],
    "after+bf16": [*BF16, "train.backbone_bn=train"],
    "before+frozenbn": [*BEFORE, "train.backbone_bn=frozen"],
    "after+frozenbn": [*F32, "train.backbone_bn=frozen"],
    "defaults": ["train.backbone_bn=frozen"],
    "defaults-nofold": ["train.backbone_bn=frozen", "train.fold_frozen_batch_norm=false"],
}


def build_dataset(name: str, work: Path) -> Path:
    """A train-only snapshot of a shared LabelImg dataset, made with the real verbs."""
    from testdata import SHARED_DATASETS, copy_labelimg_folder, train_only_snapshot

    images = copy_labelimg_folder(SHARED_DATASETS / name, work / "labelimg")
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the benchmark's own lines
        train_only_snapshot(images, work)
    return work / "ds"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_runner(dataset: Path, base: str, variant: str, batch: int):
    """A zero-argument function running one real train step of this variant (built and traced here)."""
    import keras
    import tensorflow as tf

    from edgetpu_retrain.model import anchors, inputs, optim, step

    sets = [
        "model.backbone_weights=null",
        f"model.input_size={TEMPLATE_SIZES[base]}",
        f"train.batch_size={batch}",
        *VARIANTS[variant],
    ]
    _, cfg = config.render_config(dataset, base, config.parse_set(sets))
    keras.utils.set_random_seed(cfg.train.seed)
    strategy = tf.distribute.get_strategy()
    model = step.build_training_model(cfg)
    groups = optim.optimizer_groups(cfg, model, cfg.train.steps)
    for opt, group_vars in groups.values():
        opt.build(group_vars)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_step = step.make_train_step(cfg, groups, model=model, strategy=strategy, step_var=step_var)
    iterator = iter(inputs.train_dataset(cfg, anchors.anchors(cfg)))

    def run_step() -> float:
        images, labels = next(iterator)
        return float(train_step(images, labels)["total"].numpy())

    return run_step


def measure(runners: dict[str, Any], *, rounds: int, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Interleaved timing: every round runs `steps` steps of each variant in turn."""
    for run_step in runners.values():
        for _ in range(warmup):
            run_step()
    totals = {name: [0.0, 0.0, 0] for name in runners}
    losses: dict[str, float] = {}
    for _ in range(rounds):
        for name, run_step in runners.items():
            wall0, cpu0 = time.perf_counter(), cpu_seconds()
            for _ in range(steps):
                losses[name] = run_step()
            acc = totals[name]
            acc[0] += time.perf_counter() - wall0
            acc[1] += cpu_seconds() - cpu0
            acc[2] += steps
    return {
        name: {"wall_s": wall, "cpu_s": cpu, "steps": n, "last_loss": losses[name]}
        for name, (wall, cpu, n) in totals.items()
    }


def report(base: str, batch: int, timings: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for name, t in timings.items():
        ips = batch * t["steps"] / t["wall_s"]
        ipc = batch * t["steps"] / t["cpu_s"]
        rows.append(
            {
                "base_model": base,
                "input_size": TEMPLATE_SIZES[base],
                "batch_size": batch,
                "variant": name,
                "steps": t["steps"],
                "sec_per_step": round(t["wall_s"] / t["steps"], 3),
                "images_per_sec": round(ips, 2),
                "images_per_cpu_sec": round(ipc, 2),
                "cores_used": round(t["cpu_s"] / t["wall_s"], 2),
                "last_loss": round(t["last_loss"], 4),
            }
        )
    before = next((r for r in rows if r["variant"] == "before"), None)
    for r in rows:
        if before:
            r["speedup_images_per_sec"] = round(r["images_per_sec"] / before["images_per_sec"], 2)
            r["speedup_images_per_cpu_sec"] = round(r["images_per_cpu_sec"] / before["images_per_cpu_sec"], 2)
        print(
            f"{base} {r['input_size']}px batch {batch} {r['variant']:16s} {r['sec_per_step']:6.3f} s/step "
            f"{r['images_per_sec']:6.2f} img/s {r['images_per_cpu_sec']:6.2f} img/CPU-s "
            f"(cores {r['cores_used']:.2f})  x{r.get('speedup_images_per_sec', 1):.2f} img/s  "
            f"x{r.get('speedup_images_per_cpu_sec', 1):.2f} img/CPU-s vs before",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="microcontroller", help="shared dataset name (microcontroller|bccd)"
    )
    parser.add_argument(
        "--dataset-dir", default=None, help="an existing dataset snapshot instead of --dataset"
    )
    parser.add_argument("--base-model", action="append", choices=list(TEMPLATE_SIZES), help="default both")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="default all")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after tracing")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_train_speed_"))
    dataset = Path(args.dataset_dir) if args.dataset_dir else build_dataset(args.dataset, work)
    variants = args.variant or list(VARIANTS)
    rows = []
    for base in args.base_model or list(TEMPLATE_SIZES):
        runners = {v: make_runner(dataset, base, v, args.batch_size) for v in variants}
        rows += report(
            base, args.batch_size, measure(runners, rounds=args.rounds, steps=args.steps, warmup=args.warmup)
        )
        del runners
    print(json.dumps({"cpus": os.cpu_count(), "runs": rows}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
