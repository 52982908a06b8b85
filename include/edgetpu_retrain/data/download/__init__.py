"""`edgetpu-retrain download`: fetch the images a URL manifest lists into one image folder.

The first step of the DAG: it turns "a list of links" into a folder LabelImg and `validate` can read,
without ever trusting the network. Every URL gets one outcome in `OUT/download_report.json`:

- ``downloaded``       fetched, decoded as an image, written atomically under a safe name;
- ``skipped_existing`` the file was already in OUT with the expected bytes (resume);
- ``duplicate``        same bytes as an earlier URL: one file, this entry points at it;
- ``failed``           with a reason that says what went wrong and, where the user can, how to fix it.

The parts: `manifest` (parsing), `fetch` (http(s) with limits, retries and backoff), `images`
(decoding), `naming` (safe file names), `place` (one URL -> one file), `report` (resume, report, exit
policy). This module holds the verb: its flags and the loop over the manifest.

Exit policy: a missing/empty/unparseable manifest, or every URL failing, raises `UserError` (exit 2)
after the report is written; partial failures succeed unless ``--fail-on-error`` is given.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError
from edgetpu_retrain.data.download.fetch import FetchOptions
from edgetpu_retrain.data.download.manifest import read_manifest
from edgetpu_retrain.data.download.naming import redact_url
from edgetpu_retrain.data.download.place import FolderState, process_entry
from edgetpu_retrain.data.download.records import ManifestEntry, Outcome
from edgetpu_retrain.data.download.report import (
    REPORT_NAME,
    build_report,
    finish,
    load_previous_report,
    log_outcome,
    repeat_of,
)

log = logging.getLogger("edgetpu_retrain.data.download")


# --------------------------------------------------------------------------------------------------
# CLI


def _number_flag(convert: type, *, minimum: float, strict: bool, unit: str) -> Callable[[str], Any]:
    """An argparse `type` that parses with `convert` and rejects values below (or at) `minimum`."""
    noun = "a number of seconds" if unit else "an integer"
    bound = f"{'>' if strict else '>='} {minimum:g}{' ' + unit if unit else ''}"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from exc
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    return parse


def parse_size(text: str) -> int:
    """Bytes from '5000000', '50M', '2MiB', '500k' (powers of 1024), so flags stay readable."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use bytes or a K/M/G suffix, e.g. 50M")
    value = int(match.group(1)) * 1024 ** "_kmg".index(match.group(2).lower() or "_")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0 bytes")
    return value


_positive_float = _number_flag(float, minimum=0, strict=True, unit="seconds")
_non_negative_float = _number_flag(float, minimum=0, strict=False, unit="seconds")
_non_negative_int = _number_flag(int, minimum=0, strict=False, unit="")

# (flag, FetchOptions field, parser, metavar, help): the flags that set one network limit each.
_LIMIT_FLAGS: tuple[tuple[str, str, Callable[[str], Any], str, str], ...] = (
    (
        "--timeout-connect",
        "connect_timeout",
        _positive_float,
        "S",
        "seconds to wait for a TCP/TLS connection (default %(default)s)",
    ),
    (
        "--timeout-read",
        "read_timeout",
        _positive_float,
        "S",
        "seconds to wait for each read from the server (default %(default)s)",
    ),
    (
        "--max-bytes",
        "max_bytes",
        parse_size,
        "N",
        "largest accepted body, e.g. 50M (default %(default)s bytes)",
    ),
    (
        "--retries",
        "retries",
        _non_negative_int,
        "N",
        "extra attempts on 5xx, connection errors and timeouts (default %(default)s)",
    ),
    (
        "--backoff",
        "backoff",
        _non_negative_float,
        "S",
        "first retry delay; doubles on each retry (default %(default)s)",
    ),
    (
        "--max-redirects",
        "max_redirects",
        _non_negative_int,
        "N",
        "redirects followed per URL (default %(default)s)",
    ),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `edgetpu-retrain download`; validated here so bad values fail before any request."""
    parser.add_argument(
        "--manifest",
        required=True,
        type=Path,
        metavar="FILE",
        help="URL list (one per line, '#' comments) or CSV with header url[,sha256][,filename]",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="image folder to download into (created)"
    )
    defaults = FetchOptions()
    for flag, option, parse, metavar, help_text in _LIMIT_FLAGS:
        parser.add_argument(
            flag, type=parse, default=getattr(defaults, option), metavar=metavar, help=help_text
        )
    parser.add_argument(
        "--fail-on-error",
        action="store_true",
        help="fail the step if any URL failed (default: only if every URL failed)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """CLI entry: flags -> FetchOptions -> download(); the dict becomes the last stdout line."""
    options = FetchOptions(**{option: getattr(args, _dest(flag)) for flag, option, *_ in _LIMIT_FLAGS})
    return download(
        manifest=args.manifest, out_dir=args.out, options=options, fail_on_error=args.fail_on_error
    )


# --------------------------------------------------------------------------------------------------
# The step


def _make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --out exists and is not a folder; choose another path")
    common.make_dir(out_dir, what="the --out folder", fix="check the path and its permissions")


def _process_all(
    entries: Sequence[ManifestEntry],
    *,
    out_dir: Path,
    options: FetchOptions,
    sleep: Callable[[float], None],
) -> tuple[list[Outcome], int]:
    """(one outcome per entry in manifest order, files this run wrote: the JSON line's "downloaded")."""
    previous = load_previous_report(out_dir)
    state = FolderState(out_dir=out_dir)
    outcomes: list[Outcome] = []
    fetched_now = 0
    seen_urls: dict[str, int] = {}
    for position, entry in enumerate(entries, start=1):
        if entry.url in seen_urls:
            outcome = repeat_of(entry, outcomes[seen_urls[entry.url]])
            no_request = True
        else:
            seen_urls[entry.url] = len(outcomes)
            outcome, no_request = process_entry(
                entry, state=state, options=options, previous=previous.get(redact_url(entry.url)), sleep=sleep
            )
        fetched_now += int(outcome.status == "downloaded" and not no_request)
        outcomes.append(outcome)
        log_outcome(outcome, position=position, total=len(entries), resumed=no_request)
    return outcomes, fetched_now


def download(
    *,
    manifest: Path,
    out_dir: Path,
    options: FetchOptions,
    fail_on_error: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Fetch every manifest URL into `out_dir`, write the report, return the JSON-line dict."""
    manifest = Path(manifest).resolve()
    out_dir = Path(out_dir).resolve()
    entries = read_manifest(manifest)
    _make_out_dir(out_dir)
    log.info("%s: %d URL(s) -> %s", manifest, len(entries), out_dir)
    outcomes, fetched_now = _process_all(entries, out_dir=out_dir, options=options, sleep=sleep)
    report = build_report(outcomes, manifest=manifest)
    report_path = common.write_json(out_dir / REPORT_NAME, report)
    log.info("%s: %s", report_path, ", ".join(f"{k} {v}" for k, v in report["summary"].items()))
    return finish(
        outcomes,
        manifest=manifest,
        out_dir=out_dir,
        report_path=report_path,
        fetched_now=fetched_now,
        fail_on_error=fail_on_error,
    )
