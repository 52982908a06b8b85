"""Accuracy after quantization: the whole step chain on a shared dataset, from scratch, on this CPU.

Runs the real CLI verbs in order — validate, build-dataset, render-config, train, export, tflite,
edgetpu (pre-flight), evaluate (float SavedModel vs int8 .tflite on the test split) — then the int8
latency under ai-edge-litert at 1 and 2 threads. Prints one line per figure and a JSON summary last.

    .venv/bin/python benchmarks/bench_accuracy.py [--base-model mobilenet_v2_ssd] [--steps 5000] \
        [--input-size 160] [--alpha 0.5] [--set key=value ...] [--work DIR]

The defaults (SSDLite MobileNetV2, 160 px, alpha 0.5, 5000 steps of batch 8) take about 20 minutes on
2 CPU cores.

`--weights` is model.backbone_weights: `bundled` (default: the packaged Coral ImageNet MobileNets, no
download; bundled alphas V2 1.0, V1 1.0/0.75/0.5), `null` (random init) or a local weights file.
The shapes demo recipe (`make demo`): `--labelimg DIR_FROM_demo-data --base-model mobilenet_v1_ssd
--input-size 160 --alpha 0.5 --steps 1200 --split 0.7,0.15,0.15 --set train.backbone_lr_multiplier=1`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))


def step(verb: str, *args: str, log: Path) -> tuple[dict, float]:
    """Run one CLI verb as the DAG would; return its JSON line and wall seconds."""
    cli = Path(sys.executable).with_name("edgetpu-retrain")
    start = time.perf_counter()
    with log.open("a") as err:
        done = subprocess.run([str(cli), verb, *args], stdout=subprocess.PIPE, stderr=err, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{verb} failed (exit {done.returncode}); see {log}")
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


def snapshot(images: Path, work: Path, *, split: str, seed: int, log: Path) -> tuple[dict, dict]:
    """validate + build-dataset as the DAG runs them: (validate JSON, build-dataset JSON)."""
    validated, _ = step("validate", "--images", str(images), "--out", str(work / "validated"), log=log)
    ds, _ = step(
        "build-dataset",
        "--validated",
        validated["out_dir"],
        "--out",
        str(work / "dataset"),
        "--split",
        split,
        "--seed",
        str(seed),
        log=log,
    )
    return validated, ds


def export_and_quantize(
    config: str, checkpoint: str, dataset_dir: str, *, saved_model_dir: Path, tflite_dir: Path, log: Path
) -> tuple[dict, dict]:
    """export + tflite as the DAG runs them: (export JSON, tflite JSON)."""
    exported, _ = step(
        "export", "--config", config, "--checkpoint", checkpoint, "--out", str(saved_model_dir), log=log
    )
    tfl, _ = step(
        "tflite",
        "--saved-model",
        exported["saved_model"],
        "--dataset",
        dataset_dir,
        "--out",
        str(tflite_dir),
        log=log,
    )
    return exported, tfl


def evaluate_float_and_int8(dataset_dir: str, saved_model: str, int8: str, *, out: Path, log: Path) -> dict:
    """`evaluate` of the float SavedModel with the int8 .tflite as --compare, on the test split."""
    ev, _ = step(
        "evaluate",
        "--dataset",
        dataset_dir,
        "--split",
        "test",
        "--model",
        saved_model,
        "--compare",
        int8,
        "--out",
        str(out),
        log=log,
    )
    return ev


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="microcontroller", help="shared dataset name (microcontroller|bccd)"
    )
    parser.add_argument(
        "--labelimg", type=Path, help="use this LabelImg folder instead (e.g. `demo-data` output)"
    )
    parser.add_argument(
        "--base-model", default="mobilenet_v2_ssd", choices=["mobilenet_v1_ssd", "mobilenet_v2_ssd"]
    )
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--input-size", type=int, default=160, help="model.input_size")
    parser.add_argument("--alpha", type=float, default=0.5, help="model.alpha (backbone width)")
    parser.add_argument("--split", default="0.8,0.1,0.1")
    parser.add_argument("--weights", default="bundled", help="model.backbone_weights (bundled | null | FILE)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra render-config key=value"
    )
    parser.add_argument("--work", type=Path, help="working folder (default: a new temp folder, kept)")
    parser.add_argument("--runs", type=int, default=100, help="latency runs per thread count")
    args = parser.parse_args()

    from bench_latency import bench
    from testdata import SHARED_DATASETS, copy_labelimg_folder

    from edgetpu_retrain.evaluate.runtime import decode_image, resize_to_input

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_accuracy_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "steps.log"
    src = SHARED_DATASETS / args.dataset
    images = args.labelimg or copy_labelimg_folder(src, work / "labelimg")
    _, ds = snapshot(images, work, split=args.split, seed=0, log=log)
    sets = [
        f"model.backbone_weights={args.weights}",
        f"train.steps={args.steps}",
        f"model.input_size={args.input_size}",
        f"model.alpha={args.alpha}",
        *args.overrides,
    ]
    cfg, _ = step(
        "render-config",
        "--dataset",
        ds["dataset_dir"],
        "--base-model",
        args.base_model,
        "--out",
        str(work / "config.yaml"),
        *[a for s in sets for a in ("--set", s)],
        log=log,
    )
    trained, train_s = step("train", "--config", cfg["config"], "--out", str(work / "train"), log=log)
    exported, tfl = export_and_quantize(
        cfg["config"],
        trained["checkpoint"],
        ds["dataset_dir"],
        saved_model_dir=work / "saved_model",
        tflite_dir=work / "tflite",
        log=log,
    )
    tpu, _ = step("edgetpu", "--tflite", tfl["int8"], "--out", str(work / "edgetpu"), log=log)
    ev = evaluate_float_and_int8(
        ds["dataset_dir"], exported["saved_model"], tfl["int8"], out=work / "eval.json", log=log
    )

    photo = sorted(Path(images).glob("*.jpg"))[0]
    pixels = decode_image(photo.read_bytes())
    size = cfg["input_size"]
    latency = {
        t: statistics.fmean(
            bench(Path(tfl["int8"]), t, resize_to_input(pixels, (size, size)), runs=args.runs, warmup=10)
        )
        for t in (1, 2)
    }
    summary = {
        "dataset": str(args.labelimg or args.dataset),
        "base_model": args.base_model,
        "overrides": sets,
        "test_images": ev["images"],
        "train_images": ds["counts"]["train"]["images"],
        "steps": trained["steps_done"],
        "train_seconds": round(train_s, 1),
        "train_images_per_sec": trained["images_per_sec"],
        "final_loss": trained["loss"],
        "float_map50": ev["map50"],
        "float_map": ev["map"],
        "int8_map50": ev["compare"]["map50"],
        "int8_map": ev["compare"]["map"],
        "quantization_drop_map50_points": ev["quantization_drop_map50"],
        "int8_bytes": tfl["sizes"]["int8"] if isinstance(tfl.get("sizes"), dict) else None,
        "latency_ms_1_thread": round(latency[1], 3),
        "latency_ms_2_threads": round(latency[2], 3),
        "preflight_ok": tpu["preflight"]["ok"],
        "preflight_reasons": tpu["preflight"]["reasons"],
        "expected_tpu_ops": tpu["preflight"].get("expected_tpu_op_count"),
        "expected_cpu_ops": tpu["preflight"].get("expected_cpu_op_count"),
        "work": str(work),
    }
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
