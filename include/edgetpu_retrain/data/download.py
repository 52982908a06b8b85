"""`edgetpu-retrain download`: fetch the images a URL manifest lists into one image folder.

The first step of the DAG: it turns "a list of links" into a folder LabelImg and `validate` can read,
without ever trusting the network. Every URL gets one outcome in `OUT/download_report.json`:

- ``downloaded``       fetched, decoded as an image, written atomically under a safe name;
- ``skipped_existing`` the file was already in OUT with the expected bytes (resume);
- ``duplicate``        same bytes as an earlier URL: one file, this entry points at it;
- ``failed``           with a reason that says what went wrong and, where the user can, how to fix it.

Why it is built this way:

- Only http(s); separate connect/read timeouts; a byte cap checked against Content-Length and the
  streamed body, so a hostile or broken server cannot fill the disk or hang the task forever on connect.
- The body is held in memory (bounded by ``--max-bytes``) until it has been hashed and decoded: the
  file name needs the decoded format, and a rejected body never touches the disk (no partial files).
- Retries with exponential backoff only for what can heal (5xx, connection errors, timeouts), never
  for 4xx or for a body that is not an image.
- The report is a description of the folder, not a log of the run: a URL resumed from a previous
  report keeps its previous entry, so re-running with the same manifest gives the same report bytes.
  The JSON line counts what THIS run did (``downloaded`` vs ``skipped``).

Exit policy: a missing/empty/unparseable manifest, or every URL failing, raises `UserError` (exit 2)
after the report is written; partial failures succeed unless ``--fail-on-error`` is given.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import logging
import re
import socket
import ssl
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError

log = logging.getLogger("edgetpu_retrain.data.download")

REPORT_NAME = "download_report.json"
REPORT_VERSION = 1
ALLOWED_SCHEMES = ("http", "https")
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "edgetpu-retrain-download/1 (+https://coral.ai)"
CHUNK_SIZE = 64 * 1024
MAX_NAME_STEM = 80
# Pillow format -> the extension the file gets. Formats outside this table are rejected: the training
# pipeline (TF OD API) reads JPEG/PNG, and validate can convert the other common ones.
FORMAT_EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "TIFF": ".tif",
}
# Pillow's name for camera JPEGs carrying extra frames (MPF): still JPEG files for every reader.
FORMAT_ALIASES: dict[str, str] = {"MPO": "JPEG"}
STATUSES = ("downloaded", "skipped_existing", "duplicate", "failed")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9._-]+")
_TRAILING_EXT_RE = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")


# --------------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class ManifestEntry:
    """One URL to fetch; `line` is its 1-based line in the manifest so reports point back at it."""

    line: int
    url: str
    sha256: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class FetchOptions:
    """Network limits for one URL (all keyword-configurable from the CLI flags)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_bytes: int = 50 * 1024 * 1024
    retries: int = 3
    backoff: float = 1.0
    max_redirects: int = 5


@dataclass(frozen=True)
class ImageInfo:
    """What Pillow found in a body: the format decides the extension, the size goes in the report."""

    format: str
    width: int
    height: int


@dataclass
class Outcome:
    """One report entry. Field names are the report's JSON keys."""

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
        return {
            "line": self.line,
            "url": self.url,
            "status": self.status,
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "attempts": self.attempts,
            "final_url": self.final_url,
            "duplicate_of": self.duplicate_of,
            "reason": self.reason,
        }


class FetchError(Exception):
    """A failed attempt; `retryable` says whether another attempt could succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.attempts = 0  # set by fetch_with_retries: how many requests were made


@dataclass
class _State:
    """What the run knows so far: which bytes are on disk under which name (dedupe, no overwrite)."""

    out_dir: Path
    by_sha: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha -> (file, first url)
    claimed: dict[str, str] = field(default_factory=dict)  # lower-case file name -> sha


# --------------------------------------------------------------------------------------------------
# CLI


def _number_flag(convert: type, *, minimum: float, strict: bool, unit: str):
    """An argparse `type` that parses with `convert` and rejects values below (or at) `minimum`."""
    noun = "a number of seconds" if unit else "an integer"
    bound = f"{'>' if strict else '>='} {minimum:g}{' ' + unit if unit else ''}"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from exc
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    return parse


_positive_float = _number_flag(float, minimum=0, strict=True, unit="seconds")
_non_negative_float = _number_flag(float, minimum=0, strict=False, unit="seconds")
_non_negative_int = _number_flag(int, minimum=0, strict=False, unit="")


def parse_size(text: str) -> int:
    """Bytes from '5000000', '50M', '2MiB', '500k' (powers of 1024), so flags stay readable."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use bytes or a K/M/G suffix, e.g. 50M")
    value = int(match.group(1)) * 1024 ** "_kmg".index(match.group(2).lower() or "_")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0 bytes")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `edgetpu-retrain download`; validated here so bad values fail before any request."""
    defaults = FetchOptions()
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
    parser.add_argument(
        "--timeout-connect",
        type=_positive_float,
        default=defaults.connect_timeout,
        metavar="S",
        help="seconds to wait for a TCP/TLS connection (default %(default)s)",
    )
    parser.add_argument(
        "--timeout-read",
        type=_positive_float,
        default=defaults.read_timeout,
        metavar="S",
        help="seconds to wait for each read from the server (default %(default)s)",
    )
    parser.add_argument(
        "--max-bytes",
        type=parse_size,
        default=defaults.max_bytes,
        metavar="N",
        help="largest accepted body, e.g. 50M (default %(default)s bytes)",
    )
    parser.add_argument(
        "--retries",
        type=_non_negative_int,
        default=defaults.retries,
        metavar="N",
        help="extra attempts on 5xx, connection errors and timeouts (default %(default)s)",
    )
    parser.add_argument(
        "--backoff",
        type=_non_negative_float,
        default=defaults.backoff,
        metavar="S",
        help="first retry delay; doubles on each retry (default %(default)s)",
    )
    parser.add_argument(
        "--max-redirects",
        type=_non_negative_int,
        default=defaults.max_redirects,
        metavar="N",
        help="redirects followed per URL (default %(default)s)",
    )
    parser.add_argument(
        "--fail-on-error",
        action="store_true",
        help="fail the step if any URL failed (default: only if every URL failed)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """CLI entry: flags -> FetchOptions -> download(); the dict becomes the last stdout line."""
    options = FetchOptions(
        connect_timeout=args.timeout_connect,
        read_timeout=args.timeout_read,
        max_bytes=args.max_bytes,
        retries=args.retries,
        backoff=args.backoff,
        max_redirects=args.max_redirects,
    )
    return download(
        manifest=args.manifest, out_dir=args.out, options=options, fail_on_error=args.fail_on_error
    )


# --------------------------------------------------------------------------------------------------
# Manifest


def _significant_lines(text: str) -> Iterable[tuple[int, str]]:
    """(line number, stripped line) for lines that are not blank and not '#' comments."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _csv_cells(line: str) -> list[str]:
    return [cell.strip() for cell in next(csv.reader([line]))]


def _check_sha256(value: str, *, manifest: Path, line: int) -> str | None:
    value = value.strip().lower()
    if not value:
        return None
    if not _SHA256_RE.match(value):
        raise UserError(
            f"{manifest}: line {line}: sha256 {value!r} is not 64 hex digits; fix it or leave the cell empty"
        )
    return value


def parse_manifest(text: str, *, manifest: Path) -> list[ManifestEntry]:
    """Entries in manifest order from a plain URL list or a CSV whose header has a `url` column.

    Structural problems (no URLs, no url column, a bad checksum cell) are the user's to fix and fail
    the step; a malformed URL is only that URL's failure, reported per entry.
    """
    lines = list(_significant_lines(text))
    if not lines:
        raise UserError(f"{manifest}: no URLs (empty or only comments); list one http(s) URL per line")
    header_line, header = lines[0]
    try:
        columns = [cell.lower() for cell in _csv_cells(header)]
    except csv.Error as exc:
        raise UserError(f"{manifest}: line {header_line}: cannot parse ({exc}); fix the quoting") from exc
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
        try:
            cells = _csv_cells(line)
        except csv.Error as exc:
            raise UserError(f"{manifest}: line {number}: cannot parse CSV ({exc}); fix the quoting") from exc
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
        if len(cells) > 1 and any(_SHA256_RE.match(c.strip().lower()) for c in cells[1:]):
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


# --------------------------------------------------------------------------------------------------
# Names


def redact_url(url: str) -> str:
    """The URL without a password in its userinfo, so reports and logs never carry credentials."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def name_from_url(url: str) -> str:
    """The last non-empty path segment of `url`, percent-decoded (may still be unsafe: see safe_stem)."""
    path = urlsplit(url).path
    segments = [s for s in path.split("/") if s]
    return unquote(segments[-1]) if segments else ""


def safe_stem(name: str) -> str:
    """A file stem that is safe in any folder: basename only, no hidden file, restricted charset.

    Decoded separators ('..%2F..%2Fetc%2Fpasswd.jpg') cannot escape OUT because only the text after
    the last '/' or '\\' survives; the image extension is dropped because the decoded format decides it.
    """
    base = re.split(r"[/\\]", name)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _TRAILING_EXT_RE.sub("", base)
    base = _UNSAFE_CHARS_RE.sub("_", base)
    base = re.sub(r"([._-])[._-]+", r"\1", base).strip("._-")
    return base[:MAX_NAME_STEM].rstrip("._-") or "image"


def extension_for(image_format: str) -> str:
    return FORMAT_EXTENSIONS[image_format.upper()]


def entry_stem(entry: ManifestEntry) -> str:
    """Stem from the manifest's filename column when given, else from the URL path."""
    return safe_stem(entry.filename if entry.filename else name_from_url(entry.url))


def candidate_names(stem: str, ext: str, sha: str) -> list[str]:
    """Names to try in order; the sha256 suffix disambiguates different bytes under the same name."""
    return [f"{stem}{ext}", f"{stem}-{sha[:8]}{ext}", f"{stem}-{sha[:16]}{ext}", f"{stem}-{sha}{ext}"]


# --------------------------------------------------------------------------------------------------
# Images


def inspect_image(data: bytes) -> ImageInfo:
    """Decode `data` fully with Pillow; raise FetchError (not retryable) when it is not a usable image.

    `verify()` checks structure (PNG CRCs); `load()` on a fresh open decodes the pixels, which also
    catches truncated JPEGs. Decompression-bomb warnings are errors: a tiny file claiming gigapixels
    would exhaust memory in every later step.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                image_format, (width, height) = image.format or "", image.size
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        kind = "an HTML page" if head.startswith((b"<!doctype html", b"<html")) else "not an image"
        raise FetchError(
            f"body is {kind} (Pillow cannot identify it); the URL must point at the image "
            "file itself, not a web page about it",
            retryable=False,
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise FetchError(f"image too large to decode safely ({exc})", retryable=False) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FetchError(
            f"image is corrupt or truncated ({exc}); re-export or re-upload it", retryable=False
        ) from None
    image_format = FORMAT_ALIASES.get(image_format.upper(), image_format.upper())
    if image_format not in FORMAT_EXTENSIONS:
        raise FetchError(
            f"image format {image_format or 'unknown'} is not supported; convert it to JPEG or PNG",
            retryable=False,
        )
    return ImageInfo(format=image_format.lower(), width=width, height=height)


# --------------------------------------------------------------------------------------------------
# HTTP


def check_scheme(url: str) -> None:
    """Refuse anything but http(s): file://, ftp://, data: etc. must never be followed."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise FetchError(f"{shown} is not supported; use an http:// or https:// URL", retryable=False)


def request_target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) with non-ASCII characters percent-encoded, as HTTP needs."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise FetchError(f"invalid port in {redact_url(url)!r}; fix the URL", retryable=False) from None
    if not parts.hostname:
        raise FetchError("URL has no host; fix the URL", retryable=False)
    scheme = parts.scheme.lower()
    safe = "/%:@!$&'()*+,;=-._~"
    target = quote(parts.path or "/", safe=safe)
    if parts.query:
        target += "?" + quote(parts.query, safe=safe + "?")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), target


def _open_connection(scheme: str, host: str, port: int, options: FetchOptions) -> http.client.HTTPConnection:
    """Connect (TCP + TLS) under the connect timeout, then switch the socket to the read timeout."""
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=options.connect_timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=options.connect_timeout)
    where = f"{host}:{port}"
    try:
        conn.connect()
    except ssl.SSLCertVerificationError as exc:
        conn.close()
        raise FetchError(
            f"TLS certificate of {where} is not trusted ({exc.verify_message}); fix the "
            "server certificate or the URL",
            retryable=False,
        ) from None
    except TimeoutError:
        conn.close()
        raise FetchError(
            f"connecting to {where} timed out after {options.connect_timeout:g} s; check the "
            "host or raise --timeout-connect",
            retryable=True,
        ) from None
    except socket.gaierror as exc:
        conn.close()
        raise FetchError(
            f"cannot resolve host {host!r} ({exc.strerror}); check the URL", retryable=True
        ) from None
    except OSError as exc:
        conn.close()
        raise FetchError(f"cannot connect to {where} ({exc.strerror or exc})", retryable=True) from None
    assert conn.sock is not None
    conn.sock.settimeout(options.read_timeout)
    return conn


def _read_body(response: http.client.HTTPResponse, *, max_bytes: int) -> bytes:
    """Stream the body, stopping as soon as it passes `max_bytes` (Content-Length may be absent or lie)."""
    length = response.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        raise FetchError(
            f"Content-Length {int(length)} exceeds --max-bytes {max_bytes}; raise "
            "--max-bytes if the image is legitimately that large",
            retryable=False,
        )
    buffer = bytearray()
    while chunk := response.read(CHUNK_SIZE):
        buffer += chunk
        if len(buffer) > max_bytes:
            raise FetchError(
                f"body exceeds --max-bytes {max_bytes}; raise --max-bytes if the image "
                "is legitimately that large",
                retryable=False,
            )
    return bytes(buffer)


def _status_error(status: int, reason: str) -> FetchError:
    hints = {
        401: "the URL needs credentials; use a public or pre-signed URL",
        403: "access denied; use a public or pre-signed URL",
        404: "no such file on the server; fix or remove the URL",
        410: "the file was removed from the server; remove the URL",
        429: "the server is rate limiting; re-run later",
    }
    text = f"HTTP {status} {reason}".rstrip()
    if status >= 500:
        return FetchError(f"{text} (server error); re-run later", retryable=True)
    return FetchError(
        f"{text}; {hints.get(status, 'the server refused the request; check the URL')}", retryable=False
    )


def fetch_once(url: str, *, options: FetchOptions) -> tuple[bytes, str]:
    """One attempt: GET `url`, following at most `max_redirects` http(s) redirects -> (body, final URL)."""
    current = url
    for _hop in range(options.max_redirects + 1):
        check_scheme(current)
        scheme, host, port, target = request_target(current)
        conn = _open_connection(scheme, host, port, options)
        try:
            try:
                conn.putrequest("GET", target, skip_accept_encoding=True)
                for name, value in (
                    ("User-Agent", USER_AGENT),
                    ("Accept", "image/*, */*;q=0.5"),
                    ("Accept-Encoding", "identity"),
                    ("Connection", "close"),
                ):
                    conn.putheader(name, value)
                conn.endheaders()
                response = conn.getresponse()
                if response.status in REDIRECT_CODES:
                    location = response.getheader("Location")
                    if not location:
                        raise FetchError(
                            f"HTTP {response.status} redirect without a Location header; fix the URL",
                            retryable=False,
                        )
                    current = urljoin(current, location.strip())
                    if urlsplit(current).scheme.lower() not in ALLOWED_SCHEMES:
                        raise FetchError(
                            f"redirected to {redact_url(current)!r}, which is not http(s); "
                            "use a direct http(s) link to the image",
                            retryable=False,
                        )
                    continue
                if response.status != 200:
                    raise _status_error(response.status, response.reason)
                return _read_body(response, max_bytes=options.max_bytes), current
            except TimeoutError:
                raise FetchError(
                    f"no data from {host}:{port} for {options.read_timeout:g} s; the server "
                    "is slow or stalled: re-run later or raise --timeout-read",
                    retryable=True,
                ) from None
            except http.client.IncompleteRead as exc:
                raise FetchError(
                    f"connection closed after {len(exc.partial)} bytes of the body; re-run later",
                    retryable=True,
                ) from None
            except http.client.InvalidURL as exc:
                raise FetchError(f"invalid URL ({exc}); fix the URL", retryable=False) from None
            except (http.client.HTTPException, OSError) as exc:
                raise FetchError(
                    f"connection to {host}:{port} failed ({type(exc).__name__}: {exc})", retryable=True
                ) from None
        finally:
            conn.close()
    raise FetchError(
        f"more than {options.max_redirects} redirects; use the final image URL or raise --max-redirects",
        retryable=False,
    )


def backoff_delay(attempt: int, *, backoff: float) -> float:
    """Delay before attempt `attempt + 1`: backoff, 2*backoff, 4*backoff... (attempt is 1-based)."""
    return backoff * 2 ** (attempt - 1)


def fetch_with_retries(
    url: str, *, options: FetchOptions, sleep: Callable[[float], None] = time.sleep
) -> tuple[bytes, str, int]:
    """(body, final URL, attempts); retries only retryable failures; raises the last FetchError.

    The returned/raised attempt count goes into the report so flaky servers are visible.
    """
    attempts = options.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            body, final_url = fetch_once(url, options=options)
            return body, final_url, attempt
        except FetchError as exc:
            exc.attempts = attempt
            if not exc.retryable or attempt == attempts:
                raise
            delay = backoff_delay(attempt, backoff=options.backoff)
            log.info(
                "attempt %d/%d for %s failed (%s); retrying in %g s",
                attempt,
                attempts,
                redact_url(url),
                exc.reason,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------
# Placing files


def _claim(state: _State, name: str, sha: str, *, first_url: str) -> None:
    state.claimed[name.lower()] = sha
    state.by_sha.setdefault(sha, (name, first_url))


def choose_name(state: _State, *, stem: str, ext: str, sha: str) -> tuple[str, bool]:
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


def find_existing(state: _State, entry: ManifestEntry) -> str | None:
    """Name of a file in OUT holding the manifest's sha256 under any name this entry could get."""
    assert entry.sha256 is not None
    stem = entry_stem(entry)
    for ext in dict.fromkeys(FORMAT_EXTENSIONS.values()):
        for name in candidate_names(stem, ext, entry.sha256)[:2]:
            path = state.out_dir / name
            if path.is_file() and common.sha256_file(path) == entry.sha256:
                return name
    return None


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
    known = {name: data[name] for name in Outcome.__dataclass_fields__ if name in data}
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


# --------------------------------------------------------------------------------------------------
# One URL


def _failed(entry: ManifestEntry, shown_url: str, reason: str, *, attempts: int = 0, **extra: Any) -> Outcome:
    return Outcome(line=entry.line, url=shown_url, status="failed", attempts=attempts, reason=reason, **extra)


def process_entry(
    entry: ManifestEntry,
    *,
    state: _State,
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
    entry: ManifestEntry, *, state: _State, previous: dict[str, Any] | None
) -> Outcome | None:
    """The outcome when the bytes are already known to be in OUT, else None (a request is needed).

    Known means: a previous report's entry whose file still has its recorded sha256 (kept verbatim, so
    the report does not change), or the manifest's sha256 matching a file already placed or on disk.
    """
    shown_url = redact_url(entry.url)
    carried = outcome_from_json(previous) if resumable(previous, entry, state.out_dir) else None
    if carried is not None and carried.file and carried.sha256:
        file, sha = carried.file, carried.sha256
        carried = replace(carried, line=entry.line, url=shown_url)
        _claim(state, file, sha, first_url=carried.duplicate_of or shown_url)
        return carried
    if entry.sha256 is None:
        return None
    if entry.sha256 in state.by_sha:
        name, first_url = state.by_sha[entry.sha256]
        return _duplicate(
            entry,
            shown_url,
            name,
            first_url,
            sha=entry.sha256,
            attempts=0,
            info=None,
            size=None,
            final_url=None,
        )
    existing = find_existing(state, entry)
    if existing is None:
        return None
    data = (state.out_dir / existing).read_bytes()
    try:
        info = inspect_image(data)
    except FetchError as exc:
        return _failed(entry, shown_url, f"existing file {existing}: {exc.reason}; delete it and re-run")
    _claim(state, existing, entry.sha256, first_url=shown_url)
    return _placed(
        entry, shown_url, "skipped_existing", existing, entry.sha256, data, info, attempts=0, final_url=None
    )


def fetch_and_place(
    entry: ManifestEntry, *, state: _State, options: FetchOptions, sleep: Callable[[float], None] = time.sleep
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
    extra = {"sha256": sha, "bytes": len(data), "final_url": shown_final}
    if entry.sha256 is not None and sha != entry.sha256:
        return _failed(
            entry,
            shown_url,
            f"sha256 mismatch: manifest says {entry.sha256}, got {sha}; "
            "the file changed on the server: fix the URL or the checksum",
            attempts=attempts,
            **extra,
        )
    try:
        info = inspect_image(data)
    except FetchError as exc:
        return _failed(entry, shown_url, exc.reason, attempts=attempts, **extra)
    if sha in state.by_sha:
        name, first_url = state.by_sha[sha]
        return _duplicate(
            entry,
            shown_url,
            name,
            first_url,
            sha=sha,
            attempts=attempts,
            info=info,
            size=len(data),
            final_url=shown_final,
        )
    try:
        name, on_disk = choose_name(state, stem=entry_stem(entry), ext=extension_for(info.format), sha=sha)
    except FetchError as exc:
        return _failed(entry, shown_url, exc.reason, attempts=attempts, **extra)
    if not on_disk:
        common.write_bytes(state.out_dir / name, data)
    _claim(state, name, sha, first_url=shown_url)
    status = "skipped_existing" if on_disk else "downloaded"
    return _placed(entry, shown_url, status, name, sha, data, info, attempts=attempts, final_url=shown_final)


def _placed(
    entry: ManifestEntry,
    shown_url: str,
    status: str,
    name: str,
    sha: str,
    data: bytes,
    info: ImageInfo,
    *,
    attempts: int,
    final_url: str | None,
) -> Outcome:
    return Outcome(
        line=entry.line,
        url=shown_url,
        status=status,
        file=name,
        sha256=sha,
        bytes=len(data),
        format=info.format,
        width=info.width,
        height=info.height,
        attempts=attempts,
        final_url=final_url,
    )


def _duplicate(
    entry: ManifestEntry,
    shown_url: str,
    name: str,
    first_url: str,
    *,
    sha: str,
    attempts: int,
    info: ImageInfo | None,
    size: int | None,
    final_url: str | None,
) -> Outcome:
    return Outcome(
        line=entry.line,
        url=shown_url,
        status="duplicate",
        file=name,
        sha256=sha,
        bytes=size,
        format=info.format if info else None,
        width=info.width if info else None,
        height=info.height if info else None,
        attempts=attempts,
        final_url=final_url,
        duplicate_of=first_url,
        reason=f"same bytes as {first_url}; kept one file ({name})",
    )


# --------------------------------------------------------------------------------------------------
# The step


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
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --out exists and is not a folder; choose another path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{out_dir}: cannot create the --out folder ({exc.strerror}); check the path and its permissions"
        ) from exc
    log.info("%s: %d URL(s) -> %s", manifest, len(entries), out_dir)
    previous = load_previous_report(out_dir)
    state = _State(out_dir=out_dir)
    outcomes: list[Outcome] = []
    fetched_now = 0  # files this run wrote (the JSON line's "downloaded"; the report keeps first outcomes)
    seen_urls: dict[str, int] = {}
    for position, entry in enumerate(entries, start=1):
        if entry.url in seen_urls:
            outcome = _repeat_of(entry, outcomes[seen_urls[entry.url]])
            no_request = True
        else:
            seen_urls[entry.url] = len(outcomes)
            outcome, no_request = process_entry(
                entry, state=state, options=options, previous=previous.get(redact_url(entry.url)), sleep=sleep
            )
        fetched_now += int(outcome.status == "downloaded" and not no_request)
        outcomes.append(outcome)
        _log_outcome(outcome, position=position, total=len(entries), resumed=no_request)
    report = build_report(outcomes, manifest=manifest)
    report_path = common.write_json(out_dir / REPORT_NAME, report)
    log.info("%s: %s", report_path, ", ".join(f"{k} {v}" for k, v in report["summary"].items()))
    return _finish(
        outcomes,
        manifest=manifest,
        out_dir=out_dir,
        report_path=report_path,
        fetched_now=fetched_now,
        fail_on_error=fail_on_error,
    )


def _repeat_of(entry: ManifestEntry, first: Outcome) -> Outcome:
    """A URL listed twice: no second request; it shares the first entry's fate."""
    if first.status == "failed":
        return replace(
            first,
            line=entry.line,
            attempts=0,
            reason=f"same URL as line {first.line}, which failed: {first.reason}",
        )
    return Outcome(
        line=entry.line,
        url=first.url,
        status="duplicate",
        file=first.file,
        sha256=first.sha256,
        bytes=first.bytes,
        format=first.format,
        width=first.width,
        height=first.height,
        attempts=0,
        final_url=first.final_url,
        duplicate_of=first.url,
        reason=f"same URL as line {first.line}; remove one of them",
    )


def _log_outcome(outcome: Outcome, *, position: int, total: int, resumed: bool) -> None:
    prefix = f"[{position}/{total}] {outcome.url}"
    if outcome.status == "failed":
        log.warning("%s failed after %d attempt(s): %s", prefix, outcome.attempts, outcome.reason)
    elif outcome.status == "duplicate":
        log.info("%s duplicate of %s", prefix, outcome.duplicate_of)
    else:
        how = "already present" if resumed or outcome.status == "skipped_existing" else "downloaded"
        log.info("%s %s -> %s (%s bytes)", prefix, how, outcome.file, outcome.bytes)


def _finish(
    outcomes: Sequence[Outcome],
    *,
    manifest: Path,
    out_dir: Path,
    report_path: Path,
    fetched_now: int,
    fail_on_error: bool,
) -> dict[str, Any]:
    """Apply the exit policy and build the JSON line (after the report is on disk, for debugging)."""
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
