"""The loop both feature stages share: raw store shards in, feature shards out, failures recorded."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
import torch

from tasks.audio import AudioError, FlacBytes
from tasks.config import ConfigError, FeatureStoreConfig
from tasks.features.dataset import Block, FeatureStore, InputShard, plan_inputs
from tasks.progress import Progress, Tally
from tasks.storage import Failure, check_failure_share, write_json

log = logging.getLogger("tasks")
T = TypeVar("T")

# Decoding, resampling and the STFT release the GIL, so threads overlap them; more than the
# cores only adds memory.
WORKERS = max(1, min(8, os.cpu_count() or 1))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Intra-op threads for a block: 1 where clips already run in parallel on WORKERS threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# glibc's mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory() -> None:
    """Keep freed memory for the next clip instead of handing it back to the kernel.

    A decoded song is tens of MB. By default glibc maps such buffers fresh and trims them on
    free, and Arrow's allocator purges freed pages within milliseconds, so every clip faulted its
    memory in again: 10-25k page faults a run of benchmarks/features.py, up to a third of it in
    the kernel on a VM, where a fault is slow, and most of the run-to-run spread. Memory stays at
    the stage's peak instead, which the 2 x WORKERS clips in flight bound. Process-wide and
    idempotent; a no-op where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    if pa.default_memory_pool().backend_name != "jemalloc" and "jemalloc" in pa.supported_memory_backends():
        pa.jemalloc_set_decay_ms(-1)  # never purge
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def resolve_device(device: str, section: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{section}.device: 'cuda' was asked for but torch sees no GPU")
    return torch.device(device)


def _guarded(fn: Callable[[InputShard, int, FlacBytes], T], shard: InputShard, index: int, blob: FlacBytes,
             ) -> T | AudioError:  # fmt: skip
    try:
        if hashlib.sha256(blob).hexdigest() != shard.sha256[index]:
            raise AudioError("checksum", "audio bytes do not match the manifest's sha256")
        return fn(shard, index, blob)
    except AudioError as exc:
        return exc


@dataclass
class _ShardWork(Generic[T]):
    shard: InputShard
    futures: list[tuple[int, Future[T | AudioError]]] = field(default_factory=list)
    missing: list[int] | None = None  # set once every clip of the shard is submitted

    def ready(self) -> bool:
        return self.missing is not None and all(future.done() for _, future in self.futures)

    def results(self) -> list[tuple[int, T | AudioError]]:
        """In shard order, a clip the shard file lacks as a `missing` failure."""
        gone = AudioError("missing", f"{self.shard.path.name} holds no audio for this clip")
        return sorted([(i, f.result()) for i, f in self.futures] + [(i, gone) for i in self.missing or []],
                      key=lambda pair: pair[0])  # fmt: skip


def map_shards(shards: list[InputShard], fn: Callable[[InputShard, int, FlacBytes], T], progress: Progress,
               ) -> Iterator[tuple[InputShard, list[tuple[int, T | AudioError]]]]:  # fmt: skip
    """fn(shard, manifest row, FLAC bytes) over every clip on WORKERS threads; each shard's results,
    in shard order, once they are all in.

    One pool serves all the shards, so the next shard's clips start while the last songs of the
    previous one finish, rather than each shard boundary idling all but one worker. At most
    2 x WORKERS clips are being worked on, so memory stays bounded by a few clips' audio.
    """
    queue: deque[_ShardWork[T]] = deque()
    running: set[Future[T | AudioError]] = set()

    def settle(block: bool) -> None:
        nonlocal running
        if block:
            done, running = wait(running, return_when=FIRST_COMPLETED)
        else:
            done = {future for future in running if future.done()}
            running -= done
        progress.update(len(done))

    def finished() -> Iterator[tuple[InputShard, list[tuple[int, T | AudioError]]]]:
        while queue and queue[0].ready():
            work = queue.popleft()
            yield work.shard, work.results()

    with ThreadPoolExecutor(WORKERS) as pool:
        for shard in shards:
            work = _ShardWork[T](shard)
            queue.append(work)
            position = {clip_id: i for i, clip_id in enumerate(shard.ids)}
            for clip_id, blob in shard.blobs():
                if clip_id not in position:
                    continue  # not in the manifest: the store's finalize dropped it
                i = position.pop(clip_id)
                future = pool.submit(_guarded, fn, shard, i, blob)
                work.futures.append((i, future))
                running.add(future)
                settle(block=len(running) >= 2 * WORKERS)
                yield from finished()
            work.missing = sorted(position.values())
            progress.update(len(work.missing))
            yield from finished()
        while running:
            settle(block=True)
            yield from finished()


def build_features(
    stage: str,
    store_cfg: FeatureStoreConfig,
    datasets: list[str],
    default_splits: dict[str, str],
    root: Path,
    store: FeatureStore,
    clip: Callable[[InputShard, int, FlacBytes], T],
    finish: Callable[[InputShard, list[T]], list[Block]],
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`clip` over every clip of the input shards not already done, then `finish` over each shard's
    good results to make its rows; failures go to the shard's table. Metrics; fail past the share."""
    retain_freed_memory()
    shards = [s for d in datasets for s in plan_inputs(root / store_cfg.raw_dir, d, default_splits)]
    store.root.mkdir(parents=True, exist_ok=True)
    store.remove_partial_files()
    tally = Tally(stage)
    # One shard is written in the background while the next is computed; at most one waits.
    with Progress(sum(len(s.ids) for s in shards), f"{stage} clips", "clip") as progress, \
            ThreadPoolExecutor(1) as writer:  # fmt: skip
        todo = []
        for shard in shards:
            if store.shard_done(shard):
                tally.add("skipped", len(shard.ids))
                progress.update(len(shard.ids))
            else:
                todo.append(shard)
        writing: Future[None] | None = None
        for shard, results in map_shards(todo, clip, progress):
            failures = [Failure(shard.ids[i], f"{shard.dataset}/{shard.path.name}", stage, r.reason, str(r))
                        for i, r in results if isinstance(r, AudioError)]  # fmt: skip
            blocks = finish(shard, [r for _, r in results if not isinstance(r, AudioError)])
            if writing is not None:
                writing.result()
            writing = writer.submit(store.write_shard, shard, blocks, failures)
            tally.add("done", len(blocks))
            for failed in failures:
                tally.add("failed", reason=failed.reason)
        if writing is not None:
            writing.result()
    summary, failed = store.finalize(shards)
    counts = summary["counts"]
    metrics = {
        "clips": sum(e["clips"] for splits in counts.values() for e in splits.values()),
        "rows": sum(e["rows"] for splits in counts.values() for e in splits.values()),
        "failed": failed.num_rows,
        "failed_by_reason": dict(sorted(Counter(failed.column("reason").to_pylist()).items())),
        "per_dataset": counts,
        "shape": summary["shape"],
        "mb": store.size_mb(),
        "params_hash": summary["params_hash"],
        **(extra_metrics or {}),
    }
    write_json(metrics, root / store_cfg.metrics_file)
    log.info(tally.summary())
    n_clips = sum(len(s.ids) for s in shards)
    check_failure_share(failed.num_rows, n_clips, store_cfg.max_failure_share, stage)
    return metrics
