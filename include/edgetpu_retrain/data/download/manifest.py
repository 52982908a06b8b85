"""The URL manifest: a plain list of http(s) URLs, or a CSV with `url` and optional `sha256`, `filename`.

Structural problems (no URLs, no url column, a bad checksum cell) are the user's to fix and fail the
step; a malformed URL is only that URL's failure, reported per entry.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgetpu_retrain.common import UserError
from edgetpu_retrain.data.download.records import ManifestEntry

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _significant_lines(text: str) -> Iterable[tuple[int, str]]:
    """(line number, stripped line) for lines that are not blank and not '#' comments."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _csv_cells(line: str, *, manifest: Path, number: int, what: str) -> list[str]:
    """The stripped cells of one CSV line; a quoting error names the line."""
    try:
        return [cell.strip() for cell in next(csv.reader([line]))]
    except csv.Error as exc:
        raise UserError(f"{manifest}: line {number}: cannot parse {what}({exc}); fix the quoting") from exc


def _check_sha256(value: str, *, manifest: Path, line: int) -> str | None:
    value = value.strip().lower()
    if not value:
        return None
    if not SHA256_RE.match(value):
        raise UserError(
            f"{manifest}: line {line}: sha256 {value!r} is not 64 hex digits; fix it or leave the cell empty"
        )
    return value


def parse_manifest(text: str, *, manifest: Path) -> list[ManifestEntry]:
    """Entries in manifest order from a plain URL list or a CSV whose header has a `url` column."""
    lines = list(_significant_lines(text))
    if not lines:
        raise UserError(f"{manifest}: no URLs (empty or only comments); list one http(s) URL per line")
    header_line, header = lines[0]
    columns = [cell.lower() for cell in _csv_cells(header, manifest=manifest, number=header_line, what="")]
    if "url" in columns:
        return _parse_csv_rows(lines[1:], columns=columns, manifest=manifest)
    return _parse_url_lines(lines, manifest=manifest)


def _cell(cells: Sequence[str], index: dict[str, int], name: str) -> str:
    """The named column of a row, '' when the column is absent or the row is short."""
    position = index.get(name)
    return cells[position] if position is not None and position < len(cells) else ""


def _parse_csv_rows(
    lines: Sequence[tuple[int, str]], *, columns: list[str], manifest: Path
) -> list[ManifestEntry]:
    index: dict[str, int] = {
        name: columns.index(name) for name in ("url", "sha256", "filename") if name in columns
    }
    entries = []
    for number, line in lines:
        cells = _csv_cells(line, manifest=manifest, number=number, what="CSV ")
        url = _cell(cells, index, "url")
        if not url:
            raise UserError(f"{manifest}: line {number}: empty url cell; fill it in or delete the row")
        entries.append(
            ManifestEntry(
                line=number,
                url=url,
                sha256=_check_sha256(_cell(cells, index, "sha256"), manifest=manifest, line=number),
                filename=_cell(cells, index, "filename") or None,
            )
        )
    if not entries:
        raise UserError(f"{manifest}: CSV header but no rows; add one row per URL")
    return entries


def _parse_url_lines(lines: Sequence[tuple[int, str]], *, manifest: Path) -> list[ManifestEntry]:
    entries = []
    for number, line in lines:
        url = re.split(r"\s+#", line, maxsplit=1)[0].strip()  # allow a trailing " # comment"
        if re.search(r"\s", url):
            raise UserError(
                f"{manifest}: line {number}: expected one URL per line, got {line!r}; "
                "put checksums/names in a CSV with header url,sha256,filename"
            )
        cells = url.split(",")
        if len(cells) > 1 and any(SHA256_RE.match(c.strip().lower()) for c in cells[1:]):
            raise UserError(
                f"{manifest}: line {number}: looks like CSV without a header; "
                "add a first line 'url,sha256' (and 'filename' if used)"
            )
        entries.append(ManifestEntry(line=number, url=url))
    return entries


def read_manifest(path: Path) -> list[ManifestEntry]:
    """Read and parse the manifest file, turning every I/O or decoding problem into a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; check --manifest (it must exist inside the data root)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: manifest is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read manifest ({exc.strerror}); check its permissions") from exc
    return parse_manifest(text, manifest=path)
