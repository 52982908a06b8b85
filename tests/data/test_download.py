"""Tests for `edgetpu-retrain download` (include/edgetpu_retrain/data/download/).

The HTTP server started here (a real `ThreadingHTTPServer` on 127.0.0.1, port 0) stands in for the
internet: it serves real JPEGs copied from the microcontroller dataset's images plus the failure
modes the step must survive (404, flaky 5xx, a stalled body, oversized bodies, an HTML page, redirects
to good and to non-http targets, duplicate bytes, a path-traversal name, PNGs); one test runs it over
TLS with a throwaway self-signed certificate. No other network is used, and the fixtures stop the
servers on teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from edgetpu_retrain import cli
from edgetpu_retrain.common import UserError, sha256_bytes
from edgetpu_retrain.data import download
from edgetpu_retrain.data.download import fetch, naming, records
from edgetpu_retrain.data.download.fetch import FetchOptions
from edgetpu_retrain.data.download.images import inspect_image
from edgetpu_retrain.data.download.manifest import parse_manifest, read_manifest
from edgetpu_retrain.data.download.report import REPORT_NAME, load_previous_report

TRAVERSAL = "/..%2F..%2Fetc%2Fpasswd.jpg"
MAX_BYTES = 100_000
# read_timeout: generous enough that no route meant to answer times out on a loaded machine (a late
# reply would add a retry and change the attempt counts); /slow.jpg stalls far beyond it.
FAST = FetchOptions(
    connect_timeout=2.0, read_timeout=2.0, max_bytes=MAX_BYTES, retries=2, backoff=0.01, max_redirects=3
)


# --------------------------------------------------------------------------------------------------
# The stand-in internet


@dataclass
class Site:
    """What the test server serves, and how often each raw request path was asked for."""

    base: str
    images: dict[str, bytes]
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return self.base + path


Route = Callable[[BaseHTTPRequestHandler, int], None]


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "image/jpeg",
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    if length is not None:
        handler.send_header("Content-Length", str(length))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def _image_route(data: bytes, content_type: str = "image/jpeg") -> Route:
    return lambda h, _n: _send(h, 200, data, content_type=content_type, length=len(data))


def _redirect_route(location: str) -> Route:
    return lambda h, _n: _send(
        h, 302, b"", content_type="text/plain", headers={"Location": location}, length=0
    )


def _build_routes(images: dict[str, bytes], stop: threading.Event) -> dict[str, Route]:
    def flaky(h: BaseHTTPRequestHandler, n: int) -> None:
        if n == 1:
            _send(h, 500, b"boom", content_type="text/plain", length=4)
        else:
            _image_route(images["flaky"])(h, n)

    def slow(h: BaseHTTPRequestHandler, _n: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(images["good"])))
        h.end_headers()
        h.wfile.flush()
        stop.wait(60)  # far beyond the client's read timeout; teardown releases it at once
        h.wfile.write(images["good"])

    def big_declared(h: BaseHTTPRequestHandler, _n: int) -> None:
        _send(h, 200, images["good"], length=10 * MAX_BYTES)  # the header alone must reject it

    def big_stream(h: BaseHTTPRequestHandler, _n: int) -> None:
        _send(h, 200, images["good"] + b"\0" * (3 * MAX_BYTES))  # no Content-Length: close-delimited

    html = b"<!DOCTYPE html><html><body>a page about a photo</body></html>"
    return {
        "/img/good.jpg": _image_route(images["good"]),
        "/missing.jpg": lambda h, _n: _send(h, 404, b"nope", content_type="text/plain", length=4),
        "/always500.jpg": lambda h, _n: _send(h, 503, b"down", content_type="text/plain", length=4),
        "/flaky.jpg": flaky,
        "/slow.jpg": slow,
        "/big.jpg": big_declared,
        "/big-stream.jpg": big_stream,
        "/page.jpg": lambda h, _n: _send(h, 200, html, content_type="text/html", length=len(html)),
        "/redirect.jpg": _redirect_route("/img/target.jpg"),
        "/img/target.jpg": _image_route(images["target"]),
        "/redirect-ftp.jpg": _redirect_route("ftp://127.0.0.1/secret.jpg"),
        "/loop.jpg": _redirect_route("/loop.jpg"),
        "/dup-a.jpg": _image_route(images["dup"]),
        "/dup-b.jpg": _image_route(images["dup"]),
        TRAVERSAL: _image_route(images["traversal"]),
        "/img/pic.png": _image_route(images["png"], "image/png"),
        "/img/misnamed.jpg": _image_route(images["png2"], "image/jpeg"),
        "/a/same.jpg": _image_route(images["same_a"]),
        "/b/same.jpg": _image_route(images["same_b"]),
    }


def _load_images(microcontroller_dir: Path, copy_dir: Path) -> dict[str, bytes]:
    """Real photos (copied out of the read-only share), plus PNGs made from them."""
    sources = sorted((microcontroller_dir / "images").glob("*.jpg"), key=lambda p: (p.stat().st_size, p.name))
    copy_dir.mkdir()
    names = ["good", "flaky", "target", "dup", "traversal", "same_a", "same_b", "extra"]
    images = {}
    for name, src in zip(names, sources, strict=False):
        copy = Path(shutil.copy(src, copy_dir / f"{name}.jpg"))
        images[name] = copy.read_bytes()
    assert len(images) == len(names) and all(len(b) < MAX_BYTES for b in images.values())
    for name, src_name, size in (("png", "extra", (64, 48)), ("png2", "good", (40, 30))):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(images[src_name])).resize(size).save(buffer, format="PNG")
        images[name] = buffer.getvalue()
    return images


@contextlib.contextmanager
def _serve(
    routes: dict[str, Route], *, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, Counter[str]]]:
    """Run a ThreadingHTTPServer on 127.0.0.1 (port 0) until the block ends -> (base URL, hits per path)."""
    hits: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with lock:
                hits[self.path] += 1
                count = hits[self.path]
            route = routes.get(self.path)
            try:
                if route is None:
                    _send(self, 404, b"no route", content_type="text/plain", length=8)
                else:
                    route(self, count)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout, size cap): expected

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def site(microcontroller_dir: Path, tmp_path: Path) -> Iterator[Site]:
    images = _load_images(microcontroller_dir, tmp_path / "served")
    stop = threading.Event()
    with _serve(_build_routes(images, stop)) as (base, hits):
        try:
            yield Site(base=base, images=images, hits=hits)
        finally:
            stop.set()  # release the stalled /slow.jpg handler before the server stops


def _write_manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _entries(out: Path) -> dict[str, dict]:
    """URL -> its first report entry (a URL listed twice keeps its first line's entry)."""
    report = json.loads((out / REPORT_NAME).read_text())
    entries: dict[str, dict] = {}
    for e in report["entries"]:
        entries.setdefault(e["url"], e)
    return entries


def _files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


# --------------------------------------------------------------------------------------------------
# Pure functions


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h" + TRAVERSAL, "passwd"),
        ("http://h/a/b/IMG_0001.JPG?size=large#frag", "IMG_0001"),
        ("http://h/.hidden.jpg", "hidden"),
        ("http://h/caf%C3%A9%20photo%20(1).jpeg", "cafe_photo_1"),
        ("http://h/", "image"),
        ("http://h/..", "image"),
        ("http://h/dir%5C..%5Cwin.png", "win"),
        ("http://h/-rf%20x.jpg", "rf_x"),
        ("http://h/IMG_2018.12.28", "IMG_2018.12.28"),
    ],
)
def test_safe_stem_from_url(url: str, expected: str) -> None:
    assert naming.safe_stem(naming.name_from_url(url)) == expected


def test_parse_manifest_plain_and_csv(tmp_path: Path) -> None:
    m = tmp_path / "m.txt"
    plain = "# images for the demo\n\nhttp://a/x.jpg\n  https://b/y.png   # trailing comment\n"
    assert parse_manifest(plain, manifest=m) == [
        records.ManifestEntry(line=3, url="http://a/x.jpg"),
        records.ManifestEntry(line=4, url="https://b/y.png"),
    ]
    sha = "ab" * 32
    text = (
        f'# header next\nFilename, URL ,sha256\nmine.jpg,http://a/x.jpg,{sha.upper()}\n,"http://a/z,1.jpg",\n'
    )
    assert parse_manifest(text, manifest=m) == [
        records.ManifestEntry(line=3, url="http://a/x.jpg", sha256=sha, filename="mine.jpg"),
        records.ManifestEntry(line=4, url="http://a/z,1.jpg"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no URLs"),
        ("# only a comment\n\n", "no URLs"),
        ("url,sha256\n", "no rows"),
        ("url,sha256\nhttp://a/x.jpg,1234\n", "line 2: sha256 '1234' is not 64 hex digits"),
        ("url,sha256\n,\n", "line 2: empty url"),
        ("http://a/x.jpg http://a/y.jpg\n", "line 1: expected one URL per line"),
        (f"http://a/x.jpg,{'0' * 64}\n", "CSV without a header"),
    ],
)
def test_parse_manifest_errors_name_the_manifest(tmp_path: Path, text: str, message: str) -> None:
    manifest = tmp_path / "urls.txt"
    with pytest.raises(UserError, match=message) as info:
        parse_manifest(text, manifest=manifest)
    assert str(info.value).startswith(f"{manifest}: ")


def test_read_manifest_missing_and_binary(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not UTF-8"):
        read_manifest(binary)


def test_broken_previous_report_is_ignored(tmp_path: Path) -> None:
    report = tmp_path / REPORT_NAME
    for broken in (b"{not json", b"\xff\xfe binary", b"[1, 2]"):
        report.write_bytes(broken)
        assert load_previous_report(tmp_path) == {}


def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def test_inspect_image_rejects_what_training_cannot_read(microcontroller_dir: Path) -> None:
    photo = next(iter(sorted((microcontroller_dir / "images").glob("*.jpg")))).read_bytes()
    info = inspect_image(photo)
    assert (info.format, info.width, info.height) == ("jpeg", 800, 600)
    with pytest.raises(records.FetchError, match="corrupt or truncated") as truncated:
        inspect_image(photo[: len(photo) // 2])
    assert not truncated.value.retryable
    with pytest.raises(records.FetchError, match="format PPM is not supported"):
        inspect_image(_encoded(Image.new("RGB", (4, 4)), "PPM"))
    with pytest.raises(records.FetchError, match="not an image"):
        inspect_image(b"\x00" * 100)


def test_backoff_doubles_and_retries_stop_on_4xx() -> None:
    assert [fetch.backoff_delay(n, backoff=0.5) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert fetch._status_error(503, "Service Unavailable").retryable
    assert not fetch._status_error(404, "Not Found").retryable


# --------------------------------------------------------------------------------------------------
# Against the stand-in internet


def test_download_outcomes_files_and_resume(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = [
        "/img/good.jpg",
        "/missing.jpg",
        "/flaky.jpg",
        "/slow.jpg",
        "/big.jpg",
        "/big-stream.jpg",
        "/page.jpg",
        "/redirect.jpg",
        "/redirect-ftp.jpg",
        "/loop.jpg",
        "/dup-a.jpg",
        "/dup-b.jpg",
        TRAVERSAL,
        "/img/pic.png",
        "/img/misnamed.jpg",
        "/always500.jpg",
    ]
    urls = [site.url(p) for p in paths]
    manifest = _write_manifest(
        tmp_path / "urls.txt",
        ["# stand-in internet", *urls, "ftp://127.0.0.1/x.jpg", site.url("/img/good.jpg")],
    )
    delays: list[float] = []
    result = download.download(manifest=manifest, out_dir=out, options=FAST, sleep=delays.append)

    by_url = _entries(out)
    status = {p: by_url[site.url(p)]["status"] for p in paths}
    assert status == {
        "/img/good.jpg": "downloaded",
        "/missing.jpg": "failed",
        "/flaky.jpg": "downloaded",
        "/slow.jpg": "failed",
        "/big.jpg": "failed",
        "/big-stream.jpg": "failed",
        "/page.jpg": "failed",
        "/redirect.jpg": "downloaded",
        "/redirect-ftp.jpg": "failed",
        "/loop.jpg": "failed",
        "/dup-a.jpg": "downloaded",
        "/dup-b.jpg": "duplicate",
        TRAVERSAL: "downloaded",
        "/img/pic.png": "downloaded",
        "/img/misnamed.jpg": "downloaded",
        "/always500.jpg": "failed",
    }

    def entry(path: str) -> dict:
        return by_url[site.url(path)]

    # retry policy: 5xx and timeouts retried with doubling backoff, 4xx and bad bodies not
    assert entry("/flaky.jpg")["attempts"] == 2 and site.hits["/flaky.jpg"] == 2
    assert entry("/always500.jpg")["attempts"] == 3 and "HTTP 503" in entry("/always500.jpg")["reason"]
    assert entry("/slow.jpg")["attempts"] == 3 and "--timeout-read" in entry("/slow.jpg")["reason"]
    assert entry("/missing.jpg")["attempts"] == 1 and "HTTP 404" in entry("/missing.jpg")["reason"]
    assert site.hits["/missing.jpg"] == 1 and site.hits["/page.jpg"] == 1
    assert sorted(delays) == [0.01, 0.01, 0.01, 0.02, 0.02]
    # size cap, content check, redirects
    assert "Content-Length 1000000 exceeds --max-bytes 100000" in entry("/big.jpg")["reason"]
    assert "body exceeds --max-bytes 100000" in entry("/big-stream.jpg")["reason"]
    assert "HTML page" in entry("/page.jpg")["reason"]
    assert entry("/redirect.jpg")["final_url"] == site.url("/img/target.jpg")
    assert entry("/redirect.jpg")["sha256"] == sha256_bytes(site.images["target"])
    assert "not http(s)" in entry("/redirect-ftp.jpg")["reason"]
    assert "more than 3 redirects" in entry("/loop.jpg")["reason"]
    ftp = by_url["ftp://127.0.0.1/x.jpg"]
    assert ftp["status"] == "failed" and ftp["attempts"] == 0 and "scheme 'ftp'" in ftp["reason"]
    # dedupe: same bytes -> one file; the same URL twice -> no second request
    assert entry("/dup-b.jpg")["file"] == "dup-a.jpg"
    assert entry("/dup-b.jpg")["duplicate_of"] == site.url("/dup-a.jpg")
    report = json.loads((out / REPORT_NAME).read_text())
    assert [e["line"] for e in report["entries"]] == list(range(2, 2 + len(urls) + 2))
    repeat = report["entries"][-1]
    assert repeat["status"] == "duplicate" and repeat["attempts"] == 0 and site.hits["/img/good.jpg"] == 1
    # names: traversal flattened, extension from the decoded format, formats recorded
    assert site.hits[TRAVERSAL] == 1
    assert entry(TRAVERSAL)["file"] == "passwd.jpg"
    assert entry("/img/misnamed.jpg")["file"] == "misnamed.png"
    assert entry("/img/misnamed.jpg")["format"] == "png"
    assert (entry("/img/pic.png")["format"], entry("/img/pic.png")["width"]) == ("png", 64)
    assert entry("/img/good.jpg")["format"] == "jpeg"
    # on disk: exactly the accepted files with the served bytes, no temp/partial files, nothing outside
    expected = {"good.jpg", "flaky.jpg", "redirect.jpg", "dup-a.jpg", "passwd.jpg", "pic.png", "misnamed.png"}
    assert _files(out) == expected | {REPORT_NAME}
    assert (out / "good.jpg").read_bytes() == site.images["good"]
    assert (out / "passwd.jpg").read_bytes() == site.images["traversal"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "served", "urls.txt"]
    assert result == {
        "out_dir": str(out),
        "report": str(out / REPORT_NAME),
        "downloaded": 7,
        "skipped": 0,
        "duplicates": 2,
        "failed": 9,
        "files": [str(out / e["file"]) for e in report["entries"] if e["status"] == "downloaded"],
    }
    assert report["summary"] == {
        "downloaded": 7,
        "duplicate": 2,
        "failed": 9,
        "skipped_existing": 0,
        "total": 18,
    }

    # resume: the same manifest again -> no request for anything already on disk, same report bytes
    before = (out / REPORT_NAME).read_bytes()
    hits_before = Counter(site.hits)
    again = download.download(manifest=manifest, out_dir=out, options=FAST, sleep=lambda _s: None)
    assert (out / REPORT_NAME).read_bytes() == before
    for path in (
        "/img/good.jpg",
        "/flaky.jpg",
        "/redirect.jpg",
        "/img/target.jpg",
        "/dup-a.jpg",
        "/dup-b.jpg",
        TRAVERSAL,
        "/img/pic.png",
        "/img/misnamed.jpg",
    ):
        assert site.hits[path] == hits_before[path], path
    assert site.hits["/missing.jpg"] == hits_before["/missing.jpg"] + 1  # failures are tried again
    assert (again["downloaded"], again["skipped"], again["duplicates"], again["failed"]) == (0, 7, 2, 9)
    assert again["files"] == result["files"]
    assert _files(out) == expected | {REPORT_NAME}


def test_name_collision_never_overwrites(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.jpg").write_bytes(site.images["extra"])  # someone else's photo under the same name
    manifest = _write_manifest(
        tmp_path / "urls.txt", [site.url("/img/good.jpg"), site.url("/a/same.jpg"), site.url("/b/same.jpg")]
    )
    download.download(manifest=manifest, out_dir=out, options=FAST)
    by_url = _entries(out)
    good_sha = sha256_bytes(site.images["good"])
    assert by_url[site.url("/img/good.jpg")]["file"] == f"good-{good_sha[:8]}.jpg"
    assert (out / "good.jpg").read_bytes() == site.images["extra"]
    assert by_url[site.url("/a/same.jpg")]["file"] == "same.jpg"
    assert by_url[site.url("/b/same.jpg")]["file"] == f"same-{sha256_bytes(site.images['same_b'])[:8]}.jpg"
    assert (out / "same.jpg").read_bytes() == site.images["same_a"]
    # a file deleted since the last run is fetched again; the others are not
    (out / "same.jpg").unlink()
    again = download.download(manifest=manifest, out_dir=out, options=FAST)
    assert (again["downloaded"], again["skipped"]) == (1, 2)
    assert site.hits["/a/same.jpg"] == 2 and site.hits["/img/good.jpg"] == 1
    assert (out / "same.jpg").read_bytes() == site.images["same_a"]


def test_csv_manifest_checksums_names_and_resume_without_report(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    preplaced = site.images["extra"]
    (out / "preplaced.jpg").write_bytes(preplaced)
    good_sha = sha256_bytes(site.images["good"])
    rows = [
        "url,sha256,filename",
        f"{site.url('/img/good.jpg')},{good_sha},../My Photo.jpeg",
        f"{site.url('/dup-a.jpg')},{'0' * 64},",
        f"{site.url('/never-served.jpg')},{sha256_bytes(preplaced)},preplaced.jpg",
        f"{site.url('/other-mirror.jpg')},{good_sha},",
    ]
    manifest = _write_manifest(tmp_path / "urls.csv", rows)
    result = download.download(manifest=manifest, out_dir=out, options=FAST)
    by_url = _entries(out)
    assert by_url[site.url("/img/good.jpg")]["file"] == "My_Photo.jpg"
    mismatch = by_url[site.url("/dup-a.jpg")]
    assert mismatch["status"] == "failed" and "sha256 mismatch" in mismatch["reason"]
    kept = by_url[site.url("/never-served.jpg")]
    assert (kept["status"], kept["attempts"], kept["file"]) == ("skipped_existing", 0, "preplaced.jpg")
    mirror = by_url[site.url("/other-mirror.jpg")]
    assert (mirror["status"], mirror["attempts"], mirror["file"]) == ("duplicate", 0, "My_Photo.jpg")
    assert site.hits["/never-served.jpg"] == 0 and site.hits["/other-mirror.jpg"] == 0
    assert _files(out) == {"My_Photo.jpg", "preplaced.jpg", REPORT_NAME}  # mismatch not kept
    assert (result["downloaded"], result["skipped"], result["duplicates"], result["failed"]) == (1, 1, 1, 1)


def test_exit_policy(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "out"
    all_bad = _write_manifest(tmp_path / "bad.txt", [site.url("/missing.jpg"), site.url("/page.jpg")])
    with pytest.raises(UserError, match=r"bad\.txt: all 2 URL\(s\) failed \(line 1: HTTP 404"):
        download.download(manifest=all_bad, out_dir=out, options=FAST)
    assert (out / REPORT_NAME).is_file()  # the report is written before failing
    partial = _write_manifest(tmp_path / "partial.txt", [site.url("/img/good.jpg"), site.url("/missing.jpg")])
    assert download.download(manifest=partial, out_dir=out, options=FAST)["failed"] == 1
    with pytest.raises(UserError, match=r"partial\.txt: 1 of 2 URL\(s\) failed"):
        download.download(manifest=partial, out_dir=out, options=FAST, fail_on_error=True)


def test_cli_prints_json_last_line(site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    manifest = _write_manifest(tmp_path / "urls.txt", [site.url("/img/good.jpg"), site.url("/missing.jpg")])
    flags = [
        "--timeout-connect",
        "2",
        "--timeout-read",
        "2",
        "--max-bytes",
        "100k",
        "--retries",
        "1",
        "--backoff",
        "0.01",
    ]
    rc = cli.main(["download", "--manifest", str(manifest), "--out", str(out), *flags])
    captured = capsys.readouterr()
    assert rc == 0
    line = json.loads(captured.out.strip().splitlines()[-1])
    assert line == {
        "out_dir": str(out),
        "report": str(out / REPORT_NAME),
        "downloaded": 1,
        "skipped": 0,
        "duplicates": 0,
        "failed": 1,
        "files": [str(out / "good.jpg")],
    }
    rc = cli.main(["download", "--manifest", str(manifest), "--out", str(out), "--fail-on-error", *flags])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert f"error: {manifest}: 1 of 2 URL(s) failed" in captured.err
    rc = cli.main(["download", "--manifest", str(tmp_path / "missing.txt"), "--out", str(out)])
    assert rc == 2 and "missing.txt: manifest not found" in capsys.readouterr().err


def test_cli_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    download.add_arguments(parser)
    for bad in (["--timeout-read", "0"], ["--max-bytes", "lots"], ["--retries", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--manifest", "m", "--out", "o", *bad])
    assert "must be > 0" in capsys.readouterr().err
    args = parser.parse_args(["--manifest", "m", "--out", "o", "--max-bytes", "2M"])
    assert args.max_bytes == 2 * 1024 * 1024 and args.retries == 3 and not args.fail_on_error


@pytest.fixture
def self_signed_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (openssl CLI), to exercise the https path offline."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_verifies_certificates(
    self_signed_cert: tuple[Path, Path],
    microcontroller_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = self_signed_cert
    photo = sorted((microcontroller_dir / "images").glob("*.jpg"))[0].read_bytes()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with _serve({"/tls.jpg": _image_route(photo)}, tls=tls) as (base, hits):
        manifest = _write_manifest(tmp_path / "urls.txt", [base + "/tls.jpg", base + "/absent.jpg"])
        with pytest.raises(UserError, match="TLS certificate of 127.0.0.1:[0-9]+ is not trusted"):
            download.download(manifest=manifest, out_dir=tmp_path / "untrusted", options=FAST)
        assert _entries(tmp_path / "untrusted")[base + "/tls.jpg"]["attempts"] == 1  # not retried
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now the client trusts the test CA
        result = download.download(manifest=manifest, out_dir=tmp_path / "trusted", options=FAST)
    assert (result["downloaded"], result["failed"]) == (1, 1)
    assert (tmp_path / "trusted" / "tls.jpg").read_bytes() == photo
    assert hits["/tls.jpg"] == 1


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delays: list[float] = []
    with pytest.raises(records.FetchError, match=f"cannot connect to 127.0.0.1:{port}") as info:
        fetch.fetch_with_retries(f"http://127.0.0.1:{port}/x.jpg", options=FAST, sleep=delays.append)
    assert info.value.retryable and info.value.attempts == 3 and delays == [0.01, 0.02]


def test_redact_url_hides_passwords() -> None:
    assert naming.redact_url("https://me:s3cret@host/a.jpg") == "https://me:***@host/a.jpg"
    assert naming.redact_url("https://host/a.jpg?sig=1") == "https://host/a.jpg?sig=1"
