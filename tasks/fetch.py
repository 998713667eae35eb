"""Fetch one source file from http(s)://, file:// or a plain path: resumable, verified."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

import requests
from tqdm import tqdm

from tasks.config import DownloadConfig
from tasks.errors import PipelineError

log = logging.getLogger("tasks")
CHUNK = 1 << 16
# Query parameters that carry credentials on internal mirrors and signed URLs (S3, GCS, Azure SAS).
SECRET_PARAM = re.compile(r"token|key|sig|secret|pass|auth|credential|session|x-amz-|x-goog-", re.IGNORECASE)
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(url: str) -> str:
    """The URL as logs, errors and metrics may show it: no user:password@, no secret query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = f"***@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    query = "&".join(f"{name}=***" if sep and SECRET_PARAM.search(name) else f"{name}{sep}{value}"
                     for name, sep, value in (field.partition("=") for field in parts.query.split("&")) if name
                     )  # fmt: skip
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside a message (an exception's text, a tool's output) redacted."""
    return URL_IN_TEXT.sub(lambda m: redact(m.group()), text)


class FetchError(PipelineError):
    """The source could not be fetched or failed verification; names the URL."""


class HttpStatusError(FetchError):
    """The server answered with an error status."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{redact(url)}: HTTP {status} {reason}")
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status >= 500 or self.status in (408, 429)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_path(url: str) -> Path | None:
    """The filesystem path a file:// URL or plain path names; None for http(s)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise FetchError(f"{redact(url)}: unsupported URL scheme {parsed.scheme!r} (use http(s)://, file:// or a "
                         "path)")  # fmt: skip
    return Path(url)


def cache_name(url: str) -> str:
    """A stable cache file name: the URL's basename, prefixed by a hash of the whole URL."""
    base = Path(unquote(urlparse(url).path)).name or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def _http_download(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part`, resuming from its current size with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416:  # already complete
            return
        if resp.status_code not in (200, 206):
            raise HttpStatusError(url, resp.status_code, resp.reason)
        if have and resp.status_code == 200:
            have = 0  # server ignored the Range header: start over
        expected = resp.headers.get("Content-Length")
        total = have + int(expected) if expected is not None else None
        with part.open("ab" if have else "wb") as fh, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name[13:],
            disable=not os.isatty(2), leave=False,
        ) as bar:  # fmt: skip
            for chunk in resp.iter_content(CHUNK):
                fh.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise FetchError(f"{redact(url)}: connection closed after {part.stat().st_size} of {total} bytes")


def fetch(cfg: DownloadConfig, root: Path) -> Path:
    """Return a verified local copy of cfg.url, downloading (and resuming) into the cache."""
    src = local_path(cfg.url)
    if src is not None:
        if not src.is_file():
            raise FetchError(f"{redact(cfg.url)}: no such file")
        verify(src, cfg.sha256, cfg.url)
        return src
    cache = (root / cfg.cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / cache_name(cfg.url)
    if final.exists():
        verify(final, cfg.sha256, cfg.url)
        log.info("using cached download %s", final)
        return final
    part = final.with_name(final.name + ".part")
    for attempt in range(1, cfg.attempts + 1):
        try:
            _http_download(cfg.url, part, cfg.timeout_s)
            break
        except (requests.RequestException, FetchError) as exc:
            if attempt == cfg.attempts or (isinstance(exc, HttpStatusError) and not exc.transient):
                raise FetchError(f"{redact(cfg.url)}: download failed after {attempt} attempt(s): "
                                 f"{redact_text(str(exc))}") from None  # the chained error would show the URL
            wait = min(2.0**attempt, 30.0)
            log.warning("%s: attempt %d failed (%s); resuming in %.0f s", redact(cfg.url), attempt,
                        redact_text(str(exc)), wait)  # fmt: skip
            time.sleep(wait)
    try:
        verify(part, cfg.sha256, cfg.url)
    except FetchError:
        # Keep the evidence, but never let a bad file be resumed or reused.
        shutil.move(part, final.with_name(final.name + ".bad"))
        raise
    os.replace(part, final)
    return final


def verify(path: Path, sha256: str | None, url: str) -> None:
    url = redact(url)
    if path.stat().st_size == 0:
        raise FetchError(f"{url}: downloaded file is empty")
    if sha256 is None:
        log.warning("%s: no sha256 configured; the download is not verified", url)
        return
    actual = sha256_file(path)
    if actual != sha256:
        raise FetchError(f"{url}: sha256 mismatch: expected {sha256}, got {actual}")
