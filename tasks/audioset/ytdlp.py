"""One clip attempt with yt-dlp: its options, credentials kept out of every log, and what it fetched.

Only the section [start, end] is fetched (yt-dlp `download_ranges`; ffmpeg reads it with Range
requests) and converted to `sample_rate` / `channels`. Failures come back classified (`classify`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from tasks.audio import FlacBlob, encode_flac
from tasks.audioset.classify import ClipProblem, Problem, classify
from tasks.audioset.lists import check_ytid
from tasks.config import AcquireAudiosetConfig, CredentialsConfig
from tasks.fetch import redact_text
from tasks.storage import params_hash

log = logging.getLogger("tasks")


@dataclass(frozen=True)
class Credentials:
    """Optional cookies file and proxy. Never logged: repr shows only whether each is set."""

    cookies_file: Path | None = field(default=None, repr=False)
    proxy: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        state = {name: "set" if value else "unset" for name, value in (("cookies", self.cookies_file),
                                                                       ("proxy", self.proxy))}  # fmt: skip
        return f"Credentials(cookies={state['cookies']}, proxy={state['proxy']})"

    @classmethod
    def from_env(cls, cfg: CredentialsConfig) -> Credentials:
        cookies = os.environ.get(cfg.cookies_env) or None
        return cls(Path(cookies) if cookies else None, os.environ.get(cfg.proxy_env) or None)

    @property
    def session(self) -> str:
        """Which YouTube session these are, for the request budget: '' without cookies or proxy, else a digest
        (never the values themselves)."""
        if not (self.cookies_file or self.proxy):
            return ""
        return params_hash({"cookies": str(self.cookies_file), "proxy": self.proxy})[:12]

    def redact(self, text: str) -> str:
        for secret, mark in ((self.proxy, "<proxy>"), (str(self.cookies_file) if self.cookies_file else None,
                                                       "<cookies>")):  # fmt: skip
            if secret:
                text = text.replace(secret, mark)
        return text


class _YtdlpLog:
    """yt-dlp's own chatter goes to debug: each outcome is logged once, classified, by the shard loop."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", redact_text(self.creds.redact(msg)))

    info = warning = error = debug


def ytdlp_options(
    cfg: AcquireAudiosetConfig, section: tuple[float, float], workdir: Path, creds: Credentials
) -> dict[str, Any]:
    from yt_dlp.utils import download_range_func

    opts: dict[str, Any] = {
        "format": "bestaudio/best",
        "outtmpl": "clip.%(ext)s",
        "paths": {"home": str(workdir), "temp": str(workdir)},
        "download_ranges": download_range_func(None, [section]),
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": "wav"}],
        "postprocessor_args": {"extractaudio": ["-ar", str(cfg.sample_rate), "-ac", str(cfg.channels)]},
        # ffmpeg reads the section itself: without a timeout a stalled server would hang it forever, and
        # without -xerror a body cut short (a reset, or fewer bytes than Content-Length) ends the audio
        # early with exit code 0, which would pass for a video shorter than its segment.
        "external_downloader_args": {"ffmpeg_i": ["-xerror", "-rw_timeout", str(int(cfg.socket_timeout_s * 1e6))]},
        "socket_timeout": cfg.socket_timeout_s,
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0, "file_access_retries": 0,  # we retry, counted
        "noplaylist": True, "overwrites": True, "cachedir": False,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": _YtdlpLog(creds),
    }  # fmt: skip
    if creds.cookies_file:
        # yt-dlp writes cookies back on exit: each download gets its own copy, the user's file stays as it is.
        copy = workdir / "cookies.txt"
        shutil.copyfile(creds.cookies_file, copy)
        opts["cookiefile"] = str(copy)
    if creds.proxy:
        opts["proxy"] = creds.proxy
    return opts


def decoded(path: Path, cfg: AcquireAudiosetConfig) -> FlacBlob:
    """The converted section as FLAC, if it has the expected rate and channels. Whether it is long and loud
    enough is judged later, from the stored audio, so new thresholds never need a new request."""
    try:
        samples, rate = sf.read(path, dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise ClipProblem(Problem("postprocessing", f"converted audio is unreadable: {exc}")) from exc
    if rate != cfg.sample_rate or samples.shape[1] != cfg.channels:
        raise ClipProblem(Problem("postprocessing", f"converted audio is {rate} Hz x {samples.shape[1]}, expected "
                                                    f"{cfg.sample_rate} Hz x {cfg.channels}"))  # fmt: skip
    return encode_flac(samples[:, 0] if cfg.channels == 1 else samples, rate)


def fetch_section(cfg: AcquireAudiosetConfig, ytid: str, section: tuple[float, float], creds: Credentials,
                  scratch: Path) -> FlacBlob:  # fmt: skip
    """One attempt at one clip: yt-dlp's Python API, never a shell string."""
    import yt_dlp

    url = cfg.url_template.format(ytid=check_ytid(ytid))
    with tempfile.TemporaryDirectory(prefix="clip-", dir=scratch) as tmp:
        workdir = Path(tmp)
        try:
            with yt_dlp.YoutubeDL(ytdlp_options(cfg, section, workdir, creds)) as ydl:
                ydl.download([url])
        except ClipProblem:
            raise
        except Exception as exc:  # yt-dlp raises DownloadError, or a bare TransportError from some paths
            problem = classify(exc)
            message = redact_text(creds.redact(problem.message))  # cookies, proxy and any secret in the URL
            raise ClipProblem(Problem(problem.reason, message, problem.retry_after)) from None
        out = workdir / "clip.wav"
        if not out.exists():
            raise ClipProblem(Problem("postprocessing", "yt-dlp finished but wrote no audio file"))
        return decoded(out, cfg)
