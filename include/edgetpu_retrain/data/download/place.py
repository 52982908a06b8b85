"""One manifest entry -> one report entry: resume without a request, or fetch, check and write.

The body is held in memory (bounded by ``--max-bytes``) until it has been hashed and decoded: the
file name needs the decoded format, and a rejected body never touches the disk (no partial files).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.data.download.fetch import FetchOptions, check_scheme, fetch_with_retries
from edgetpu_retrain.data.download.images import FORMAT_EXTENSIONS, ImageInfo, extension_for, inspect_image
from edgetpu_retrain.data.download.naming import candidate_names, entry_stem, redact_url
from edgetpu_retrain.data.download.records import FetchError, ManifestEntry, Outcome
from edgetpu_retrain.data.download.report import outcome_from_json, resumable


@dataclass
class FolderState:
    """What the run knows so far: which bytes are on disk under which name (dedupe, no overwrite)."""

    out_dir: Path
    by_sha: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha -> (file, first url)
    claimed: dict[str, str] = field(default_factory=dict)  # lower-case file name -> sha

    def claim(self, name: str, sha: str, *, first_url: str) -> None:
        self.claimed[name.lower()] = sha
        self.by_sha.setdefault(sha, (name, first_url))


def choose_name(state: FolderState, *, stem: str, ext: str, sha: str) -> tuple[str, bool]:
    """(file name, already on disk with these bytes). Never picks a name holding different bytes."""
    for name in candidate_names(stem, ext, sha):
        claimed_sha = state.claimed.get(name.lower())
        if claimed_sha is not None:
            if claimed_sha == sha:
                return name, True
            continue
        path = state.out_dir / name
        if not path.exists():
            return name, False
        if path.is_file() and common.sha256_file(path) == sha:
            return name, True
    raise FetchError(
        f"every candidate name for {stem}{ext} is taken by other files; clean up the folder", retryable=False
    )


def find_existing(state: FolderState, entry: ManifestEntry) -> str | None:
    """Name of a file in OUT holding the manifest's sha256 under any name this entry could get."""
    assert entry.sha256 is not None
    stem = entry_stem(entry)
    for ext in dict.fromkeys(FORMAT_EXTENSIONS.values()):
        for name in candidate_names(stem, ext, entry.sha256)[:2]:
            path = state.out_dir / name
            if path.is_file() and common.sha256_file(path) == entry.sha256:
                return name
    return None


def _failed(entry: ManifestEntry, shown_url: str, reason: str, *, attempts: int = 0, **extra: Any) -> Outcome:
    return Outcome(line=entry.line, url=shown_url, status="failed", attempts=attempts, reason=reason, **extra)


@dataclass(frozen=True)
class Content:
    """What is known about one URL's bytes once they are in OUT (size and image only if read now)."""

    sha256: str
    size: int | None = None
    info: ImageInfo | None = None
    attempts: int = 0
    final_url: str | None = None


def file_outcome(
    entry: ManifestEntry,
    *,
    url: str,
    status: str,
    file: str,
    content: Content,
    duplicate_of: str | None = None,
) -> Outcome:
    """The report entry of a URL whose bytes are in OUT as `file` (placed, resumed or a duplicate)."""
    info = content.info
    return Outcome(
        line=entry.line,
        url=url,
        status=status,
        file=file,
        sha256=content.sha256,
        bytes=content.size,
        format=info.format if info else None,
        width=info.width if info else None,
        height=info.height if info else None,
        attempts=content.attempts,
        final_url=content.final_url,
        duplicate_of=duplicate_of,
        reason=f"same bytes as {duplicate_of}; kept one file ({file})" if duplicate_of else None,
    )


def _duplicate_of_placed(
    entry: ManifestEntry, state: FolderState, *, url: str, content: Content
) -> Outcome | None:
    """The duplicate entry when an earlier URL already placed these bytes, else None."""
    if content.sha256 not in state.by_sha:
        return None
    name, first_url = state.by_sha[content.sha256]
    return file_outcome(
        entry, url=url, status="duplicate", file=name, content=content, duplicate_of=first_url
    )


def process_entry(
    entry: ManifestEntry,
    *,
    state: FolderState,
    options: FetchOptions,
    previous: dict[str, Any] | None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Outcome, bool]:
    """(report entry, True when the entry needed no request). Writes at most one file, atomically."""
    resumed = resume_without_request(entry, state=state, previous=previous)
    if resumed is not None:
        return resumed, True
    return fetch_and_place(entry, state=state, options=options, sleep=sleep), False


def resume_without_request(
    entry: ManifestEntry, *, state: FolderState, previous: dict[str, Any] | None
) -> Outcome | None:
    """The outcome when the bytes are already known to be in OUT, else None (a request is needed).

    Known means: a previous report's entry whose file still has its recorded sha256 (kept verbatim, so
    the report does not change), or the manifest's sha256 matching a file already placed or on disk.
    """
    shown_url = redact_url(entry.url)
    carried = outcome_from_json(previous) if resumable(previous, entry, state.out_dir) else None
    if carried is not None and carried.file and carried.sha256:
        state.claim(carried.file, carried.sha256, first_url=carried.duplicate_of or shown_url)
        return replace(carried, line=entry.line, url=shown_url)
    if entry.sha256 is None:
        return None
    known = _duplicate_of_placed(entry, state, url=shown_url, content=Content(entry.sha256))
    if known is not None:
        return known
    existing = find_existing(state, entry)
    if existing is None:
        return None
    data = (state.out_dir / existing).read_bytes()
    try:
        info = inspect_image(data)
    except FetchError as exc:
        return _failed(entry, shown_url, f"existing file {existing}: {exc.reason}; delete it and re-run")
    state.claim(existing, entry.sha256, first_url=shown_url)
    content = Content(entry.sha256, size=len(data), info=info)
    return file_outcome(entry, url=shown_url, status="skipped_existing", file=existing, content=content)


def fetch_and_place(
    entry: ManifestEntry,
    *,
    state: FolderState,
    options: FetchOptions,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Fetch, check (checksum, image, dedupe), then write under a free safe name (atomic)."""
    shown_url = redact_url(entry.url)
    try:
        check_scheme(entry.url)
        data, final_url, attempts = fetch_with_retries(entry.url, options=options, sleep=sleep)
    except FetchError as exc:
        return _failed(entry, shown_url, exc.reason, attempts=exc.attempts)
    shown_final = redact_url(final_url) if final_url != entry.url else None
    sha = common.sha256_bytes(data)
    extra: dict[str, Any] = {
        "sha256": sha,
        "bytes": len(data),
        "attempts": attempts,
        "final_url": shown_final,
    }
    if entry.sha256 is not None and sha != entry.sha256:
        return _failed(
            entry,
            shown_url,
            f"sha256 mismatch: manifest says {entry.sha256}, got {sha}; "
            "the file changed on the server: fix the URL or the checksum",
            **extra,
        )
    try:
        info = inspect_image(data)
        content = Content(sha, size=len(data), info=info, attempts=attempts, final_url=shown_final)
        duplicate = _duplicate_of_placed(entry, state, url=shown_url, content=content)
        if duplicate is not None:
            return duplicate
        name, on_disk = choose_name(state, stem=entry_stem(entry), ext=extension_for(info.format), sha=sha)
    except FetchError as exc:
        return _failed(entry, shown_url, exc.reason, **extra)
    if not on_disk:
        common.write_bytes(state.out_dir / name, data)
    state.claim(name, sha, first_url=shown_url)
    status = "skipped_existing" if on_disk else "downloaded"
    return file_outcome(entry, url=shown_url, status=status, file=name, content=content)
