"""The inputs of a feature stage: the shards of the raw clip stores it reads, planned from their
manifests while the stores are held (tasks.storage.read_store), so no acquire run deletes them meanwhile."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.storage import MANIFEST, StageFailed, StoreView, read_store

# A partition value becomes a directory name.
PARTITION_VALUE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class InputShard:
    """One shard of a raw clip store and the manifest rows of its clips."""

    dataset: str
    name: str  # the raw shard file's stem, part-SSSSS-<digest>
    path: Path
    ids: list[str]
    labels: list[list[str]]
    actors: list[int | None]
    splits: list[str]
    sha256: list[str]

    @property
    def digest(self) -> str:
        text = json.dumps([self.dataset, self.name, self.ids, self.sha256, self.splits, self.labels])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def blobs(self, batch_rows: int = 16) -> Iterator[tuple[str, pa.Buffer]]:
        """(id, FLAC bytes) a few rows at a time: a shard's audio is never all in memory.

        The bytes are zero-copy views of the Arrow batch, not Python copies of every song; a view
        keeps its batch (batch_rows clips) in memory until the clip is done. The file is memory-mapped
        rather than read into a fresh buffer that every shard faults in again.
        """
        shard = pq.ParquetFile(self.path, memory_map=True)
        for batch in shard.iter_batches(batch_size=batch_rows, columns=["id", "audio"]):
            audio = batch.column("audio")
            for i, clip_id in enumerate(batch.column("id").to_pylist()):
                yield clip_id, audio[i].as_buffer()


@contextmanager
def read_inputs(raw_dir: Path, datasets: Sequence[str], default_splits: dict[str, str]) -> Iterator[list[InputShard]]:
    """The input shards of the datasets' raw clip stores, each store held until the block ends: an acquire run
    that rewrites one meanwhile deletes none of the files the block reads."""
    with ExitStack() as stores:
        shards = []
        for dataset in datasets:
            if not (raw_dir / dataset / MANIFEST).exists():
                raise StageFailed(f"no raw clip store for dataset {dataset!r}: {raw_dir / dataset / MANIFEST} is "
                                  f"missing (run the acquire_{dataset} stage first)")  # fmt: skip
            shards += plan_inputs(stores.enter_context(read_store(raw_dir / dataset)), dataset, default_splits)
        yield shards


def plan_inputs(store: StoreView, dataset: str, default_splits: dict[str, str]) -> list[InputShard]:
    """The input shards of one raw clip store, from the manifest of a store held by read_store."""
    manifest = store.manifest
    n = manifest.num_rows
    if "split" in manifest.column_names:
        splits = manifest.column("split").to_pylist()
    elif dataset in default_splits:
        splits = [default_splits[dataset]] * n
    else:
        raise StageFailed(f"{store.root / MANIFEST} has no split column and default_splits names no split for "
                          f"{dataset!r}")  # fmt: skip
    bad = sorted({s for s in splits if not isinstance(s, str) or not PARTITION_VALUE.match(s)}, key=str)
    if bad or not PARTITION_VALUE.match(dataset):
        raise StageFailed(f"{dataset}: dataset and split names must be plain words (letters, digits, _ . -), got "
                          f"{[dataset, *bad]}")  # fmt: skip
    actors = manifest.column("actor").to_pylist() if "actor" in manifest.column_names else [None] * n
    columns = {k: manifest.column(k).to_pylist() for k in ("id", "labels", "sha256", "shard")}
    groups: dict[str, list[int]] = {}
    for i, shard in enumerate(columns["shard"]):
        groups.setdefault(shard, []).append(i)
    return [
        InputShard(
            dataset=dataset,
            name=Path(shard).stem,
            path=store.shard_file(shard),
            ids=[columns["id"][i] for i in rows],
            labels=[columns["labels"][i] for i in rows],
            actors=[actors[i] for i in rows],
            splits=[splits[i] for i in rows],
            sha256=[columns["sha256"][i] for i in rows],
        )
        for shard, rows in sorted(groups.items())
    ]
