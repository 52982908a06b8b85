"""bench_peer.py's peer side and shared plumbing: child processes timed, the peer's venv, the YOLO
copy of our dataset snapshot, the peer run, and scoring its detections with our COCO evaluation.

Runs under the project venv (imported by benchmarks/bench_peer.py); peer_yolo.py beside it runs in the
peer's venv. In benchmarks/peer/ so that `make bench` (benchmarks/*.py) does not run it on its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]  # benchmarks/


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_logged(cmd: list[str], log: Path, *, env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run one child to completion; (stdout, wall s, CPU s of it and its descendants)."""
    cpu0, t0 = cpu_of_children(), time.perf_counter()
    with log.open("a") as err:
        done = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, cpu_of_children() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} ... failed (exit {done.returncode}); see {log}")
    return done.stdout, wall, cpu


def ensure_peer_venv(venv: Path, log: Path) -> dict[str, Any]:
    """Create the peer's venv from peer_requirements.txt unless it already imports ultralytics."""
    python = venv / "bin" / "python"
    if (
        python.is_file()
        and subprocess.run(
            [str(python), "-c", "import ultralytics, onnxruntime"], check=False, capture_output=True
        ).returncode
        == 0
    ):
        return {"venv": str(venv), "created": False}
    t0 = time.perf_counter()
    base = shutil.which("python3.11") or sys.executable
    run_logged([base, "-m", "venv", str(venv)], log)
    run_logged([str(python), "-m", "pip", "install", "-r", str(HERE / "peer_requirements.txt")], log)
    size = subprocess.run(
        ["du", "-sm", str(venv)], check=True, capture_output=True, text=True
    ).stdout.split()[0]
    return {
        "venv": str(venv),
        "created": True,
        "install_s": round(time.perf_counter() - t0, 1),
        "size_mb": int(size),
    }


def yolo_label_lines(rows: list[dict[str, str]], index: dict[str, int]) -> list[str]:
    """YOLO 'class cx cy w h' lines (normalized) from annotations.csv rows of one image."""
    lines = []
    for r in rows:
        w, h = float(r["width"]), float(r["height"])
        x0, y0, x1, y1 = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        lines.append(
            f"{index[r['class']]} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
            f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
        )
    return lines


def write_yolo_dataset(dataset_dir: Path, validated_dir: Path, out: Path) -> Path:
    """images/{split}/ (symlinks) + labels/{split}/*.txt + data.yaml, from our snapshot; returns data.yaml."""
    from edgetpu_retrain import common

    manifest = common.read_json(dataset_dir / "manifest.json")
    classes = sorted((int(c["id"]), str(c["name"])) for c in manifest["classes"])
    index = {name: i for i, (_, name) in enumerate(classes)}  # YOLO class i = our i-th label-map id
    paths = {r["filename"]: r["path"] for r in common.read_json(validated_dir / "accepted.json")["images"]}
    rows: dict[str, list[dict[str, str]]] = {}
    with (dataset_dir / manifest["csv"]).open(newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["filename"], []).append(row)
    shutil.rmtree(out, ignore_errors=True)
    for split, rel in manifest["splits"].items():
        names = [n for n in (dataset_dir / rel).read_text().splitlines() if n.strip()]
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for name in names:
            (out / "images" / split / name).symlink_to(paths[name])
            lines = yolo_label_lines(rows.get(name, []), index)
            (out / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(f"{s}\n" for s in lines))
    names_yaml = "".join(f"  {i}: {json.dumps(name)}\n" for i, (_, name) in enumerate(classes))
    data = out / "data.yaml"
    data.write_text(
        f"path: {out}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names_yaml}"
    )
    return data


def score(dataset_dir: Path, detections: dict[str, Any]) -> dict[str, Any]:
    """Our COCO evaluation of per-file detections (0-based classes in YOLO order) on the test split."""
    import numpy as np

    from edgetpu_retrain.evaluate.coco import coco_eval, load_split

    examples, classes = load_split(dataset_dir, "test")
    to_ours = [cid - 1 for cid, _ in classes]
    dets = []
    for ex in examples:
        d = detections.get(ex["filename"], {"boxes": [], "classes": [], "scores": []})
        dets.append(
            {
                "boxes": np.asarray(d["boxes"], np.float32).reshape(-1, 4),
                "classes": np.asarray([to_ours[c] for c in d["classes"]], np.int64),
                "scores": np.asarray(d["scores"], np.float32),
            }
        )
    return coco_eval(examples, dets, classes)


def run_peer(args: argparse.Namespace, work: Path, data_yaml: Path, dataset_dir: Path) -> dict[str, Any]:
    venv = ensure_peer_venv(args.peer_venv, work / "peer_venv.log")
    out = work / "peer"
    cmd = [
        str(args.peer_venv / "bin" / "python"),
        str(HERE / "peer" / "peer_yolo.py"),
        "--data",
        str(data_yaml),
        "--out",
        str(out),
        "--budget-minutes",
        str(args.budget_minutes),
        "--imgsz",
        str(args.input_size),
        "--seed",
        str(args.seed),
        "--conf",
        str(args.conf),
        "--max-det",
        str(args.max_det),
    ]
    if args.netns:  # no network at all: proves nothing is downloaded at run time
        cmd = ["unshare", "-rn", *cmd]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    stdout, wall, cpu = run_logged(cmd, work / "peer.log", env=env)
    raw = json.loads(Path(json.loads(stdout.strip().splitlines()[-1])["peer_result"]).read_text())
    result = {k: v for k, v in raw.items() if k not in ("float", "int8")}
    result.update(venv=venv, process_wall_s=round(wall, 1), process_cpu_s=round(cpu, 1), netns=args.netns)
    for kind in ("float", "int8"):
        if kind in raw:
            result[kind] = {
                **score(dataset_dir, raw[kind]["detections"]),
                **{k: v for k, v in raw[kind].items() if k != "detections"},
            }
            result[kind].pop("per_class", None)
    return result
