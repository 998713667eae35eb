import hashlib
import os
from pathlib import Path

import pytest
import requests

from devtools.mirror.server import Fault, MirrorServer
from tasks.config import DownloadConfig
from tasks.fetch import FetchError, cache_name, fetch, redact, redact_text

PAYLOAD = os.urandom(3_000_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "data.bin").write_bytes(PAYLOAD)
    with MirrorServer(tmp_path / "srv") as srv:
        yield srv


def cfg(url: str, sha: str | None = SHA, attempts: int = 3) -> DownloadConfig:
    return DownloadConfig(url=url, sha256=sha, cache_dir="cache", timeout_s=10, attempts=attempts)


def test_http_download_is_verified_and_cached(server: MirrorServer, tmp_path: Path) -> None:
    path = fetch(cfg(f"{server.url}/data.bin"), tmp_path)
    assert path.read_bytes() == PAYLOAD
    n = len(server.requests)
    assert fetch(cfg(f"{server.url}/data.bin"), tmp_path) == path
    assert len(server.requests) == n  # served from the cache


def test_reset_mid_stream_resumes_with_range(server: MirrorServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("tasks.fetch.time.sleep", lambda s: None)
    server.add_fault("data.bin", Fault("reset", after_bytes=1_000_000))
    path = fetch(cfg(f"{server.url}/data.bin"), tmp_path)
    assert path.read_bytes() == PAYLOAD
    ranges = [r for p, r in server.requests if p == "/data.bin"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1].split("=")[1].rstrip("-")) > 0  # resumed, not restarted


def test_wrong_checksum_is_refused_and_not_reused(server: MirrorServer, tmp_path: Path) -> None:
    url = f"{server.url}/data.bin"
    with pytest.raises(FetchError, match=rf"{url}: sha256 mismatch: expected {'0' * 64}, got {SHA}"):
        fetch(cfg(url, sha="0" * 64), tmp_path)
    cache = tmp_path / "cache"
    assert (cache / (cache_name(url) + ".bad")).exists()
    assert not (cache / cache_name(url)).exists() and not (cache / (cache_name(url) + ".part")).exists()


def test_truncated_download_fails_its_checksum(server: MirrorServer, tmp_path: Path) -> None:
    server.add_fault("data.bin", Fault("truncate", after_bytes=1000))
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(cfg(f"{server.url}/data.bin"), tmp_path)


def test_http_errors_name_the_url(server: MirrorServer, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"/missing.zip: .*after 1 attempt\(s\).*HTTP 404"):
        fetch(cfg(f"{server.url}/missing.zip"), tmp_path)
    assert [p for p, _ in server.requests] == ["/missing.zip"]  # a 404 is final: not asked again


def test_rate_limit_is_transient_and_retried(server: MirrorServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("tasks.fetch.time.sleep", lambda s: None)
    server.add_fault("data.bin", Fault("status", status=429, headers={"Retry-After": "1"}), times=2)
    assert fetch(cfg(f"{server.url}/data.bin"), tmp_path).read_bytes() == PAYLOAD
    assert len([p for p, _ in server.requests if p == "/data.bin"]) == 3


def test_persistent_server_errors_give_up_after_the_attempts(server: MirrorServer, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("tasks.fetch.time.sleep", lambda s: None)
    server.add_fault("data.bin", Fault("status", status=503), times=5)
    with pytest.raises(FetchError, match=r"failed after 2 attempt\(s\).*HTTP 503"):
        fetch(cfg(f"{server.url}/data.bin", attempts=2), tmp_path)


def test_file_urls_and_plain_paths(tmp_path: Path) -> None:
    src = tmp_path / "local.bin"
    src.write_bytes(PAYLOAD)
    assert fetch(cfg(f"file://{src}"), tmp_path) == src
    assert fetch(cfg(str(src)), tmp_path) == src
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    with pytest.raises(FetchError, match="empty"):
        fetch(cfg(str(empty), sha=None), tmp_path)
    with pytest.raises(FetchError, match="no such file"):
        fetch(cfg(str(tmp_path / "nope.zip")), tmp_path)
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        fetch(cfg("ftp://host/x.zip"), tmp_path)


def test_mirror_serves_ranges_like_a_real_server(server: MirrorServer) -> None:
    url = f"{server.url}/data.bin"
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=5)
    assert part.status_code == 206 and part.content == PAYLOAD[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(PAYLOAD)}"
    assert requests.get(url, headers={"Range": "bytes=-5"}, timeout=5).content == PAYLOAD[-5:]
    assert requests.get(url, headers={"Range": f"bytes={len(PAYLOAD)}-"}, timeout=5).status_code == 416
    assert requests.get(f"{server.url}/../../etc/passwd", timeout=5).status_code == 404
    server.add_fault("data.bin", Fault("status", status=429, headers={"Retry-After": "7"}))
    limited = requests.get(url, timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert requests.get(url, timeout=5).content == PAYLOAD  # the fault was consumed


def test_credentials_in_source_urls_never_reach_messages_or_logs(
        server: MirrorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    host = server.url.removeprefix("http://")
    url = f"http://mirror-user:hunter2@{host}/missing.zip?download=1&token=s3cr3t&X-Amz-Signature=abc123"
    assert redact(url) == f"http://***@{host}/missing.zip?download=1&token=***&X-Amz-Signature=***"
    assert redact_text(f"fetching {url} failed") == f"fetching {redact(url)} failed"
    with pytest.raises(FetchError) as failure:
        fetch(cfg(url), tmp_path)
    shown = str(failure.value) + "\n" + caplog.text
    assert "/missing.zip" in str(failure.value) and "HTTP 404" in str(failure.value)
    for secret in ("hunter2", "s3cr3t", "abc123", "mirror-user"):
        assert secret not in shown
    assert [p for p, _ in server.requests] == ["/missing.zip"]  # the credentials still went to the server
