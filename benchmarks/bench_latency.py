"""Latency of exported .tflite detectors under ai-edge-litert (CPU, XNNPACK), at 1 and 2 threads.

    .venv/bin/python benchmarks/bench_latency.py MODEL.tflite [MODEL.tflite ...]
        [--threads 1,2] [--runs 100] [--warmup 10] [--image IMAGE.jpg]

For each model and thread count: `--warmup` untimed invocations, then the mean (and median, p90,
min) of `--runs` timed `invoke()` calls (model time only: the input tensor is set once, outside the
timed loop; results are read back with get_tensor after every call like a real caller). The input is
a real photo resized to the model input (default: the first image of ../shared/datasets/microcontroller)
so the NMS stage sees real detections. Prints plain lines: file size, input type/shape, op count, and
one latency line per thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
SHARED = Path(os.environ.get("EDGETPU_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def default_image() -> Path:
    images = sorted((SHARED / "microcontroller" / "images").glob("*.jpg"))
    if not images:
        raise SystemExit(f"no image given and none in {SHARED / 'microcontroller' / 'images'}; pass --image")
    return images[0]


def bench(path: Path, threads: int, image: np.ndarray, *, runs: int, warmup: int) -> list[float]:
    from ai_edge_litert.interpreter import Interpreter

    from edgetpu_retrain.evaluate.runtime import quantize_input

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    # feed exactly what the runtime would (uint8 as is, float as 0..255, other quantization applied)
    quantization = inp.get("quantization", (0.0, 0))
    interpreter.set_tensor(inp["index"], quantize_input(image[np.newaxis], inp["dtype"], quantization))
    outputs = [d["index"] for d in interpreter.get_output_details()]
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
        for index in outputs:
            interpreter.get_tensor(index)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", nargs="+", type=Path, help=".tflite files (e.g. runs/<id>/model_int8.tflite)"
    )
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--image", type=Path, help="input photo (default: first microcontroller image)")
    args = parser.parse_args(argv)

    from edgetpu_retrain.evaluate.runtime import decode_image, resize_to_input
    from edgetpu_retrain.export.flatbuffer import read_model

    photo = args.image or default_image()
    pixels = decode_image(photo.read_bytes())
    print(
        f"image {photo.name} {pixels.shape[1]}x{pixels.shape[0]}, runs {args.runs} after {args.warmup} "
        "warm-up, "
        f"cpu_count {os.cpu_count()}"
    )
    for path in args.models:
        if not path.is_file():
            print(f"{path}: not found", file=sys.stderr)
            return 2
        info = read_model(path)
        (tensor,) = info.input_tensors
        size = path.stat().st_size
        print(
            f"{path}: size {size} bytes ({size / 2**20:.2f} MiB), input {tensor.type} {list(tensor.shape)}, "
            f"{len(info.ops)} ops"
        )
        image = resize_to_input(pixels, (tensor.shape[1], tensor.shape[2]))
        for threads in (int(t) for t in args.threads.split(",") if t.strip()):
            times = bench(path, threads, image, runs=args.runs, warmup=args.warmup)
            ordered = sorted(times)
            print(
                f"  threads {threads}: mean {statistics.fmean(times):.3f} ms, median "
                f"{statistics.median(times):.3f} ms, "
                f"p90 {ordered[int(0.9 * (len(ordered) - 1))]:.3f} ms, min {ordered[0]:.3f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
