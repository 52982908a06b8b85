"""One finding about an input file: what is wrong, how bad, and how the user fixes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Issue:
    code: str
    severity: str
    message: str
    fix: str
    object: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
