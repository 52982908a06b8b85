"""What `download` passes between its parts: manifest entries, report entries and fetch failures."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STATUSES = ("downloaded", "skipped_existing", "duplicate", "failed")


@dataclass(frozen=True)
class ManifestEntry:
    """One URL to fetch; `line` is its 1-based line in the manifest so reports point back at it."""

    line: int
    url: str
    sha256: str | None = None
    filename: str | None = None


@dataclass
class Outcome:
    """One report entry. Field names (in this order) are the report's JSON keys."""

    line: int
    url: str
    status: str
    file: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    attempts: int = 0
    final_url: str | None = None
    duplicate_of: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FetchError(Exception):
    """A failed attempt; `retryable` says whether another attempt could succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.attempts = 0  # set by fetch_with_retries: how many requests were made
