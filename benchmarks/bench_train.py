"""Training speed: images/s, s/step, steps and final losses of the real `train` step.

Builds a dataset snapshot from a shared LabelImg dataset (../shared/datasets/<name>) with the real
`validate` + `build-dataset` verbs, renders a config per (base model, input size) and trains each for a
time budget (the first step, i.e. tracing, is not counted in s/step). Prints one line per run and a
JSON summary as the last line.

    .venv/bin/python benchmarks/bench_train.py --base-model mobilenet_v2_ssd --head ssdlite \
        --input-size 320 --input-size 256 --input-size 192 --batch-size 8 --minutes 1.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO / "tests"))

from edgetpu_retrain.model import config  # noqa: E402


def build_dataset(name: str, work: Path, limit: int | None) -> Path:
    from testdata import SHARED_DATASETS, copy_labelimg_folder, train_only_snapshot

    src = SHARED_DATASETS / name
    images = copy_labelimg_folder(src, work / "labelimg", first=limit or None)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the benchmark's own lines
        train_only_snapshot(images, work)
    return work / "ds"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="microcontroller", help="shared dataset name (microcontroller|bccd)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument(
        "--base-model", action="append", choices=config.BASE_MODELS, help="repeatable; default both"
    )
    parser.add_argument("--head", default=None, choices=config.HEADS, help="default: the template's")
    parser.add_argument("--input-size", type=int, action="append", help="repeatable; default the template's")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=1.0, help="wall time per run (after the first step)")
    parser.add_argument("--steps", type=int, default=100000, help="max steps per run")
    parser.add_argument("--jit", action="store_true", help="train.jit_compile=true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set key=value")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from edgetpu_retrain.model import train

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    print(f"work dir: {work}", file=sys.stderr)
    dataset = build_dataset(args.dataset, work, args.limit)
    rows = []
    for base in args.base_model or list(config.BASE_MODELS):
        for size in args.input_size or [None]:
            sets = [
                f"model.alpha={args.alpha}",
                "model.backbone_weights=null",
                f"train.batch_size={args.batch_size}",
                f"train.steps={args.steps}",
                "train.log_every=5",
                f"train.checkpoint_every={args.steps}",
                f"train.jit_compile={'true' if args.jit else 'false'}",
                *args.overrides,
            ]
            if args.head:
                sets.append(f"model.head={args.head}")
            if size:
                sets.append(f"model.input_size={size}")
            text, cfg = config.render_config(dataset, base, config.parse_set(sets))
            cfg_path = work / f"{base}_{size}.yaml"
            cfg_path.write_text(text)
            t0 = time.perf_counter()
            result = train.train(
                cfg,
                work / f"run_{base}_{cfg.model.input_size}",
                config_path=cfg_path,
                max_seconds=args.minutes * 60,
            )
            ips = result["images_per_sec"]
            row = {
                "base_model": base,
                "head": cfg.model.head,
                "input_size": cfg.model.input_size,
                "alpha": cfg.model.alpha,
                "batch_size": cfg.train.batch_size,
                "jit": cfg.train.jit_compile,
                "steps": result["steps_done"],
                "images_per_sec": ips,
                "sec_per_step": round(cfg.train.batch_size / ips, 3) if ips else None,
                "loss": result["loss"],
                "box_loss": result["box_loss"],
                "class_loss": result["class_loss"],
                "wall_s": round(time.perf_counter() - t0, 1),
                "cpus": os.cpu_count(),
            }
            rows.append(row)
            print(
                f"{base} {cfg.model.head} {cfg.model.input_size}px alpha {cfg.model.alpha} batch "
                f"{cfg.train.batch_size} jit={cfg.train.jit_compile}: {row['sec_per_step']} s/step, {ips} "
                "img/s, "
                f"{row['steps']} steps, loss {row['loss']:.3f} (box {row['box_loss']:.3f} class "
                f"{row['class_loss']:.3f}), wall {row['wall_s']} s",
                flush=True,
            )
    print(json.dumps({"dataset": args.dataset, "runs": rows}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
