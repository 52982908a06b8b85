"""Helpers every step shares: user-facing errors, atomic writes, hashing and the JSON result line.

The step contract (docs/contracts.md): the LAST stdout line of a verb is one JSON object; logs go to
stderr; exit 0 = success, EXIT_NOTHING_TO_DO = nothing to do (Airflow maps it to "skipped"), any other
code = failure with a one-line message naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
EXIT_NOTHING_TO_DO = 99

log = logging.getLogger("edgetpu_retrain")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, *, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; artifacts must be readable by other containers' users."""
    path.chmod((0o777 if directory else 0o666) & ~_umask())


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad data): shown as one line, exit code 2."""

    def __init__(self, message: str, *, exit_code: int = EXIT_USER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NothingToDo(Exception):
    """No new work (e.g. no new labeled drop): exit code 99, which the DAG maps to a skipped task."""


def is_none(value: Any) -> bool:
    """True for None and for the strings a templated CLI flag uses to mean "no value" ('', none, null)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"})


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large images do not load twice into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it over `target` only if the block succeeds.

    Readers never see a half-written artifact, and a killed step leaves the old file intact.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish_mode(tmp_path, directory=False)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp directory beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp_path
        _publish_mode(tmp_path, directory=True)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp_path, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, target)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, 2-space indent, trailing newline) so re-runs give the same bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; run the step that writes it first or fix the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for non-UTF-8 bytes
        raise UserError(
            f"{path}: not valid JSON ({exc}); delete it and re-run the step that writes it"
        ) from exc


def require_dir(path: str | os.PathLike[str], *, what: str) -> Path:
    """Return `path` as a Path, or fail with a message naming it and what was expected there."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path}: {what} folder not found; check the path (it must exist inside the data root)"
        )
    return path


def make_dir(path: str | os.PathLike[str], *, what: str, fix: str) -> Path:
    """Create the folder (and its parents) or fail with a message naming it, the OS reason and the fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create {what} ({exc.strerror or exc}); {fix}") from exc
    return path


def require_file(path: str | os.PathLike[str], *, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found; check the path or run the step that writes it")
    return path


def result_line(result: dict[str, Any]) -> str:
    """The single-line JSON the DAG reads from XCom (last stdout line)."""
    return json.dumps(result, sort_keys=True, default=str, ensure_ascii=False)
