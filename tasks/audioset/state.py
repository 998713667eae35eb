"""What the downloader remembers between runs, outside the DVC outputs (`dvc repro` never wipes it).

One SQLite file under `state_dir`, safe for several shard tasks at once:
- `staged`: verified clips whose shard is not written yet, so a killed task loses no download;
- `failed`: permanent failures, so the next run does not ask YouTube again.
Rows are keyed by clip id and a fingerprint of the parameters that shaped them.
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
CREATE TABLE IF NOT EXISTS staged (
    id TEXT NOT NULL, fingerprint TEXT NOT NULL, flac BLOB NOT NULL,
    sample_rate INTEGER NOT NULL, channels INTEGER NOT NULL, frames INTEGER NOT NULL,
    PRIMARY KEY (id, fingerprint));
CREATE TABLE IF NOT EXISTS failed (
    id TEXT NOT NULL, fingerprint TEXT NOT NULL, source TEXT NOT NULL, stage TEXT NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL,
    PRIMARY KEY (id, fingerprint));
"""


def fingerprint(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class DownloadState:
    def __init__(self, state_dir: Path, clip_key: str, source_key: str) -> None:
        """clip_key: what makes a stored clip valid; source_key: that plus where it was fetched from."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "state.sqlite"
        self.clip_key, self.source_key = clip_key, source_key
        self.db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def stage(self, clip_id: str, flac: FlacBlob) -> None:
        self.db.execute("INSERT OR REPLACE INTO staged VALUES (?, ?, ?, ?, ?, ?)",
                        (clip_id, self.clip_key, flac.data, flac.sample_rate, flac.channels, flac.frames))  # fmt: skip

    def staged(self, ids: Sequence[str]) -> dict[str, FlacBlob]:
        found = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for cid, data, rate, channels, frames in self.db.execute(
                f"SELECT id, flac, sample_rate, channels, frames FROM staged WHERE fingerprint = ? AND id IN ({marks})",
                (self.clip_key, *chunk),
            ):
                found[cid] = FlacBlob(data, rate, channels, frames)
        return found

    def unstage(self, ids: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM staged WHERE id = ?", [(i,) for i in ids])

    def remember(self, failure: Failure) -> None:
        f = failure
        self.db.execute("INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (f.id, self.source_key, f.source, f.stage, f.reason, f.message, f.attempts))  # fmt: skip

    def remembered(self, ids: Sequence[str]) -> dict[str, Failure]:
        found = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for cid, source, stage, reason, message, attempts in self.db.execute(
                f"SELECT id, source, stage, reason, message, attempts FROM failed "
                f"WHERE fingerprint = ? AND id IN ({marks})",
                (self.source_key, *chunk),
            ):
                found[cid] = Failure(cid, source, stage, reason, message, attempts)
        return found


def _chunks(ids: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    ids = list(ids)
    return (ids[i : i + size] for i in range(0, len(ids), size))
