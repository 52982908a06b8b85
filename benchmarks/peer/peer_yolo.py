"""The peer side of bench_peer.py: Ultralytics YOLO11n from its yaml, trained and measured offline.

Runs under the peer's own venv (benchmarks/peer_requirements.txt), never under the project venv:

    benchmarks/.peer-venv/bin/python benchmarks/peer/peer_yolo.py --data DIR/data.yaml --out DIR \
        --budget-minutes 15 [--imgsz 320] [--conf 0.001] [--max-det 100] [--int8 | --no-int8]

1. Offline set-up before ultralytics is imported: YOLO_OFFLINE (no online checks, no telemetry),
   YOLO_AUTOINSTALL=0 (no pip at run time), a private YOLO_CONFIG_DIR with `sync` and the
   integrations off, and a stand-in Arial.ttf (a copy of matplotlib's DejaVuSans) so the font check
   finds a file instead of downloading one. `amp=False` (the AMP check downloads yolo11n.pt; AMP is
   CUDA-only anyway), `plots=False`, `pretrained=False`.
2. Train `yolo11n.yaml` (random init) on CPU for `time=` budget hours (Ultralytics re-sizes the epochs
   after the first one and stops when the budget, counted from the first batch and including its
   per-epoch validation, is spent). Callbacks measure the training phase (first batch to the last
   epoch's end): wall seconds, CPU seconds of the process and its data-loader workers, images seen.
3. Predict the test images listed in data.yaml with best.pt (conf, max_det as given; Ultralytics' own
   letterbox and NMS) and write the detections for the caller's COCO evaluation; also record
   Ultralytics' own `val` on the test split.
4. int8: Ultralytics' TFLite int8 export needs TensorFlow<=2.19 + onnx2tf and downloads a calibration
   sample, so it cannot run here. Ultralytics' own ONNX int8 export is used instead
   (`format=onnx, quantize=8`: ONNX Runtime static QDQ quantization of the Conv/Gemm/MatMul nodes,
   calibrated on the train split; everything else, e.g. SiLU and the box/class decode, stays float),
   predicted through the same Ultralytics API. This is NOT full-integer like an Edge TPU .tflite:
   it flatters the peer's int8 figures.

Writes OUT/peer_result.json and prints it as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def offline_setup(out: Path) -> Path:
    """Environment and settings that keep Ultralytics off the network; returns the config dir."""
    cfg_dir = out / "ultralytics_config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "0",
            "YOLO_CONFIG_DIR": str(cfg_dir),
            "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "1"),
            "MPLBACKEND": "Agg",
        }
    )
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (cfg_dir / name).exists():
            shutil.copyfile(font, cfg_dir / name)
    from ultralytics import settings

    settings.update(
        {
            "sync": False,
            "clearml": False,
            "comet": False,
            "dvc": False,
            "mlflow": False,
            "raytune": False,
            "tensorboard": False,
            "wandb": False,
            "vscode_msg": False,
            "openvino_msg": False,
            "datasets_dir": str(out),
            "weights_dir": str(out / "weights"),
            "runs_dir": str(out / "runs"),
        }
    )
    return cfg_dir


def cpu_seconds() -> float:
    """User + system CPU of this process, its reaped children and its live descendants (loader workers)."""
    import psutil

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # a worker that ended meanwhile is in RUSAGE_CHILDREN once reaped
            pass
    return total


class PhaseMeter:
    """Wall/CPU/images of the training phase, read from the trainer's callbacks."""

    def __init__(self) -> None:
        self.start: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None
        self.images = 0
        self.batch_wall = 0.0
        self._epoch_t0 = 0.0
        self._epoch_batches = 0
        self._epoch_images = 0

    def attach(self, model: Any) -> None:
        model.add_callback("on_train_epoch_start", self.epoch_start)
        model.add_callback(
            "on_train_batch_start", self.batch_start
        )  # the batch that trips `time` still trains
        model.add_callback("on_train_epoch_end", self.epoch_end)
        model.add_callback("on_fit_epoch_end", self.fit_epoch_end)

    def epoch_start(self, trainer: Any) -> None:
        now = (time.perf_counter(), cpu_seconds())
        self.start = self.start or now
        self._epoch_t0, self._epoch_batches, self._epoch_images = now[0], 0, 0

    def batch_start(self, trainer: Any) -> None:
        self._epoch_batches += 1
        self._epoch_images = min(self._epoch_batches * trainer.batch_size, len(trainer.train_loader.dataset))

    def epoch_end(self, trainer: Any) -> None:  # batches done, validation not yet
        self.batch_wall += time.perf_counter() - self._epoch_t0

    def fit_epoch_end(self, trainer: Any) -> None:  # after the epoch's validation and checkpoint
        self.images += self._epoch_images
        self._epoch_images = 0
        self.last = (time.perf_counter(), cpu_seconds())

    def summary(self) -> dict[str, float]:
        if not self.start or not self.last:
            return {"train_wall_s": 0.0, "train_cpu_s": 0.0, "train_images_seen": 0}
        wall, cpu = self.last[0] - self.start[0], self.last[1] - self.start[1]
        return {
            "train_wall_s": round(wall, 2),
            "train_cpu_s": round(cpu, 2),
            "train_images_seen": self.images,
            "images_per_sec": round(self.images / wall, 3) if wall else 0.0,
            "images_per_cpu_sec": round(self.images / cpu, 3) if cpu else 0.0,
            "loop_images_per_sec": round(self.images / self.batch_wall, 3) if self.batch_wall else 0.0,
        }


def train(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")  # architecture only: random init, nothing to download
    meter = PhaseMeter()
    meter.attach(model)
    model.train(
        data=str(args.data),
        imgsz=args.imgsz,
        epochs=1000,
        time=args.budget_minutes / 60.0,
        device="cpu",
        amp=False,
        plots=False,
        pretrained=False,
        seed=args.seed,
        batch=args.batch,
        workers=args.workers,
        project=str(args.out / "runs"),
        name="train",
        exist_ok=True,
        verbose=True,
    )
    trainer = model.trainer
    best = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    own = {k: round(float(v), 6) for k, v in (trainer.metrics or {}).items() if isinstance(v, (int, float))}
    info = {
        **meter.summary(),
        "epochs_done": int(trainer.epoch) + 1,
        "weights": str(best),
        "batch_size": int(trainer.batch_size),
        "train_images": len(trainer.train_loader.dataset),
        "ultralytics_final_val": own,
    }
    return best, info


def test_images(data_yaml: Path) -> list[Path]:
    import yaml

    data = yaml.safe_load(data_yaml.read_text())
    folder = Path(data["path"]) / data["test"]
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def scoring_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings predict and Ultralytics' own val share, so both score the same detections."""
    return {"imgsz": args.imgsz, "conf": args.conf, "max_det": args.max_det, "device": "cpu"}


def predict(weights: Path, images: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """{file name: {"boxes" [[ymin, xmin, ymax, xmax]] normalized, "classes" 0-based, "scores"}}."""
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    found: dict[str, Any] = {}
    for res in model.predict(
        [str(p) for p in images],
        **scoring_settings(args),
        stream=True,
        verbose=False,
    ):
        xyxy = res.boxes.xyxyn.cpu().numpy()
        found[Path(res.path).name] = {
            "boxes": xyxy[:, [1, 0, 3, 2]].round(6).tolist(),
            "classes": res.boxes.cls.cpu().numpy().astype(int).tolist(),
            "scores": res.boxes.conf.cpu().numpy().round(6).tolist(),
        }
    return found


def own_val(weights: Path, args: argparse.Namespace) -> dict[str, float]:
    from ultralytics import YOLO

    m = YOLO(str(weights), task="detect").val(
        data=str(args.data),
        split="test",
        **scoring_settings(args),
        plots=False,
        verbose=False,
        project=str(args.out / "runs"),
        name="val",
        exist_ok=True,
    )
    return {"map50": round(float(m.box.map50), 6), "map": round(float(m.box.map), 6)}


def export_int8(weights: Path, args: argparse.Namespace) -> Path:
    """Ultralytics' ONNX int8 export, calibrated on the train split (see the module docstring)."""
    from ultralytics import YOLO

    out = YOLO(str(weights), task="detect").export(
        format="onnx",
        quantize=8,
        data=str(args.data),
        split="train",
        imgsz=args.imgsz,
        device="cpu",
        batch=1,
        verbose=False,
    )
    if not out or not Path(out).is_file():
        raise SystemExit(f"{weights}: Ultralytics' ONNX int8 export wrote nothing (got {out!r})")
    return Path(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="data.yaml written by bench_peer.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-minutes", type=float, required=True)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16, help="Ultralytics' default")
    parser.add_argument("--workers", type=int, default=2, help="data-loader processes (2 cores here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conf", type=float, default=0.001)
    parser.add_argument("--max-det", type=int, default=100)
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    result_fd = os.dup(1)
    os.dup2(2, 1)  # Ultralytics logs to stdout: send it to the caller's log, keep stdout for the JSON line
    offline_setup(args.out)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    best, info = train(args)
    images = test_images(args.data)
    result: dict[str, Any] = {
        **info,
        "test_images": len(images),
        "float": {"detections": predict(best, images, args), "ultralytics_val": own_val(best, args)},
    }
    if args.int8:
        int8 = export_int8(best, args)
        result["int8"] = {
            "model": str(int8),
            "route": "ultralytics onnx int8 (ONNX Runtime QDQ, Conv/Gemm/MatMul)",
            "detections": predict(int8, images, args),
            "ultralytics_val": own_val(int8, args),
        }
    path = args.out / "peer_result.json"
    path.write_text(json.dumps(result, sort_keys=True))
    sys.stdout.flush()
    os.write(result_fd, (json.dumps({"peer_result": str(path)}) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
