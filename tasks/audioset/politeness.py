"""How fast the downloader may ask: one request budget for every worker, and the stop-loss.

YouTube judges a session (an address, a cookie jar), not a thread, so pacing per worker multiplies
with the pool and the threads. Instead every shard task and thread that shares the state database
(every worker of a machine with the SQLite file under `state_dir`; of every host with
AUDIOSET_STATE_DB) draws from one token bucket per source host and session (cookies, proxy):
`max_requests_per_hour` on average, `burst` at once after an idle spell. A request is one clip
attempt (yt-dlp's probe and ffmpeg's reads of the section).

Persistent rate limiting (the stop-loss) pauses the whole budget, so every worker stops asking,
and the pause's end is stored with it: Airflow reschedules a paused shard for that moment, the CLI
waits it out. `pauses` counts pauses in a row without a success between them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tasks.audioset.state import StateDB

log = logging.getLogger("tasks")


@dataclass(frozen=True)
class Gate:
    wait_s: float  # 0: go now
    paused_until: float = 0.0  # epoch seconds; > now while the stop-loss holds the budget


class Budget:
    """A token bucket in the state database, one row per source host and session."""

    def __init__(self, state_dir: Path, url_template: str, per_hour: float, burst: int, session: str = "") -> None:
        """session: which cookies/proxy the requests go out with (Credentials.session): each has its own budget."""
        self.state_dir, self.rate, self.burst = state_dir, per_hour / 3600.0, float(burst)
        url = urlsplit(url_template)
        host = f"{url.hostname}:{url.port}" if url.port else url.hostname or "local"  # never user:pass@
        self.name = f"{host}#{session}" if session else host
        self._local = threading.local()

    @property
    def _db(self) -> StateDB:
        if not hasattr(self._local, "db"):  # one connection per thread: neither driver shares one across threads
            self._local.db = StateDB(self.state_dir)
        return self._local.db

    def _row(self, now: float) -> tuple[float, float, float, int]:
        rows = self._db.execute("SELECT tokens, updated, paused_until, pauses FROM budget WHERE name = ?", (self.name,))
        return rows[0] if rows else (self.burst, now, 0.0, 0)

    def _write(self, tokens: float, now: float, paused_until: float, pauses: int) -> None:
        self._db.execute("INSERT INTO budget VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                         "tokens = excluded.tokens, updated = excluded.updated, paused_until = excluded.paused_until, "
                         "pauses = excluded.pauses", (self.name, tokens, now, paused_until, pauses))  # fmt: skip

    def take(self) -> Gate:
        """Spend one request if the bucket holds one; else how long until it will (or the pause ends)."""
        with self._db.transaction(f"budget:{self.name}"):
            now = time.time()
            tokens, updated, paused_until, pauses = self._row(now)
            if paused_until > now:
                return Gate(paused_until - now, paused_until)
            tokens = min(self.burst, tokens + max(0.0, now - updated) * self.rate)
            if tokens >= 1.0:
                self._write(tokens - 1.0, now, paused_until, pauses)
                return Gate(0.0)
            return Gate((1.0 - tokens) / self.rate)

    def pause(self, seconds: float) -> tuple[float, int]:
        """Stop every worker for `seconds`: (when the pause ends, pauses in a row). A pause that is
        already running is not extended or counted twice: several workers see the same streak."""
        with self._db.transaction(f"budget:{self.name}"):
            now = time.time()
            _, _, paused_until, pauses = self._row(now)
            if paused_until <= now:
                paused_until, pauses = now + seconds, pauses + 1
                # The bucket refills from the pause's end, not during it: no burst greets the server.
                self._write(0.0, paused_until, paused_until, pauses)
            return paused_until, pauses

    def succeeded(self) -> None:
        """A definite answer from the server ends a run of pauses (under the lock: take() rewrites the row)."""
        with self._db.transaction(f"budget:{self.name}"):
            self._db.execute("UPDATE budget SET pauses = 0 WHERE name = ? AND pauses > 0", (self.name,))


class StopLoss:
    """After `after` rate-limited attempts in a row in one shard, the budget pauses for `pause_s`; once
    more than `max_pauses` pauses came in a row, the shard stops instead of burning through its list."""

    def __init__(self, budget: Budget, after: int, pause_s: float, max_pauses: int) -> None:
        self.budget, self.after, self.pause_s, self.max_pauses = budget, after, pause_s, max_pauses
        self.streak = 0
        self.stopped = False
        self.lock = threading.Lock()

    def ok(self) -> None:
        with self.lock:
            self.streak = 0
        self.budget.succeeded()

    def limited(self) -> None:
        with self.lock:
            self.streak += 1
            if self.streak < self.after or self.stopped:
                return
            self.streak = 0
            resume_at, pauses = self.budget.pause(self.pause_s)
            if pauses > self.max_pauses:
                self.stopped = True
                log.warning("stop-loss: rate limited through %d pauses in a row; stopping the shard", pauses - 1)
                return
            log.warning("stop-loss: %d rate-limited attempts in a row; every worker pauses until %s (pause %d of %d)",
                        self.after, time.strftime("%H:%M:%S", time.localtime(resume_at)), pauses,
                        self.max_pauses)  # fmt: skip


def backoff(base_s: float, max_s: float, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff; a server's Retry-After is honoured when it asks for longer, up to max_s."""
    wait = base_s * 2 ** (attempt - 1)
    if retry_after is not None:
        wait = max(wait, retry_after)
    return min(wait, max_s)
