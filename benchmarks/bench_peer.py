"""Ours vs the peer: Ultralytics YOLO11n from scratch against our pipeline, same split, same budget.

    PYTHONPATH=include .venv/bin/python benchmarks/bench_peer.py --dataset microcontroller \
        [--labelimg DIR] [--budget-minutes 15] [--only both|ours|peer] [--work-dir DIR] \
        [--backbone-weights bundled|none|FILE] [--base-model mobilenet_v2_ssd] [--split 0.8,0.1,0.1] \
        [--seed 0] [--steps N] [--set key=value ...] [--peer-venv benchmarks/.peer-venv]

Not part of `make test`. The shared datasets are found as tests/conftest.py finds them
(EDGETPU_SHARED_DATASETS, default ../shared/datasets beside the repository: set it in a worktree).
A 2-minute smoke on microcontroller takes about 12 minutes in all (dataset, training, export, int8).

1. Our split: the real `validate` + `build-dataset` verbs (seed 0) on the LabelImg folder, then a YOLO
   copy of that snapshot (images + txt labels + data.yaml) from annotations.csv and splits/*.txt, so
   both train on the same train images, Ultralytics validates on our val split, and both are scored
   on our test split.
2. The peer: benchmarks/peer/peer_yolo.py (in a subfolder because `make bench` runs
   benchmarks/*.py) in its own venv (created from peer_requirements.txt when missing), inside a
   private network namespace (`unshare -rn`) so any download attempt fails: yolo11n.yaml at the
   input size, `time=` budget, CPU; float best.pt and Ultralytics' ONNX int8.
3. Ours: render-config (base model, input size, `model.backbone_weights`, train.steps a large cap
   unless --steps, the same `max_detections`/score threshold as the peer's predictions), train with
   `max_seconds` = the budget (train sizes the run and its learning-rate schedule to it after the
   first steps, as Ultralytics' `time=` does, and stops there), export, tflite, evaluate float and int8.
4. Both sides' detections go through the same `evaluate.coco_eval` (pycocotools) on the same
   decoded test images; Ultralytics' own `val` figures on the test split are printed too.

`--train-child CONFIG OUT MAX_SECONDS` is internal: our train step in a child process, measured.

Training-phase figures (both sides the same way): wall and CPU seconds (user+system, the process
and its workers) from the first training step to the end of the last step/epoch, images seen.
Ours: from the end of the input-pipeline set-up (model already built) to the last checkpoint; the
first step includes tracing. Peer: from the first epoch's start to the last epoch's end, including
Ultralytics' per-epoch validation (it counts that in `time=` too). The CPU is shared: expect noise.
"steady images/s": ours without the first step, the peer without validation. "budget used": the
training phase's wall time over the budget (ours: train's clock starts at the first step, tracing
included, and re-estimates the steps that fit a few times; with --steps it stops at the budget or at
those steps, whichever comes first). Prints one table and the full JSON (also written to
WORK/bench_peer.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"
for extra in (REPO / "include", REPO / "tests", HERE):
    sys.path.insert(0, str(extra))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "include"), os.environ.get("PYTHONPATH", "")]).rstrip(
    os.pathsep
)
from peer.peer_side import run_logged, run_peer, write_yolo_dataset  # noqa: E402

STEPS_CAP = 1_000_000  # our train.steps without --steps: the time budget sizes the run
COLUMNS = (
    "pipeline",
    "dataset",
    "budget",
    "train images",
    "images/s",
    "images per CPU-second",
    "float mAP@.5",
    "float mAP",
    "int8 mAP@.5",
    "int8 mAP",
    "steady images/s",
    "trained",
    "budget used",
)


# -------------------------------------------------------------------------------------- dataset
def prepare_dataset(args: argparse.Namespace, work: Path, log: Path) -> tuple[Path, Path]:
    """(validated dir, dataset snapshot dir) from the real validate + build-dataset verbs."""
    from bench_accuracy import snapshot
    from testdata import SHARED_DATASETS, copy_labelimg_folder

    images = args.labelimg or copy_labelimg_folder(SHARED_DATASETS / args.dataset, work / "labelimg")
    validated, ds = snapshot(images, work, split=args.split, seed=args.seed, log=log)
    return Path(validated["out_dir"]), Path(ds["dataset_dir"])


# ------------------------------------------------------------------------------------------ ours
def train_child(config_path: str, out: str, max_seconds: str) -> int:
    """`bench_peer.py --train-child CONFIG OUT MAX_SECONDS`: our train step, with the phase measured."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from edgetpu_retrain.model import config, inputs, train

    def now() -> tuple[float, float]:
        return time.perf_counter(), sum(
            getattr(resource.getrusage(w), a)
            for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for a in ("ru_utime", "ru_stime")
        )

    marks: dict[str, tuple[float, float]] = {}
    make_dataset = inputs.train_dataset

    def marked(*a: Any, **k: Any) -> Any:  # called once, right before the training loop
        dataset = make_dataset(*a, **k)
        marks["start"] = now()
        return dataset

    import tensorflow as tf

    save = tf.train.CheckpointManager.save

    def saved(self: Any, *a: Any, **k: Any) -> Any:  # the last save ends the phase (as the peer's last epoch)
        path = save(self, *a, **k)
        marks["end"] = now()
        return path

    inputs.train_dataset = marked
    tf.train.CheckpointManager.save = saved
    cfg = config.load_config(config_path)
    result = train.train(
        cfg,
        out,
        config_path=config_path,
        resume=False,
        max_seconds=float(max_seconds) if float(max_seconds) > 0 else None,
    )
    returned = now()
    images = result["steps_done"] * cfg.train.batch_size
    wall, cpu = (marks["end"][i] - marks["start"][i] for i in (0, 1))
    print(
        json.dumps(
            {
                **result,
                "train_wall_s": round(wall, 2),
                "train_cpu_s": round(cpu, 2),
                "train_images_seen": images,
                "images_per_sec_phase": round(images / wall, 3),
                "images_per_cpu_sec": round(images / cpu, 3),
                "batch_size": cfg.train.batch_size,
                "after_last_save_s": round(returned[0] - marks["end"][0], 2),
            }
        )
    )
    return 0


def render(args: argparse.Namespace, ds: Path, out: Path, steps: int, log: Path) -> dict[str, Any]:
    from bench_accuracy import step

    sets = [
        f"model.input_size={args.input_size}",
        f"model.backbone_weights={args.backbone_weights}",
        f"train.steps={steps}",
        f"postprocess.max_detections={args.max_det}",
        f"postprocess.score_threshold={args.conf}",
        *args.overrides,
    ]
    cfg, _ = step(
        "render-config",
        "--dataset",
        str(ds),
        "--base-model",
        args.base_model,
        "--out",
        str(out),
        *[a for s in sets for a in ("--set", s)],
        log=log,
    )
    return cfg


def train_ours(args: argparse.Namespace, work: Path, ds: Path, log: Path) -> dict[str, Any]:
    """Train for the budget (train --max-seconds sizes the run and its schedule), measured in a child."""
    from edgetpu_retrain.model.config import load_config
    from edgetpu_retrain.model.optim import warmup_length

    budget_s = args.budget_minutes * 60.0
    me = [sys.executable, str(Path(__file__).resolve()), "--train-child"]
    cfg = render(args, ds, work / "ours.yaml", args.steps or STEPS_CAP, log)
    out, wall, cpu = run_logged([*me, cfg["config"], str(work / "ours_train"), str(budget_s)], log)
    trained = json.loads(out.strip().splitlines()[-1])
    train_cfg = load_config(cfg["config"]).train
    return {
        **trained,
        "config": cfg["config"],
        "warmup_steps": warmup_length(train_cfg, trained["steps_planned"]),  # of the final plan
        "process_wall_s": round(wall, 1),
        "process_cpu_s": round(cpu, 1),
    }


def run_ours(args: argparse.Namespace, work: Path, ds: Path) -> dict[str, Any]:
    from bench_accuracy import evaluate_float_and_int8, export_and_quantize

    log = work / "ours.log"
    trained = train_ours(args, work, ds, log)
    exported, tfl = export_and_quantize(
        trained["config"],
        trained["checkpoint"],
        str(ds),
        saved_model_dir=work / "ours_saved_model",
        tflite_dir=work / "ours_tflite",
        log=log,
    )
    ev = evaluate_float_and_int8(
        str(ds), exported["saved_model"], tfl["int8"], out=work / "ours_eval.json", log=log
    )
    keep = ("map", "map50", "images", "objects", "detections", "model", "model_kind")
    return {
        **trained,
        "train_images": None,
        "float": {k: ev[k] for k in keep},
        "int8": {k: ev["compare"][k] for k in keep},
    }


# ----------------------------------------------------------------------------------------- table
def row(name: str, r: dict[str, Any], args: argparse.Namespace, train_images: int) -> list[str]:
    def f(v: Any, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    wall, cpu, seen = r["train_wall_s"], r["train_cpu_s"], r["train_images_seen"]
    fl, q = r.get("float") or {}, r.get("int8") or {}
    if "epochs_done" in r:  # the peer: batches only, without its per-epoch validation
        steady, trained = r.get("loop_images_per_sec"), f"{r['epochs_done']} epochs x {r['batch_size']}"
    else:  # ours: train's own figure, without the first (tracing) step
        steady, trained = (
            r.get("images_per_sec"),
            f"{r['steps_done']}/{r['steps_planned']} steps x {r['batch_size']} ({r['stopped_by']})",
        )
    return [
        name,
        args.dataset_name,
        f"{args.budget_minutes:g} min",
        str(train_images),
        f(seen / wall if wall else None, 2),
        f(seen / cpu if cpu else None, 2),
        f(fl.get("map50")),
        f(fl.get("map")),
        f(q.get("map50")),
        f(q.get("map")),
        f(steady, 2),
        trained,
        f"{100.0 * wall / (60.0 * args.budget_minutes):.0f}%",
    ]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--dataset",
        default="microcontroller",
        choices=["bccd", "microcontroller"],
        help="shared dataset (../shared/datasets/NAME)",
    )
    p.add_argument("--labelimg", type=Path, help="use this LabelImg folder instead of --dataset")
    p.add_argument("--budget-minutes", type=float, default=15.0, help="training wall time of each side")
    p.add_argument("--only", default="both", choices=["both", "ours", "peer"])
    p.add_argument("--work-dir", type=Path, help="working folder (default: a new temp folder, kept)")
    p.add_argument(
        "--backbone-weights",
        default="bundled",
        help="model.backbone_weights (default bundled, the templates' default; null/none: from scratch)",
    )
    p.add_argument(
        "--base-model", default="mobilenet_v2_ssd", choices=["mobilenet_v1_ssd", "mobilenet_v2_ssd"]
    )
    p.add_argument(
        "--input-size", type=int, default=320, help="both sides (our model.input_size, YOLO imgsz)"
    )
    p.add_argument("--split", default="0.8,0.1,0.1", help="build-dataset --split (train,val,test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="our train.steps (default: as many as the budget fits)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra render-config key=value"
    )
    p.add_argument("--conf", type=float, default=0.001, help="score threshold of both sides' detections")
    p.add_argument("--max-det", type=int, default=100, help="detections kept per image, both sides")
    p.add_argument("--peer-venv", type=Path, default=HERE / ".peer-venv")
    p.add_argument(
        "--netns",
        action=argparse.BooleanOptionalAction,
        default=shutil.which("unshare") is not None,
        help="run the peer in a private network namespace (`unshare -rn`; default when available)",
    )
    args = p.parse_args(argv)
    args.dataset_name = args.labelimg.name if args.labelimg else args.dataset
    if args.backbone_weights.lower() == "none":
        args.backbone_weights = "null"  # the same meaning; the config spells it null today
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train-child"]:
        return train_child(*argv[1:4])
    args = parse_args(argv)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="bench_peer_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", file=sys.stderr)
    validated, ds = prepare_dataset(args, work, work / "dataset.log")
    from edgetpu_retrain import common

    train_images = common.read_json(ds / "manifest.json")["counts"]["train"]["images"]
    summary: dict[str, Any] = {
        "dataset": args.dataset_name,
        "budget_minutes": args.budget_minutes,
        "train_images": train_images,
        "dataset_dir": str(ds),
        "work": str(work),
    }
    rows = []
    if args.only in ("both", "peer"):
        data_yaml = write_yolo_dataset(ds, validated, work / "yolo")
        summary["peer"] = run_peer(args, work, data_yaml, ds)
        rows.append(
            row("Ultralytics YOLO11n (yolo11n.yaml, random init)", summary["peer"], args, train_images)
        )
    if args.only in ("both", "ours"):
        summary["ours"] = run_ours(args, work, ds)
        summary["ours"]["train_images"] = train_images
        rows.append(
            row(
                f"ours {args.base_model}, backbone_weights={args.backbone_weights}",
                summary["ours"],
                args,
                train_images,
            )
        )
    common.write_json(work / "bench_peer.json", summary)
    print(table(rows))
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
