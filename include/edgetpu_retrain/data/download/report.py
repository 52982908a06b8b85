"""`download_report.json`: reading the previous one (resume), building the new one, the exit policy.

The report is a description of the folder, not a log of the run: a URL resumed from a previous
report keeps its previous entry, so re-running with the same manifest gives the same report bytes.
The JSON line counts what THIS run did (``downloaded`` vs ``skipped``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError
from edgetpu_retrain.data.download.records import STATUSES, ManifestEntry, Outcome

log = logging.getLogger("edgetpu_retrain.data.download")

REPORT_NAME = "download_report.json"
REPORT_VERSION = 1


def load_previous_report(out_dir: Path) -> dict[str, dict[str, Any]]:
    """URL -> its first previous entry, for resume. A broken report is ignored (we re-fetch), never fatal.

    The first entry matters: a URL listed twice has its real outcome first and a "same URL" entry after.
    """
    path = out_dir / REPORT_NAME
    if not path.is_file():
        return {}
    previous: dict[str, dict[str, Any]] = {}
    try:
        for entry in common.read_json(path).get("entries", []):
            if isinstance(entry, dict) and isinstance(entry.get("url"), str):
                previous.setdefault(entry["url"], entry)
    except (UserError, AttributeError, TypeError) as exc:
        log.warning("%s: unreadable previous report (%s); every URL will be fetched again", path, exc)
        return {}
    return previous


def outcome_from_json(data: dict[str, Any] | None) -> Outcome | None:
    """An Outcome from a previous report entry, or None when the entry does not have the right shape."""
    if not data:
        return None
    known = {f.name: data[f.name] for f in fields(Outcome) if f.name in data}
    try:
        outcome = Outcome(**known)
    except TypeError:
        return None
    return outcome if outcome.status in STATUSES else None


def resumable(previous: dict[str, Any] | None, entry: ManifestEntry, out_dir: Path) -> bool:
    """True when a previous report's entry still describes a file on disk with its recorded sha256."""
    if not previous or previous.get("status") not in ("downloaded", "skipped_existing", "duplicate"):
        return False
    name, sha = previous.get("file"), previous.get("sha256")
    if not isinstance(name, str) or not isinstance(sha, str) or name != Path(name).name:
        return False
    if entry.sha256 is not None and entry.sha256 != sha:
        return False
    path = out_dir / name
    return path.is_file() and common.sha256_file(path) == sha


def repeat_of(entry: ManifestEntry, first: Outcome) -> Outcome:
    """A URL listed twice: no second request; it shares the first entry's fate."""
    if first.status == "failed":
        return replace(
            first,
            line=entry.line,
            attempts=0,
            reason=f"same URL as line {first.line}, which failed: {first.reason}",
        )
    return replace(
        first,
        line=entry.line,
        status="duplicate",
        attempts=0,
        duplicate_of=first.url,
        reason=f"same URL as line {first.line}; remove one of them",
    )


def summarize(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return {**counts, "total": len(outcomes)}


def build_report(outcomes: Sequence[Outcome], *, manifest: Path) -> dict[str, Any]:
    """The report object: no timestamps or timings, so the same manifest and folder give the same bytes."""
    return {
        "version": REPORT_VERSION,
        "manifest": str(manifest),
        "summary": summarize(outcomes),
        "entries": [o.to_json() for o in sorted(outcomes, key=lambda o: o.line)],
    }


def log_outcome(outcome: Outcome, *, position: int, total: int, resumed: bool) -> None:
    prefix = f"[{position}/{total}] {outcome.url}"
    if outcome.status == "failed":
        log.warning("%s failed after %d attempt(s): %s", prefix, outcome.attempts, outcome.reason)
    elif outcome.status == "duplicate":
        log.info("%s duplicate of %s", prefix, outcome.duplicate_of)
    else:
        how = "already present" if resumed or outcome.status == "skipped_existing" else "downloaded"
        log.info("%s %s -> %s (%s bytes)", prefix, how, outcome.file, outcome.bytes)


def finish(
    outcomes: Sequence[Outcome],
    *,
    manifest: Path,
    out_dir: Path,
    report_path: Path,
    fetched_now: int,
    fail_on_error: bool,
) -> dict[str, Any]:
    """Apply the exit policy and build the JSON line (after the report is on disk, for debugging).

    A run where every URL failed, or any URL with ``fail_on_error``, raises `UserError` (exit 2).
    """
    failed = [o for o in outcomes if o.status == "failed"]
    if failed and (len(failed) == len(outcomes) or fail_on_error):
        first = failed[0]
        scope = "all" if len(failed) == len(outcomes) else f"{len(failed)} of"
        raise UserError(
            f"{manifest}: {scope} {len(outcomes)} URL(s) failed (line {first.line}: "
            f"{first.reason}); see {report_path}"
        )
    # every file the manifest's URLs now map to, once each, in manifest order
    files = list(dict.fromkeys(str(out_dir / o.file) for o in outcomes if o.status != "failed" and o.file))
    placed = sum(o.status in ("downloaded", "skipped_existing") for o in outcomes)
    return {
        "out_dir": str(out_dir),
        "report": str(report_path),
        "downloaded": fetched_now,
        "skipped": placed - fetched_now,
        "duplicates": sum(o.status == "duplicate" for o in outcomes),
        "failed": len(failed),
        "files": files,
    }
