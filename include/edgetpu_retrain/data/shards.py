"""Sharded TFRecord writing for build-dataset: which images go in which shard, and the writers.

Within a split, examples go to shards round-robin in a seeded shuffled order (so a small shuffle
buffer in training still sees mixed classes). Default shard count per split: ceil(bytes / 150 MB),
at least 1; an explicit count is capped at the split's image count. An empty split writes no shard.
Shards are written by a ProcessPoolExecutor (spawn; one shard per task) when the images are large
enough to pay for starting workers (one per 32 MB); each image's sha256 is checked against
accepted.json.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from edgetpu_retrain.common import UserError, sha256_bytes

TARGET_SHARD_BYTES = 150 * 1000 * 1000
SMALL_JOB_BYTES = 32 * 1000 * 1000  # default workers: one per 32 MB of images, up to os.cpu_count()

Task = tuple[str, list[dict]]  # (shard path, image records)


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}"


def plan_split(
    split: str, order: Sequence[dict], *, shards: int | None, root: Path
) -> tuple[list[str], list[Task]]:
    """(shard paths relative to `root`, write tasks) for one split's records in their shard order
    (image i goes to shard i mod count); none when the split is empty."""
    if not order:
        return [], []
    total = sum(r["_size"] for r in order)
    n_shards = shards if shards is not None else max(1, math.ceil(total / TARGET_SHARD_BYTES))
    n_shards = max(1, min(n_shards, len(order)))
    rel = [f"tfrecords/{shard_name(split, i, n_shards)}" for i in range(n_shards)]
    return rel, [(str(root / rel[i]), list(order[i::n_shards])) for i in range(n_shards)]


def default_workers(images: Sequence[dict]) -> int:
    """All cores, but no process start-up for small datasets (one worker per 32 MB of images)."""
    total_bytes = sum(r["_size"] for r in images)
    return min(os.cpu_count() or 1, max(1, total_bytes // SMALL_JOB_BYTES))


def write_shard(task: Task) -> tuple[str, int, int]:
    """Worker: write one shard. Returns (path, examples, bytes). Runs in a fresh (spawned) process."""
    from edgetpu_retrain.data.tfrecord import TFRecordWriter, encode_example

    path, records = task
    with TFRecordWriter(path) as writer:
        for rec in records:
            try:
                data = Path(rec["path"]).read_bytes()
            except OSError as exc:
                raise UserError(f"{rec['path']}: cannot read image ({exc}); run validate first") from exc
            digest = sha256_bytes(data)
            if rec.get("sha256") and rec["sha256"] != digest:
                raise UserError(
                    f"{rec['path']}: image changed since validate (sha256 differs); run validate first"
                )
            writer.write(encode_example(rec, data, sha256=digest))
    return path, len(records), os.path.getsize(path)


def run_tasks(tasks: list[Task], workers: int) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            write_shard(task)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: safe even when the parent process has TensorFlow threads (e.g. inside pytest)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # largest shards first, so the pool's tail is short
        order = sorted(tasks, key=lambda t: -sum(int(r.get("_size", 0)) for r in t[1]))
        for _ in pool.map(write_shard, order):
            pass
