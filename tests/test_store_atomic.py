"""A raw clip store changes atomically for its readers: an acquire run that rewrites it while a features stage
reads it shows that reader the old store or the new one, never a mix of both, and never a missing file."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devtools.mirror.store import synth_clip
from tasks.audio import AudioError
from tasks.progress import Tally
from tasks.storage import Clip, RawStore, StoreBusy, fill_store, read_store

SR = 8000
IDS = [f"c{i:02d}" for i in range(10)]
HANG = 120  # s: a guard against a test that would hang, never a measure of speed

Snapshot = frozenset[tuple[str, str, tuple[str, ...]]]


MOODS = {1: "happy", 2: "sad"}


def generation(version: int) -> dict[str, Clip | AudioError]:
    """Every clip with audio and labels of its own per version; one clip per version cannot be stored."""
    clips: dict[str, Clip | AudioError] = {i: synth_clip(i, MOODS[version], 0.2, SR, seed=version) for i in IDS}
    clips[IDS[version]] = AudioError("decode", f"version {version} cannot decode it")
    return clips


GENERATIONS = {1: generation(1), 2: generation(2)}
SHARD_ROWS = {1: 3, 2: 4}  # the rewrite also cuts the store into fewer shards: old shard 3 has no successor


def expected(version: int) -> Snapshot:
    return frozenset((c.id, c.flac.sha256, tuple(c.labels)) for c in GENERATIONS[version].values()
                     if isinstance(c, Clip))  # fmt: skip


def acquire(root: Path, version: int, lock_timeout_s: float = 60.0) -> RawStore:
    """What an acquire run does: fill the store with one version of the clips, then finalize it."""
    store = RawStore(root, "songs", pa.schema([]), {"version": version}, lock_timeout_s)
    clips = GENERATIONS[version]

    def load(clip_id: str, _source: str) -> Clip:
        clip = clips[clip_id]
        if isinstance(clip, AudioError):
            raise clip
        return clip

    fill_store(store, dict.fromkeys(IDS, "synth"), load, SHARD_ROWS[version], "test", Tally("test"))
    return store


def snapshot(root: Path) -> Snapshot:
    """(id, sha256 of the stored audio, labels) of every clip, read as a features stage reads: the manifest,
    then every shard file it names, all under one hold of the store."""
    with read_store(root) as store:
        listed = {(r["id"], r["sha256"], tuple(r["labels"])) for r in store.manifest.to_pylist()}
        stored = set()
        for name in sorted(set(store.manifest.column("shard").to_pylist())):
            for row in pq.read_table(store.shard_file(name), columns=["id", "labels", "audio"]).to_pylist():
                stored.add((row["id"], hashlib.sha256(row["audio"]).hexdigest(), tuple(row["labels"])))
    assert stored == listed, "the shard files disagree with the manifest read with them"
    return frozenset(stored)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def referenced(root: Path) -> set[str]:
    """The files a finalized store consists of: its tables and both files of every current shard."""
    shards = set(pq.read_table(root / "manifest.parquet").column("shard").to_pylist())
    names = {p.name for p in (root / "shards").iterdir()}
    assert shards <= names
    return {"manifest.parquet", "failures.parquet"} | {f"{d}/{n}" for n in names for d in ("shards", "failures")}


def test_a_reader_during_rewrites_sees_the_old_or_the_new_store_never_a_mix(tmp_path: Path) -> None:
    root = tmp_path / "songs"
    acquire(root, 1)
    reads: list[Snapshot] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                reads.append(snapshot(root))
            except Exception as exc:  # a missing file or a mix is the finding
                errors.append(exc)
            time.sleep(0.002)  # let a waiting writer in between two reads

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in (2, 1, 2, 1, 2, 1, 2, 1):
            acquire(root, version)
            seen = len(reads)
            deadline = time.monotonic() + HANG
            while len(reads) < seen + 2 and not errors and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.001)  # the next read starts after this rewrite: the reader has seen it
    finally:
        stop.set()
        thread.join()
    assert not errors, f"{len(errors)} reads failed, the first: {errors[0]!r}"
    states = {expected(1): "old", expected(2): "new"}
    mixed = [r for r in reads if r not in states]
    assert not mixed, f"{len(mixed)} of {len(reads)} reads saw a mix of the old and the new store"
    assert {states[r] for r in reads} == {"old", "new"}
    assert set(files(root)) == referenced(root), "the old shards were left behind"


def test_finalize_deletes_the_old_shards_only_once_no_reader_holds_the_store(tmp_path: Path) -> None:
    root = tmp_path / "songs"
    acquire(root, 1)
    old = files(root)
    with read_store(root) as store:
        writer = threading.Thread(target=acquire, args=(root, 2))
        writer.start()
        deadline = time.monotonic() + HANG
        while snapshot_of_manifest(root) != expected(2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert snapshot_of_manifest(root) == expected(2), "the new manifest is in place before anything is deleted"
        writer.join(timeout=0.5)
        assert writer.is_alive(), "the writer must wait for the reader before it deletes"
        assert {n: (root / n).read_bytes() for n in old if n.startswith(("shards/", "failures/"))} == \
            {n: b for n, b in old.items() if n.startswith(("shards/", "failures/"))}  # fmt: skip
        names = set(store.manifest.column("shard").to_pylist())
        assert {r["id"] for n in names for r in pq.read_table(store.shard_file(n), columns=["id"]).to_pylist()} == \
            {c[0] for c in expected(1)}  # fmt: skip
    writer.join(HANG)
    assert not writer.is_alive()
    assert snapshot(root) == expected(2)
    assert set(files(root)) == referenced(root)
    assert not set(old) & (set(files(root)) - {"manifest.parquet", "failures.parquet"})


def snapshot_of_manifest(root: Path) -> Snapshot:
    """The manifest on disk, read through one open file while finalize may replace it."""
    with pq.ParquetFile(root / "manifest.parquet") as manifest:
        rows = manifest.read(columns=["id", "sha256", "labels"]).to_pylist()
    return frozenset((r["id"], r["sha256"], tuple(r["labels"])) for r in rows)


def test_a_writer_that_waits_too_long_names_the_store_and_a_rerun_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "songs"
    acquire(root, 1)
    with read_store(root), pytest.raises(StoreBusy, match=rf"{root}.*being read.*rerun"):
        acquire(root, 2, lock_timeout_s=0.1)
    assert snapshot(root) == expected(2)  # the new store is complete; only old files are left over
    assert set(files(root)) > referenced(root)
    acquire(root, 2)
    assert set(files(root)) == referenced(root)


def test_a_shard_written_but_not_finalized_is_current_for_the_writer_only(tmp_path: Path) -> None:
    root = tmp_path / "songs"
    store = acquire(root, 1)
    before = store.shard_path(0)
    clip = synth_clip("c00", "calm", 0.2, SR, seed=7)
    store.write_shard(0, [clip], [], {"changed": True})
    assert store.shard_path(0) != before and store.shard_path(0).exists() and before.exists()
    assert store.shard_failures_path(0).name == store.shard_path(0).name and store.shard_failures_path(0).exists()
    assert store.current_shards()[0] == store.shard_path(0)
    assert store.shard_done(0, ["c00"], {"changed": True})
    assert snapshot(root) == expected(1)  # readers see the finalized store until the next finalize


def test_the_same_contents_make_the_same_files_whatever_came_before(tmp_path: Path) -> None:
    """An Airflow run rewrites a store in place; `dvc repro` builds it afresh: both must be byte-identical."""
    acquire(tmp_path / "in_place", 1)
    acquire(tmp_path / "in_place", 2)
    acquire(tmp_path / "fresh", 2)
    assert files(tmp_path / "in_place") == files(tmp_path / "fresh")
    assert not list(tmp_path.glob("*/.*"))  # nothing hidden (a lock, a pointer) inside a store
