"""What the downloader keeps between runs, outside the DVC outputs (`dvc repro` never wipes it).

One SQLite file under `state_dir`, safe for several shard tasks and threads at once:
- `fetched`: every clip ever fetched and decoded, whatever the acceptance thresholds or the selection
  say today. The store is judged from it, so new thresholds, a shrunk quota or a new shard size never
  ask the source again. Keyed by clip id and the parameters that shape the audio (rate, channels).
- `failed`: permanent source failures (gone, private, ...), so the next run does not ask again.
  Keyed by clip id and the source as well.
- `budget`: the request budget every worker shares (`tasks.audioset.politeness`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tasks.audio import FlacBlob
from tasks.storage import Failure

SCHEMA = """
CREATE TABLE IF NOT EXISTS fetched (
    id TEXT NOT NULL, fingerprint TEXT NOT NULL, flac BLOB NOT NULL,
    sample_rate INTEGER NOT NULL, channels INTEGER NOT NULL, frames INTEGER NOT NULL,
    PRIMARY KEY (id, fingerprint));
CREATE TABLE IF NOT EXISTS failed (
    id TEXT NOT NULL, fingerprint TEXT NOT NULL, source TEXT NOT NULL, stage TEXT NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL,
    PRIMARY KEY (id, fingerprint));
CREATE TABLE IF NOT EXISTS budget (
    name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL,
    paused_until REAL NOT NULL, pauses INTEGER NOT NULL);
"""


def fingerprint(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def connect(state_dir: Path) -> sqlite3.Connection:
    """A connection in autocommit mode: each statement is its own transaction unless one is begun."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state_dir / "state.sqlite", timeout=120, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    _migrate(db)
    return db


class DownloadState:
    def __init__(self, state_dir: Path, audio_key: str, source_key: str) -> None:
        """audio_key: what shapes a fetched clip's audio; source_key: that plus where it was fetched from."""
        self.audio_key, self.source_key = audio_key, source_key
        self.db = connect(state_dir)

    def close(self) -> None:
        self.db.close()

    def save(self, clip_id: str, flac: FlacBlob) -> None:
        self.db.execute("INSERT OR REPLACE INTO fetched VALUES (?, ?, ?, ?, ?, ?)",
                        (clip_id, self.audio_key, flac.data, flac.sample_rate, flac.channels, flac.frames))  # fmt: skip

    def fetched(self, ids: Sequence[str]) -> dict[str, FlacBlob]:
        rows = self._select("fetched", "id, flac, sample_rate, channels, frames", self.audio_key, ids)
        return {cid: FlacBlob(*values) for cid, *values in rows}

    def fetched_ids(self, ids: Sequence[str]) -> set[str]:
        return {cid for (cid,) in self._select("fetched", "id", self.audio_key, ids)}

    def remember(self, failure: Failure) -> None:
        f = failure
        self.db.execute("INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (f.id, self.source_key, f.source, f.stage, f.reason, f.message, f.attempts))  # fmt: skip

    def remembered(self, ids: Sequence[str]) -> dict[str, Failure]:
        rows = self._select("failed", "id, source, stage, reason, message, attempts", self.source_key, ids)
        return {cid: Failure(cid, *values) for cid, *values in rows}

    def adopt_failures(self, old_key: str, judged: set[str]) -> None:
        """Failures remembered under an earlier layout's key: the source's own answers are kept; verdicts on
        audio (judged reasons) are dropped, since that layout did not keep the audio to judge again."""
        marks = ",".join("?" * len(judged))
        self.db.execute(f"DELETE FROM failed WHERE fingerprint = ? AND reason IN ({marks})", (old_key, *judged))
        self.db.execute("UPDATE OR IGNORE failed SET fingerprint = ? WHERE fingerprint = ?", (self.source_key, old_key))

    def _select(self, table: str, columns: str, key: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """`columns` of the rows of `ids` under `key`, a few hundred ids per query."""
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {columns} FROM {table} WHERE fingerprint = ? AND id IN ({marks})"
            rows += self.db.execute(query, (key, *chunk)).fetchall()
        return rows


def _migrate(db: sqlite3.Connection) -> None:
    """The earlier layout's `staged` table (verified clips awaiting their shard) moves into `fetched`, keyed by
    what shaped each clip's audio, so an upgrade loses none of them."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'staged'").fetchone():
        return
    db.execute("BEGIN IMMEDIATE")
    for rate, channels in db.execute("SELECT DISTINCT sample_rate, channels FROM staged").fetchall():
        key = fingerprint({"sample_rate": rate, "channels": channels})
        db.execute("INSERT OR IGNORE INTO fetched SELECT id, ?, flac, sample_rate, channels, frames FROM staged "
                   "WHERE sample_rate = ? AND channels = ?", (key, rate, channels))  # fmt: skip
    db.execute("DROP TABLE staged")
    db.execute("COMMIT")


def _chunks(ids: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    ids = list(ids)
    return (ids[i : i + size] for i in range(0, len(ids), size))
