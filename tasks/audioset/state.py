"""What the downloader keeps between runs, outside the DVC outputs (`dvc repro` never wipes it).

One SQLite file under `state_dir`, safe for several shard tasks and threads of one machine; or, when the
deployment sets AUDIOSET_STATE_DB to a postgresql:// URL, a Postgres database that every worker of every
host shares (with it the request budget: one YouTube session, one budget, however many hosts). Tables:
- `fetched`: every clip ever fetched and decoded, whatever the acceptance thresholds or the selection
  say today. The store is judged from it, so new thresholds, a shrunk quota or a new shard size never
  ask the source again. Keyed by clip id and the parameters that shape the audio (rate, channels).
- `failed`: permanent source failures (gone, private, ...), so the next run does not ask again.
  Keyed by clip id and the source as well.
- `budget`: the request budget every worker shares (`tasks.audioset.politeness`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.audio import FlacBlob
from tasks.storage import Failure, params_hash

STATE_DB_ENV = "AUDIOSET_STATE_DB"
# Written once for both databases: {blob} and {real} are their names for bytes and doubles.
SCHEMA = """
CREATE TABLE IF NOT EXISTS fetched (
    id TEXT NOT NULL, fingerprint TEXT NOT NULL, flac {blob} NOT NULL,
    sample_rate INTEGER NOT NULL, channels INTEGER NOT NULL, frames INTEGER NOT NULL,
    PRIMARY KEY (id, fingerprint));
CREATE TABLE IF NOT EXISTS failed (
    id TEXT NOT NULL, fingerprint TEXT NOT NULL, source TEXT NOT NULL, stage TEXT NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL,
    PRIMARY KEY (id, fingerprint));
CREATE TABLE IF NOT EXISTS budget (
    name TEXT PRIMARY KEY, tokens {real} NOT NULL, updated {real} NOT NULL,
    paused_until {real} NOT NULL, pauses INTEGER NOT NULL);
"""


class StateDB:
    """One connection to the download state, in autocommit mode (each statement its own transaction unless
    `transaction` begins one). Statements use ? placeholders and SQL that SQLite and Postgres both accept."""

    def __init__(self, state_dir: Path) -> None:
        url = os.environ.get(STATE_DB_ENV)
        self.postgres = bool(url)
        if url:
            import psycopg2

            # A lock wait past 10 min is a stuck peer, not a busy one: fail rather than hang every worker.
            self.db: Any = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"),
                                            options="-c lock_timeout=600s")  # fmt: skip
            self.db.autocommit = True
            with self.transaction("schema"):  # one creator at a time; the lock ends with the transaction
                self.execute(SCHEMA.format(blob="BYTEA", real="DOUBLE PRECISION"))
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(state_dir / "state.sqlite", timeout=120, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA.format(blob="BLOB", real="REAL"))
        _migrate(self.db)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if not self.postgres:
            return self.db.execute(sql, params).fetchall()
        with self.db.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

    @contextmanager
    def transaction(self, lock: str) -> Iterator[None]:
        """A transaction that holds `lock` against every other connection, on any host, until it ends."""
        if self.postgres:
            self.execute("BEGIN")
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (lock,))
        else:
            self.execute("BEGIN IMMEDIATE")  # SQLite has one writer at a time: the lock is the whole file
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class DownloadState:
    def __init__(self, state_dir: Path, audio_key: str, source_key: str) -> None:
        """audio_key: what shapes a fetched clip's audio; source_key: that plus where it was fetched from."""
        self.audio_key, self.source_key = audio_key, source_key
        self.db = StateDB(state_dir)

    def close(self) -> None:
        self.db.close()

    def save(self, clip_id: str, flac: FlacBlob) -> None:
        self.db.execute("INSERT INTO fetched VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id, fingerprint) DO UPDATE SET "
                        "flac = excluded.flac, sample_rate = excluded.sample_rate, channels = excluded.channels, "
                        "frames = excluded.frames",
                        (clip_id, self.audio_key, flac.data, flac.sample_rate, flac.channels, flac.frames))  # fmt: skip

    def fetched(self, ids: Sequence[str]) -> dict[str, FlacBlob]:
        rows = self._select("fetched", "id, flac, sample_rate, channels, frames", self.audio_key, ids)
        return {cid: FlacBlob(bytes(data), *values) for cid, data, *values in rows}  # Postgres gives memoryviews

    def fetched_ids(self, ids: Sequence[str]) -> set[str]:
        return {cid for (cid,) in self._select("fetched", "id", self.audio_key, ids)}

    def remember(self, failure: Failure) -> None:
        f = failure
        self.db.execute("INSERT INTO failed VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id, fingerprint) DO UPDATE SET "
                        "source = excluded.source, stage = excluded.stage, reason = excluded.reason, "
                        "message = excluded.message, attempts = excluded.attempts",
                        (f.id, self.source_key, f.source, f.stage, f.reason, f.message, f.attempts))  # fmt: skip

    def remembered(self, ids: Sequence[str]) -> dict[str, Failure]:
        rows = self._select("failed", "id, source, stage, reason, message, attempts", self.source_key, ids)
        return {cid: Failure(cid, *values) for cid, *values in rows}

    def adopt_failures(self, old_key: str, judged: set[str]) -> None:
        """Failures remembered under an earlier layout's key: the source's own answers are kept; verdicts on
        audio (judged reasons) are dropped, since that layout did not keep the audio to judge again."""
        marks = ",".join("?" * len(judged))
        self.db.execute(f"DELETE FROM failed WHERE fingerprint = ? AND (reason IN ({marks}) OR id IN "
                        f"(SELECT id FROM failed WHERE fingerprint = ?))",
                        (old_key, *judged, self.source_key))  # fmt: skip
        self.db.execute("UPDATE failed SET fingerprint = ? WHERE fingerprint = ?", (self.source_key, old_key))

    def _select(self, table: str, columns: str, key: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """`columns` of the rows of `ids` under `key`, a few hundred ids per query."""
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {columns} FROM {table} WHERE fingerprint = ? AND id IN ({marks})"
            rows += self.db.execute(query, (key, *chunk))
        return rows


def _migrate(db: sqlite3.Connection) -> None:
    """The earlier layout's `staged` table (verified clips awaiting their shard) moves into `fetched`, keyed by
    what shaped each clip's audio, so an upgrade loses none of them."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'staged'").fetchone():
        return
    db.execute("BEGIN IMMEDIATE")
    for rate, channels in db.execute("SELECT DISTINCT sample_rate, channels FROM staged").fetchall():
        key = params_hash({"sample_rate": rate, "channels": channels})
        db.execute("INSERT OR IGNORE INTO fetched SELECT id, ?, flac, sample_rate, channels, frames FROM staged "
                   "WHERE sample_rate = ? AND channels = ?", (key, rate, channels))  # fmt: skip
    db.execute("DROP TABLE staged")
    db.execute("COMMIT")


def _chunks(ids: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    ids = list(ids)
    return (ids[i : i + size] for i in range(0, len(ids), size))
