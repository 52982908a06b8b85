"""The model registry under `models/<name>/`: numbered versions, the `current` symlink, the history.

Layout (one folder per model name, history kept)::

    models/<name>/
        versions/0001/            model_int8.tflite, model_int8_edgetpu.tflite (if compiled),
                                  labels (given file and/or labels.txt from the dataset classes),
                                  the rendered config, model_card.json, model_card.md
        versions/0002/ ...
        current -> versions/0002  RELATIVE SYMLINK, switched atomically: a new link is created beside it
                                  and renamed over it with os.replace (rename(2) is atomic), so a reader
                                  always sees either the old or the new version, never a missing link.
        history.json              every promotion / switch, oldest first (canonical JSON)
        .lock                     flock held while promoting (two promotions of one name never interleave)

A version folder is written completely in a temp folder and renamed into place (`common.atomic_dir`)
before `current` switches. Versions are told apart by the sha256 of every file they ship (their
fingerprint), so the same artifacts are never copied twice.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
HISTORY = "history.json"
CURRENT = "current"
VERSION_RE = re.compile(r"^\d{4,}$")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (two promotions of one name never interleave)."""
    import fcntl

    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def version_dir(model_root: Path, version: str) -> Path:
    return model_root / "versions" / version


def versions(model_root: Path) -> list[str]:
    folder = model_root / "versions"
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name)), key=int)


def next_version(model_root: Path) -> str:
    existing = versions(model_root)
    return f"{(int(existing[-1]) + 1) if existing else 1:04d}"


def current_version(model_root: Path) -> str | None:
    link = model_root / CURRENT
    if not link.is_symlink():
        if link.exists():
            raise UserError(f"{link}: expected a symlink to versions/NNNN; move it away and re-run promote")
        return None
    target = Path(os.readlink(link))
    if not VERSION_RE.match(target.name) or not version_dir(model_root, target.name).is_dir():
        raise UserError(
            f"{link}: points at {target}, not an existing versions/NNNN; "
            "relink it (ln -sfn versions/NNNN current) or remove it"
        )
    return target.name


def read_card(model_root: Path, version: str) -> dict[str, Any]:
    path = version_dir(model_root, version) / CARD_JSON
    card = common.read_json(path)
    if not isinstance(card, dict):
        raise UserError(
            f"{path}: model card is not a JSON object; restore it from backup or remove the version"
        )
    return card


def switch_current(model_root: Path, version: str) -> None:
    """Point `current` at versions/<version> atomically: new symlink beside it, then os.replace."""
    link = model_root / CURRENT
    tmp = model_root / f".{CURRENT}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.symlink(os.path.join("versions", version), tmp)
    except OSError as exc:
        raise UserError(
            f"{tmp}: cannot create a symlink ({exc}); the models folder must be on a filesystem "
            "with symlinks (a Linux volume, not SMB/FAT)"
        ) from exc
    os.replace(tmp, link)


def append_history(model_root: Path, entry: dict[str, Any]) -> None:
    path = model_root / HISTORY
    history = common.read_json(path) if path.exists() else []
    if not isinstance(history, list):
        raise UserError(f"{path}: expected a JSON list; restore it or move it away and re-run promote")
    history.append(entry)
    common.write_json(path, history)


def artifacts(files: dict[str, Path], generated: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{file name: {sha256, bytes, source}} of the files a version ships (generated ones from their text)."""
    out = {
        name: {"sha256": common.sha256_file(src), "bytes": src.stat().st_size, "source": str(src)}
        for name, src in sorted(files.items())
    }
    for name, text in sorted(generated.items()):
        data = text.encode("utf-8")
        out[name] = {"sha256": common.sha256_bytes(data), "bytes": len(data), "source": "generated"}
    return out


def fingerprint(artifacts: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: info["sha256"] for name, info in sorted(artifacts.items())}


def card_fingerprint(model_root: Path, version: str) -> dict[str, str]:
    return fingerprint(read_card(model_root, version).get("artifacts") or {})


def find_version(model_root: Path, prints: dict[str, str]) -> str | None:
    """The newest version (with a card) that ships exactly these files, or None."""
    for ver in reversed(versions(model_root)):
        if (version_dir(model_root, ver) / CARD_JSON).is_file() and card_fingerprint(
            model_root, ver
        ) == prints:
            return ver
    return None


def write_version(
    vdir: Path, *, files: dict[str, Path], generated: dict[str, str], card: dict[str, Any], card_md: str
) -> None:
    """Write a whole version folder in a temp folder and rename it into place."""
    with common.atomic_dir(vdir) as tmp:
        for name, src in sorted(files.items()):
            shutil.copyfile(src, tmp / name)
        for name, text in sorted(generated.items()):
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / CARD_JSON).write_text(common.dumps_json(card), encoding="utf-8")
        (tmp / CARD_MD).write_text(card_md, encoding="utf-8")


def now() -> str:
    """The one timestamp in a card or history entry; SOURCE_DATE_EPOCH pins it for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = _dt.datetime.fromtimestamp(int(epoch), _dt.UTC) if epoch else _dt.datetime.now(_dt.UTC)
    return moment.replace(microsecond=0).isoformat()
