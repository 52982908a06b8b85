"""Data-step throughput: validate + build-dataset on a temp copy of ../shared/datasets/bccd.

    .venv/bin/python benchmarks/bench_data.py [--repeat N] [--workers N] [--compare-tf]

Prints plain lines: images/s and wall time for each verb (each run in a fresh subprocess, as the DAG
runs it), peak RSS of that process and of its worker processes (resource.getrusage), and with
--compare-tf the in-process time of our TFRecord writer against tf.io.TFRecordWriter +
tf.train.Example on the same records. --repeat N copies every bccd image N times (renamed) for a larger
input.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BCCD = Path(os.environ.get("EDGETPU_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "bccd"


def child(argv: list[str]) -> int:
    """Run one verb in this process, then print its peak RSS (self and children) as a JSON line."""
    from edgetpu_retrain import cli

    start = time.perf_counter()
    code = cli.main(argv)
    wall = time.perf_counter() - start
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {"code": code, "wall": wall, "rss_self_mb": self_kb / 1024, "rss_children_mb": kids_kb / 1024}
        )
    )
    return code


def run_verb(argv: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
    lines = proc.stdout.strip().splitlines()
    stats = json.loads(lines[-1])
    stats["process_wall"] = total
    stats["result"] = json.loads(lines[-2])
    return stats


def copy_bccd(dst: Path, repeat: int) -> int:
    dst.mkdir(parents=True)
    count = 0
    for image in sorted((BCCD / "images").iterdir()):
        xml = (BCCD / "annotations" / f"{image.stem}.xml").read_text()
        for r in range(repeat):
            stem = image.stem if r == 0 else f"{image.stem}_r{r}"
            data = image.read_bytes()
            if r:  # a distinct file (validate rejects byte-identical duplicates): change a trailing byte
                data = data + bytes([r % 256])
            (dst / f"{stem}{image.suffix}").write_bytes(data)
            (dst / f"{stem}.xml").write_text(xml.replace(image.name, f"{stem}{image.suffix}"))
            count += 1
    return count


def compare_writers(validated: Path, tmp: Path) -> None:
    from edgetpu_retrain.data import crc, tfrecord
    from edgetpu_retrain.data.validated import load_validated

    _, images, _, _ = load_validated(validated)
    blobs = [(rec, Path(rec["path"]).read_bytes()) for rec in images]
    mb = sum(len(b) for _, b in blobs) / 1e6
    start = time.perf_counter()
    crc.crc32c(bytes(1000))  # numpy import + tables: once per process
    print(
        f"writer ours: {time.perf_counter() - start:.3f} s one-time set-up per process (numpy import, CRC "
        "tables)"
    )
    start = time.perf_counter()
    with tfrecord.TFRecordWriter(tmp / "ours.tfrecord") as writer:
        for rec, data in blobs:
            writer.write(tfrecord.encode_example(rec, data))
    ours = time.perf_counter() - start
    print(
        f"writer ours (hand-written Example + numpy CRC32C): {ours:.3f} s for {len(blobs)} examples, "
        f"{mb / ours:.0f} MB/s"
    )
    start = time.perf_counter()
    import tensorflow as tf

    imported = time.perf_counter() - start
    start = time.perf_counter()
    with tf.io.TFRecordWriter(str(tmp / "tf.tfrecord")) as writer:
        for rec, data in blobs:
            feats = tfrecord.example_features(rec, data)
            feature = {}
            for key, (kind, values) in feats.items():
                if kind == "bytes":
                    feature[key] = tf.train.Feature(
                        bytes_list=tf.train.BytesList(
                            value=[v if isinstance(v, bytes) else str(v).encode() for v in values]
                        )
                    )
                elif kind == "float":
                    feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
                else:
                    feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString(deterministic=True))
    tf_time = time.perf_counter() - start
    same = (tmp / "ours.tfrecord").read_bytes() == (tmp / "tf.tfrecord").read_bytes()
    print(
        f"writer tf.io.TFRecordWriter + tf.train.Example: {tf_time:.3f} s + {imported:.2f} s TF import per "
        "process, "
        f"{mb / tf_time:.0f} MB/s; byte-identical to ours: {same}"
    )
    start = time.perf_counter()
    for _ in tfrecord.read_examples([tmp / "ours.tfrecord"]):
        pass
    print(f"reader ours (pure python, CRC-checked): {time.perf_counter() - start:.3f} s")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=1, help="copies of each bccd image (default 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="build-dataset --workers")
    parser.add_argument(
        "--shards", type=int, default=None, help="build-dataset --shards (default: its own default)"
    )
    parser.add_argument("--compare-tf", action="store_true", help="also time tf.io.TFRecordWriter in-process")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench_data.") as tmp_name:
        tmp = Path(tmp_name)
        n = copy_bccd(tmp / "incoming", args.repeat)
        mb = sum(p.stat().st_size for p in (tmp / "incoming").glob("*.jpg")) / 1e6
        print(f"input: {n} images ({mb:.1f} MB) from {BCCD}, cpus {os.cpu_count()}")
        v = run_verb(["validate", "--images", str(tmp / "incoming"), "--out", str(tmp / "validated")])
        print(
            f"validate: {v['wall']:.2f} s in verb ({v['process_wall']:.2f} s with interpreter start), "
            f"{n / v['wall']:.0f} images/s; accepted {v['result']['accepted']}, rejected "
            f"{v['result']['rejected']}"
        )
        print(
            f"validate: peak RSS {v['rss_self_mb']:.0f} MB main process, {v['rss_children_mb']:.0f} MB "
            "largest worker"
        )
        build = [
            "build-dataset",
            "--validated",
            str(tmp / "validated"),
            "--out",
            str(tmp / "dataset"),
            "--workers",
            str(args.workers),
        ]
        if args.shards:
            build += ["--shards", str(args.shards)]
        b = run_verb(build)
        shards = sum(len(x) for x in b["result"]["tfrecords"].values())
        print(
            f"build-dataset: {b['wall']:.2f} s in verb ({b['process_wall']:.2f} s with interpreter start), "
            f"{n / b['wall']:.0f} images/s, {mb / b['wall']:.0f} MB/s; {shards} shards, workers "
            f"{args.workers}"
        )
        print(
            f"build-dataset: peak RSS {b['rss_self_mb']:.0f} MB main process, {b['rss_children_mb']:.0f} MB "
            "largest worker"
        )
        b1 = run_verb(
            build[:-2] + ["--workers", "1"] + (["--shards", str(args.shards)] if args.shards else [])
        )
        print(
            f"build-dataset --workers 1: {b1['wall']:.2f} s, {n / b1['wall']:.0f} images/s, peak RSS "
            f"{b1['rss_self_mb']:.0f} MB"
        )
        if args.compare_tf:
            compare_writers(tmp / "validated", tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
