"""Safe file names for downloaded images, and URLs fit to show (no passwords)."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote, urlsplit, urlunsplit

from edgetpu_retrain.data.download.records import ManifestEntry

MAX_NAME_STEM = 80
_UNSAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9._-]+")
_TRAILING_EXT_RE = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")


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


def entry_stem(entry: ManifestEntry) -> str:
    """Stem from the manifest's filename column when given, else from the URL path."""
    return safe_stem(entry.filename if entry.filename else name_from_url(entry.url))


def candidate_names(stem: str, ext: str, sha: str) -> list[str]:
    """Names to try in order; the sha256 suffix disambiguates different bytes under the same name."""
    return [f"{stem}{ext}", f"{stem}-{sha[:8]}{ext}", f"{stem}-{sha[:16]}{ext}", f"{stem}-{sha}{ext}"]
