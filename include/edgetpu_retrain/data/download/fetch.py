"""HTTP(S) GET of one URL under hard limits, with retries and exponential backoff.

Only http(s); separate connect/read timeouts; a byte cap checked against Content-Length and the
streamed body, so a hostile or broken server cannot fill the disk or hang the task forever on connect.
Retries only for what can heal (5xx, connection errors, timeouts), never for 4xx.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from edgetpu_retrain.data.download.naming import redact_url
from edgetpu_retrain.data.download.records import FetchError

log = logging.getLogger("edgetpu_retrain.data.download")

ALLOWED_SCHEMES = ("http", "https")
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "edgetpu-retrain-download/1 (+https://coral.ai)"
CHUNK_SIZE = 64 * 1024
_HEADERS = (
    ("User-Agent", USER_AGENT),
    ("Accept", "image/*, */*;q=0.5"),
    ("Accept-Encoding", "identity"),
    ("Connection", "close"),
)
_STATUS_HINTS = {
    401: "the URL needs credentials; use a public or pre-signed URL",
    403: "access denied; use a public or pre-signed URL",
    404: "no such file on the server; fix or remove the URL",
    410: "the file was removed from the server; remove the URL",
    429: "the server is rate limiting; re-run later",
}


@dataclass(frozen=True)
class FetchOptions:
    """Network limits for one URL (all keyword-configurable from the CLI flags)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_bytes: int = 50 * 1024 * 1024
    retries: int = 3
    backoff: float = 1.0
    max_redirects: int = 5


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


def _connect_error(exc: OSError, *, host: str, port: int, options: FetchOptions) -> FetchError:
    """What a failed TCP/TLS connect means for the user; only an untrusted certificate is final."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FetchError(
            f"TLS certificate of {where} is not trusted ({exc.verify_message}); fix the "
            "server certificate or the URL",
            retryable=False,
        )
    if isinstance(exc, TimeoutError):
        return FetchError(
            f"connecting to {where} timed out after {options.connect_timeout:g} s; check the "
            "host or raise --timeout-connect",
            retryable=True,
        )
    if isinstance(exc, socket.gaierror):
        return FetchError(f"cannot resolve host {host!r} ({exc.strerror}); check the URL", retryable=True)
    return FetchError(f"cannot connect to {where} ({exc.strerror or exc})", retryable=True)


def _open_connection(
    scheme: str, host: str, port: int, *, options: FetchOptions
) -> http.client.HTTPConnection:
    """Connect (TCP + TLS) under the connect timeout, then switch the socket to the read timeout."""
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=options.connect_timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=options.connect_timeout)
    try:
        conn.connect()
    except OSError as exc:
        conn.close()
        raise _connect_error(exc, host=host, port=port, options=options) from None
    assert conn.sock is not None
    conn.sock.settimeout(options.read_timeout)
    return conn


def _too_large(what: str, max_bytes: int) -> FetchError:
    return FetchError(
        f"{what} --max-bytes {max_bytes}; raise --max-bytes if the image is legitimately that large",
        retryable=False,
    )


def _read_body(response: http.client.HTTPResponse, *, max_bytes: int) -> bytes:
    """Stream the body, stopping as soon as it passes `max_bytes` (Content-Length may be absent or lie)."""
    length = response.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        raise _too_large(f"Content-Length {int(length)} exceeds", max_bytes)
    buffer = bytearray()
    while chunk := response.read(CHUNK_SIZE):
        buffer += chunk
        if len(buffer) > max_bytes:
            raise _too_large("body exceeds", max_bytes)
    return bytes(buffer)


def _status_error(status: int, reason: str) -> FetchError:
    text = f"HTTP {status} {reason}".rstrip()
    if status >= 500:
        return FetchError(f"{text} (server error); re-run later", retryable=True)
    hint = _STATUS_HINTS.get(status, "the server refused the request; check the URL")
    return FetchError(f"{text}; {hint}", retryable=False)


def _transfer_error(exc: Exception, *, where: str, options: FetchOptions) -> FetchError:
    """What a failure after connecting (request, headers, body) means; only a bad URL is final."""
    if isinstance(exc, TimeoutError):
        return FetchError(
            f"no data from {where} for {options.read_timeout:g} s; the server "
            "is slow or stalled: re-run later or raise --timeout-read",
            retryable=True,
        )
    if isinstance(exc, http.client.IncompleteRead):
        return FetchError(
            f"connection closed after {len(exc.partial)} bytes of the body; re-run later", retryable=True
        )
    if isinstance(exc, http.client.InvalidURL):
        return FetchError(f"invalid URL ({exc}); fix the URL", retryable=False)
    return FetchError(f"connection to {where} failed ({type(exc).__name__}: {exc})", retryable=True)


def _redirect_target(url: str, response: http.client.HTTPResponse) -> str:
    """The absolute http(s) URL a redirect points at; anything else is a final failure."""
    location = response.getheader("Location")
    if not location:
        raise FetchError(
            f"HTTP {response.status} redirect without a Location header; fix the URL", retryable=False
        )
    target = urljoin(url, location.strip())
    if urlsplit(target).scheme.lower() not in ALLOWED_SCHEMES:
        raise FetchError(
            f"redirected to {redact_url(target)!r}, which is not http(s); "
            "use a direct http(s) link to the image",
            retryable=False,
        )
    return target


def _get_hop(url: str, *, options: FetchOptions) -> tuple[bytes | None, str]:
    """One request: (body, url) on 200, (None, next url) on a redirect; FetchError otherwise."""
    check_scheme(url)
    scheme, host, port, target = request_target(url)
    conn = _open_connection(scheme, host, port, options=options)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in _HEADERS:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        if response.status in REDIRECT_CODES:
            return None, _redirect_target(url, response)
        if response.status != 200:
            raise _status_error(response.status, response.reason)
        return _read_body(response, max_bytes=options.max_bytes), url
    except (http.client.HTTPException, OSError) as exc:
        raise _transfer_error(exc, where=f"{host}:{port}", options=options) from None
    finally:
        conn.close()


def fetch_once(url: str, *, options: FetchOptions) -> tuple[bytes, str]:
    """One attempt: GET `url`, following at most `max_redirects` http(s) redirects -> (body, final URL)."""
    current = url
    for _hop in range(options.max_redirects + 1):
        body, current = _get_hop(current, options=options)
        if body is not None:
            return body, current
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
