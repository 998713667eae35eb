"""The raw clip store: Parquet shards of FLAC blobs + metadata, a manifest and a failures table.

Layout of one dataset directory:
    shards/part-SSSSS-<digest>.parquet    clips of shard SSSSS (audio FLAC bytes and their metadata)
    failures/part-SSSSS-<digest>.parquet  clips of that shard that could not be stored, and why
    failures/<step>.parquet               failures found before sharding (an unparseable name, ...)
    manifest.parquet                      one row per stored clip: shards without the audio column, and
                                          the `shard` file that holds it
    failures.parquet                      all failure parts in one table
    current/part-SSSSS                    only while a run is in progress: the name of shard SSSSS's files
and beside it `<directory>.lock`, the lock that readers share and finalize takes alone (beside the store, so
it is no part of the store's DVC output).

A shard's two files are named after what they hold (the stamp, the ids and audio digests of its clips, the
ids and reasons of its failures). So a file a reader may hold is never rewritten with other contents: a run
that changes a shard writes it beside the files the manifest names, and the same contents get the same names
whether the store is rewritten in place (Airflow) or built afresh (`dvc repro`).

The current files of a shard are those its pointer `current/part-SSSSS` names or, without a pointer, the only
ones of that shard. write_shard writes the failures file, then the clips file, then the pointer, each renamed
into place; when the shard has no pointer yet, it first points it at the old files, so a killed writer never
leaves two unnamed generations. A shard whose current files hold exactly the planned ids and carry the
current stamp is done and is skipped on a rerun: a killed task loses at most the shard it was writing.

Readers (read_store) share the lock for their whole read, the manifest and the shard files it names.
finalize writes the new manifest and failures table, renamed into place, and only then, holding the lock
alone, deletes what they no longer name: other generations, shards beyond the plan, the pointers. A reader
thus sees the old store or the new one, never a mix; writing a shard never waits for readers, only that
deletion does (up to lock_timeout_s, then StoreBusy).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.audio import AudioError, FlacBlob
from tasks.errors import PipelineError
from tasks.progress import Progress, Tally

log = logging.getLogger("tasks")

CLIP_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("duration_s", pa.float64()),
        ("sample_rate", pa.int32()),
        ("channels", pa.int16()),
        ("frames", pa.int64()),
        ("sha256", pa.string()),
        ("source", pa.string()),
    ]
)
AUDIO_FIELD = pa.field("audio", pa.binary())
FAILURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("attempts", pa.int32()),
    ]
)


SHARDS = "shards"
MANIFEST = "manifest.parquet"
# A shard's file: part-SSSSS-<digest>.parquet, or part-SSSSS.parquet as stores made before generations named it.
SHARD_FILE = re.compile(r"part-(\d{5,})(?:-[0-9a-f]{12})?\.parquet")
POINTER = re.compile(r"part-(\d{5,})")
# A features stage holds its input stores for its whole run; an acquire run's finalize waits that long for it.
LOCK_TIMEOUT_S = 3600.0


class StageFailed(PipelineError):
    """The stage cannot be called a success (too many failures, unusable source)."""


class StoreBusy(PipelineError):
    """A raw store's lock was not granted in time."""


@dataclass(frozen=True)
class Clip:
    id: str
    flac: FlacBlob
    labels: list[str]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    id: str
    source: str
    stage: str
    reason: str
    message: str
    attempts: int = 1


def log_failure(failure: Failure) -> None:
    """One WARNING per clip that failed, naming it, the stage and why: a failure must show under a warning filter."""
    tries = f" after {failure.attempts} attempts" if failure.attempts > 1 else ""
    log.warning("%s: clip %s failed%s: %s: %s", failure.stage, failure.id, tries, failure.reason, failure.message)


STAMP_KEY = b"mood_pipeline"  # schema metadata: what a stored file was made from


def stamped(table: pa.Table, stamp: dict[str, Any]) -> pa.Table:
    """The table carrying `stamp` (the params, code and inputs that made it) in its schema metadata."""
    return table.replace_schema_metadata({STAMP_KEY: json.dumps(stamp, sort_keys=True).encode()})


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp a Parquet file carries, or None when it has none or cannot be read."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(STAMP_KEY)
        return json.loads(raw) if raw else None
    except (OSError, ValueError, pa.ArrowInvalid):
        return None


def shard_stamp(params: dict[str, Any], stage_module: str) -> dict[str, str]:
    """A raw store's stamp: the parameters that shape its shards (labels, metadata, acceptance), and the code
    that writes them (the stage's module, decoding and this one)."""
    here = Path(__file__).resolve().parent
    return {"params": params_hash(params), "code": code_digest(Path(stage_module), here / "audio.py",
                                                               here / "storage.py")}  # fmt: skip


def params_hash(section: dict[str, Any]) -> str:
    """A short hash of a params section (key order does not matter)."""
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:16]


def code_digest(*paths: Path) -> str:
    """A short hash of source files: a stored result made by other code is not reused."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + Path(path).read_bytes())
    return digest.hexdigest()[:16]


def temp_path(path: Path) -> Path:
    """Where a file is written before it is renamed into place; remove_partial_files knows the pattern."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace_dir(built: Path, final: Path) -> None:
    """Put a folder built elsewhere (same filesystem) in place of `final`: a reader sees the old folder or the
    new one, and a crash in between leaves the old one beside it, never a half-written one in its place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    built.rename(final)
    final.chmod(0o755)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_table(table: pa.Table, path: Path, row_group_size: int | None = None,
                       compression: str | dict[str, str] = "zstd", **options: Any) -> None:  # fmt: skip
    """Write next to the target and rename, so readers never see a partial file.

    `options` go to pyarrow.parquet.write_table (encodings, dictionary columns).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    pq.write_table(table, tmp, row_group_size=row_group_size, compression=compression, **options)
    os.replace(tmp, path)


def failures_table(failures: Sequence[Failure]) -> pa.Table:
    return pa.Table.from_pylist([f.__dict__ for f in failures], schema=FAILURE_SCHEMA)


def lock_path(root: Path) -> Path:
    return root.with_name(f"{root.name}.lock")


@contextmanager
def hold_store(root: Path, exclusive: bool, timeout_s: float, busy: str) -> Iterator[None]:
    """The store's flock, shared or exclusive, for the block; StoreBusy(`busy`) when not granted in timeout_s.

    flock has no timeout of its own, so a refused lock is asked for again until the deadline.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(root), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusy(busy) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class StoreView:
    """A raw store as one reader holds it: its manifest, and the shard files that manifest names."""

    root: Path
    manifest: pa.Table

    def shard_file(self, name: str) -> Path:
        """The file of a manifest `shard` value; it stays there, unchanged, while the view is held."""
        return self.root / SHARDS / name


@contextmanager
def read_store(root: Path | str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[StoreView]:
    """The manifest of an existing raw store, and its shard files unchanged until the block ends: read them all
    inside it. Waits only while an acquire run's finalize deletes the files of an older manifest."""
    root = Path(root)
    busy = (f"{root} is being rewritten: an acquire run's finalize held it for more than {timeout_s:.0f} s; "
            "read it again once that run is done")  # fmt: skip
    with hold_store(root, False, timeout_s, busy):
        # One open file: pq.read_table opens a path twice (footer, then data), and finalize may replace the
        # manifest in between.
        with pq.ParquetFile(root / MANIFEST) as manifest:
            table = manifest.read()
        yield StoreView(root, table)


class RawStore:
    """One dataset directory of the raw clip store.

    `stamp` names what shapes a shard besides its ids (the params behind labels and metadata, the code);
    both files of a shard carry it, and a shard whose stamp differs is not done: it is written again.
    finalize waits up to `lock_timeout_s` for the store's readers before it deletes the files they may hold.
    """

    def __init__(self, root: Path | str, dataset: str, meta_schema: pa.Schema, stamp: dict[str, Any] | None = None,
                 lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:  # fmt: skip
        self.root = Path(root)
        self.dataset = dataset
        self.schema = pa.schema([*CLIP_SCHEMA, *meta_schema, AUDIO_FIELD])
        self.stamp = stamp or {}
        self.lock_timeout_s = lock_timeout_s

    @property
    def shards_dir(self) -> Path:
        return self.root / SHARDS

    @property
    def failures_dir(self) -> Path:
        return self.root / "failures"

    @property
    def pointers_dir(self) -> Path:
        return self.root / "current"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def failures_path(self) -> Path:
        return self.root / "failures.parquet"

    def _current_names(self) -> dict[int, str]:
        """Index -> the file name of each shard's current generation (see the module docstring)."""
        found: dict[int, list[str]] = {}
        for path in self.shards_dir.iterdir() if self.shards_dir.is_dir() else []:
            if match := SHARD_FILE.fullmatch(path.name):
                found.setdefault(int(match[1]), []).append(path.name)
        for path in self.pointers_dir.iterdir() if self.pointers_dir.is_dir() else []:
            if match := POINTER.fullmatch(path.name):
                found[int(match[1])] = [path.read_text()]
        unnamed = {i: sorted(names) for i, names in found.items() if len(names) > 1}
        if unnamed:
            raise PipelineError(f"{self.root}: shards {unnamed} have several files and no pointer to the current "
                                "one, which the store never leaves; remove the store and acquire it again")  # fmt: skip
        return {i: names[0] for i, names in sorted(found.items())}

    def current_shards(self) -> dict[int, Path]:
        """Index -> the clips file of each shard's current generation, for the shards that have one."""
        paths = {i: self.shards_dir / name for i, name in self._current_names().items()}
        return {i: path for i, path in paths.items() if path.exists()}

    def shard_path(self, index: int) -> Path:
        """The current clips file of shard `index`; a path that does not exist when it has none."""
        return self.shards_dir / self._current_names().get(index, f"part-{index:05d}.parquet")

    def shard_failures_path(self, index: int) -> Path:
        """The current failures file of shard `index`; a path that does not exist when it has none."""
        return self.failures_dir / self.shard_path(index).name

    def _pointer(self, index: int) -> Path:
        return self.pointers_dir / f"part-{index:05d}"

    def _generation_name(self, index: int, stamp: dict[str, Any], clips: Sequence[Clip],
                         failures: Sequence[Failure]) -> str:  # fmt: skip
        """A shard's file name from what it holds: other contents never take a name a reader may hold."""
        content = [stamp, [[c.id, c.flac.sha256] for c in clips], [[f.id, f.reason] for f in failures]]
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return f"part-{index:05d}-{digest[:12]}.parquet"

    def remove_partial_files(self) -> int:
        """Temp files are what a killed writer leaves behind; they are never valid output."""
        removed = 0
        for path in self.root.rglob(".*.tmp-*"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def shard_stamp(self, extra: dict[str, Any] | None) -> dict[str, Any]:
        return {**self.stamp, **(extra or {})}

    def shard_done(self, index: int, ids: Sequence[str], extra: dict[str, Any] | None = None) -> bool:
        """Done when both files are there, hold exactly `ids` and carry the current stamp (plus `extra`)."""
        shard, failed = self.shard_path(index), self.shard_failures_path(index)
        if not (shard.exists() and failed.exists()):
            return False
        expected = self.shard_stamp(extra)
        if read_stamp(shard) != expected or read_stamp(failed) != expected:
            log.info("%s shard %s was made with other parameters or code; writing it again", self.dataset,
                     shard.name)  # fmt: skip
            return False
        try:
            stored = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
            missing = pq.read_table(failed, columns=["id"]).column("id").to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            log.warning("shard %s is unreadable (%s); rewriting it", shard.name, exc)
            return False
        return sorted(stored + missing) == sorted(ids)

    def write_shard(self, index: int, clips: Sequence[Clip], failures: Sequence[Failure],
                    extra: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Write shard `index` as a new generation beside the one the manifest names, and make it current."""
        stamp = self.shard_stamp(extra)
        name = self._generation_name(index, stamp, clips, failures)
        pointer, old = self._pointer(index), self.shard_path(index)
        if old.exists() and not pointer.exists():
            atomic_write_text(old.name, pointer)
        atomic_write_table(stamped(failures_table(failures), stamp), self.failures_dir / name)
        rows = [self._row(c) for c in clips]
        # FLAC does not compress further: zstd only spent CPU on the audio, on writing (a shard of 16
        # CAL500-like songs: 308 -> 64 ms) and on every read by the feature stages. Nor does a
        # dictionary of unique blobs help: its first page made readers grow the audio by reallocation.
        metadata = [f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in self.schema
                    if f.name != "audio"]  # fmt: skip
        compression = {**dict.fromkeys(metadata, "zstd"), "audio": "none"}
        table = stamped(pa.Table.from_pylist(rows, schema=self.schema), stamp)
        atomic_write_table(table, self.shards_dir / name, 64, compression, use_dictionary=metadata)
        atomic_write_text(name, pointer)

    def write_failures(self, name: str, failures: Sequence[Failure]) -> None:
        """Failures found before sharding (step `name`), each logged as it is recorded."""
        for failure in failures:
            log_failure(failure)
        atomic_write_table(failures_table(failures), self.failures_dir / f"{name}.parquet")

    def _row(self, clip: Clip) -> dict[str, Any]:
        return {
            "id": clip.id,
            "dataset": self.dataset,
            "labels": clip.labels,
            "duration_s": clip.flac.duration_s,
            "sample_rate": clip.flac.sample_rate,
            "channels": clip.flac.channels,
            "frames": clip.flac.frames,
            "sha256": clip.flac.sha256,
            "source": clip.source,
            **clip.meta,
            "audio": clip.flac.data,
        }

    def finalize(self, n_shards: int) -> tuple[pa.Table, pa.Table]:
        """Write the manifest and failures table of shards 0..n_shards-1, then, once no reader holds the store,
        delete what they no longer name: other generations, shards beyond the plan, the pointers."""
        current = self.current_shards()
        missing = [i for i in range(n_shards) if i not in current]
        if missing:
            raise StageFailed(f"{self.root}: shards {missing} were never written; run the acquire stage again")
        shards = [current[i] for i in range(n_shards)]
        columns = [n for n in self.schema.names if n != "audio"]
        parts = []
        for path in shards:
            part = pq.read_table(path, columns=columns).replace_schema_metadata(None)
            parts.append(part.append_column("shard", pa.array([path.name] * len(part))))
        manifest_schema = pa.schema([*self.schema.remove(self.schema.get_field_index("audio")),
                                     ("shard", pa.string())])  # fmt: skip
        manifest = pa.concat_tables(parts) if parts else manifest_schema.empty_table()
        steps = [p for p in self.failures_dir.glob("*.parquet") if not SHARD_FILE.fullmatch(p.name)]
        failure_files = sorted([*steps, *(self.failures_dir / p.name for p in shards)], key=lambda p: p.name)
        failures = [pq.read_table(p).replace_schema_metadata(None) for p in failure_files]
        failed = pa.concat_tables(failures) if failures else FAILURE_SCHEMA.empty_table()
        atomic_write_table(manifest, self.manifest_path)
        atomic_write_table(failed, self.failures_path)
        busy = (f"{self.root} is being read (a features or evaluate stage holds it) and was not freed within "
                f"{self.lock_timeout_s:.0f} s: its new manifest is in place and complete, but the files of the old "
                "one are left over; rerun the acquire stage once the readers are done to remove them")  # fmt: skip
        keep = {p.name for p in shards}
        with hold_store(self.root, True, self.lock_timeout_s, busy):
            for folder in (self.shards_dir, self.failures_dir):
                for path in folder.glob("part-*.parquet"):
                    if SHARD_FILE.fullmatch(path.name) and path.name not in keep:
                        path.unlink()
            shutil.rmtree(self.pointers_dir, ignore_errors=True)  # last: without it, one generation is left each
        return manifest, failed


def plan_shards(ids: Iterable[str], shard_rows: int) -> list[list[str]]:
    """Sorted ids cut into fixed-size shards: the same inputs always give the same shards."""
    ordered = sorted(set(ids))
    return [ordered[i : i + shard_rows] for i in range(0, len(ordered), shard_rows)]


def fill_store(
    store: RawStore,
    sources: dict[str, str],
    load: Callable[[str, str], Clip],
    shard_rows: int,
    stage: str,
    tally: Tally,
) -> tuple[pa.Table, pa.Table]:
    """Store every clip id -> source with `load`, shard by shard, skipping shards already done.

    `load` raises AudioError for a clip that cannot be stored; it is recorded and the run goes on.
    """
    store.remove_partial_files()
    plan = plan_shards(sources, shard_rows)
    with Progress(len(sources), f"{store.dataset} clips", "clip") as progress:
        for index, ids in enumerate(plan):
            if store.shard_done(index, ids):
                tally.add("skipped", len(ids))
                progress.update(len(ids))
                continue
            clips, failures = [], []
            for clip_id in ids:
                try:
                    clips.append(load(clip_id, sources[clip_id]))
                    tally.add("done")
                except AudioError as exc:
                    failures.append(Failure(clip_id, sources[clip_id], stage, exc.reason, str(exc)))
                    log_failure(failures[-1])
                    tally.add("failed", reason=exc.reason)
                progress.update()
            store.write_shard(index, clips, failures)
    return store.finalize(len(plan))


def check_failure_share(n_failed: int, n_total: int, max_share: float, what: str) -> None:
    if n_total and n_failed / n_total > max_share:
        raise StageFailed(
            f"{what}: {n_failed} of {n_total} items failed ({n_failed / n_total:.1%}), more than the "
            f"allowed {max_share:.1%}; see the failures table. Everything stored so far is kept."
        )


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(data: dict[str, Any], path: Path) -> None:
    atomic_write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def store_metrics(manifest: pa.Table, failures: pa.Table, n_filtered: int = 0) -> dict[str, Any]:
    """Counts every acquisition stage reports: per label, per failure reason, total duration."""
    labels = Counter(label for row in manifest.column("labels").to_pylist() for label in row)
    reasons = Counter(failures.column("reason").to_pylist())
    return {
        "clips": manifest.num_rows,
        "failed": failures.num_rows,
        "filtered": n_filtered,
        "hours": round(sum(manifest.column("duration_s").to_pylist()) / 3600, 4),
        "per_label": dict(sorted(labels.items())),
        "failed_by_reason": dict(sorted(reasons.items())),
    }
