"""Why a clip could not be downloaded: one failure class per outcome, and whether retrying can help.

yt-dlp reports problems as DownloadError wrapping HTTPError(status) / ExtractorError / TransportError,
or raises a TransportError directly; YouTube's reasons arrive as ExtractorError messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# reason -> permanent (remembered and never retried) or transient (retried, attempts counted).
PERMANENT = {
    "invalid_id": True,
    "unavailable": True,
    "private": True,
    "removed": True,
    "sign_in_required": True,  # age- or sign-in-gated
    "geo_blocked": True,
    "duration_mismatch": True,
    "silent": True,
    "rate_limited": False,
    "bot_check": False,
    "network": False,
    "postprocessing": False,
}
RATE_LIMITS = {"rate_limited", "bot_check"}  # what the stop-loss counts

# YouTube's wording, first match wins: specific reasons before the generic "unavailable".
MESSAGE_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("bot_check", re.compile(r"not a bot|confirm you.re not a robot|unusual traffic")),
    ("rate_limited", re.compile(r"http error 429|too many requests|rate.?limit")),
    ("sign_in_required", re.compile(r"confirm your age|age.restricted|inappropriate for some users")),
    ("private", re.compile(r"private video|video is private|members.only|join this channel")),
    ("geo_blocked", re.compile(r"in your country|geo.?restrict|not available in your (region|location)")),
    ("removed", re.compile(r"removed|terminated|no longer available|copyright claim")),
    ("sign_in_required", re.compile(r"sign in")),
    ("unavailable", re.compile(r"unavailable|does not exist|not available|unsupported url|http error 40[0-9]")),
    ("postprocessing", re.compile(r"postprocessing|post-processing|conversion failed|audio conversion")),
    # ffmpeg fetches the section itself: a reset or truncated transfer ends it with a bare exit code.
    ("network", re.compile(r"ffmpeg exited with code|timed out|connection|reset by peer|incomplete|truncat")),
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    retry_after: float | None = None  # seconds the server asked us to wait

    @property
    def permanent(self) -> bool:
        return PERMANENT[self.reason]


class ClipProblem(Exception):
    """Raised inside one clip's download: the classified outcome."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def clean_message(text: str) -> str:
    text = ANSI.sub("", text).replace("\u2019", "'").strip()
    return text.removeprefix("ERROR: ").strip()[:500]


def classify(exc: BaseException) -> Problem:
    """Map any exception raised by a yt-dlp download to its failure class."""
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import DownloadError, GeoRestrictedError, PostProcessingError

    inner: BaseException = exc
    if isinstance(exc, DownloadError) and exc.exc_info and exc.exc_info[1] is not None:
        inner = exc.exc_info[1]
    message = clean_message(str(exc) or repr(exc))
    cause = getattr(inner, "cause", None)
    http = inner if isinstance(inner, HTTPError) else cause if isinstance(cause, HTTPError) else None
    if http is not None:
        wait = retry_after(http.response.headers.get("Retry-After")) if http.response is not None else None
        if http.status == 429:
            return Problem("rate_limited", message, wait)
        if http.status >= 500:
            return Problem("network", message, wait)
        if http.status in (401, 403):
            # YouTube answers a flagged session with 403 on the media URL: back off, do not give up on the video.
            return Problem("bot_check", message, wait)
        return Problem("unavailable", message)
    if isinstance(inner, GeoRestrictedError):
        return Problem("geo_blocked", message)
    if isinstance(inner, PostProcessingError):
        return Problem("postprocessing", message)
    if isinstance(inner, (TransportError, TimeoutError, ConnectionError)):
        return Problem("network", message)
    lowered = message.lower()
    for reason, pattern in MESSAGE_RULES:
        if pattern.search(lowered):
            return Problem(reason, message)
    return Problem("network", message)  # unknown: assume it may pass, so it is retried rather than lost
