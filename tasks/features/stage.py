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
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import torch

from tasks.audio import AudioError, FlacBytes
from tasks.config import ConfigError, FeatureStoreConfig
from tasks.features.dataset import Block, FeatureStore, ShardWriter
from tasks.features.inputs import InputShard, read_inputs
from tasks.progress import Progress, Tally
from tasks.storage import Failure, check_failure_share, log_failure, write_json

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


class _Writer:
    """One thread that writes feature rows in the order they are given, while the next are computed.

    At most QUEUED writes wait, so a slow disk holds back the computing rather than filling memory;
    a failed write raises in the caller at its next submit, or at exit.
    """

    QUEUED = 16

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)
        self.writes: deque[Future[None]] = deque()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        while self.writes and (self.writes[0].done() or len(self.writes) >= self.QUEUED):
            self.writes.popleft().result()
        self.writes.append(self.pool.submit(fn, *args))

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            while self.writes:
                write = self.writes.popleft()
                if exc_type is None:
                    write.result()
                else:
                    write.exception()  # let it finish; the error already on its way is the one to tell
        finally:
            self.pool.shutdown(cancel_futures=True)


def map_clips(shards: list[InputShard], fn: Callable[[InputShard, int, FlacBytes], T], progress: Progress,
              ) -> Iterator[tuple[InputShard, int, T | AudioError]]:  # fmt: skip
    """fn(shard, manifest row, FLAC bytes) over every clip on WORKERS threads: (shard, row, result) in
    shard order, each as soon as it and all before it are in; a clip the shard file lacks comes
    as a `missing` failure after the rest of its shard.

    One pool serves all the shards, so the next shard's clips start while the last songs of the
    previous one finish. At most 2 x WORKERS clips are being worked on, so memory stays bounded
    by a few clips' audio, and at most 8 x WORKERS finished results wait behind a slow one.
    """
    queue: deque[tuple[InputShard, int, Future[T | AudioError] | AudioError]] = deque()

    def ready() -> Iterator[tuple[InputShard, int, T | AudioError]]:
        while queue and not (isinstance(queue[0][2], Future) and not queue[0][2].done()):
            shard, i, result = queue.popleft()
            progress.update()
            yield shard, i, result.result() if isinstance(result, Future) else result

    def throttle(limit_running: int, limit_queued: int) -> Iterator[tuple[InputShard, int, T | AudioError]]:
        while True:
            yield from ready()
            running = [r for _, _, r in queue if isinstance(r, Future) and not r.done()]
            if len(running) >= limit_running:
                wait(running, return_when=FIRST_COMPLETED)
            elif len(queue) >= limit_queued:
                wait([queue[0][2]])  # type: ignore[list-item]  # the head is running, or ready() took it
            else:
                return

    with ThreadPoolExecutor(WORKERS) as pool:
        for shard in shards:
            position = {clip_id: i for i, clip_id in enumerate(shard.ids)}
            for clip_id, blob in shard.blobs():
                if clip_id not in position:
                    continue  # not in the manifest: the store's finalize dropped it
                i = position.pop(clip_id)
                queue.append((shard, i, pool.submit(_guarded, fn, shard, i, blob)))
                yield from throttle(2 * WORKERS, 8 * WORKERS)
            gone = AudioError("missing", f"{shard.path.name} holds no audio for this clip")
            queue.extend((shard, i, gone) for i in sorted(position.values()))
        yield from throttle(1, 1)


def build_features(
    stage: str,
    store_cfg: FeatureStoreConfig,
    datasets: list[str],
    default_splits: dict[str, str],
    root: Path,
    store: FeatureStore,
    clip: Callable[[InputShard, int, FlacBytes], T],
    finish: Callable[[InputShard, list[T]], list[Block]],
    batch_clips: int = 1,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`clip` over every clip of the input shards not already done, then `finish` over each
    `batch_clips` good results of a shard in a row to make their rows, written as they come;
    failures go to the shard's table. Metrics; fail past the share. The raw stores are held while
    their shards are read, so an acquire run that rewrites one meanwhile changes nothing read."""
    retain_freed_memory()
    tally = Tally(stage)
    with read_inputs(root / store_cfg.raw_dir, datasets, default_splits) as shards, \
            Progress(sum(len(s.ids) for s in shards), f"{stage} clips", "clip") as progress, \
            _Writer() as writer:  # fmt: skip
        store.root.mkdir(parents=True, exist_ok=True)
        store.remove_partial_files()
        todo = []
        for shard in shards:
            if store.shard_done(shard):
                tally.add("skipped", len(shard.ids))
                progress.update(len(shard.ids))
            else:
                todo.append(shard)
        output: ShardWriter | None = None
        good: list[T] = []
        failures: list[Failure] = []

        def emit(last: bool) -> None:
            nonlocal good, failures
            assert output is not None
            if good:
                blocks = finish(output.shard, good)
                tally.add("done", len(blocks))
                writer.submit(output.add, blocks)
                good = []
            if last:
                writer.submit(output.commit, failures)
                failures = []

        for shard, i, result in map_clips(todo, clip, progress):
            if output is None or shard is not output.shard:
                if output is not None:
                    emit(last=True)
                output = ShardWriter(store, shard)
            if isinstance(result, AudioError):
                failures.append(Failure(shard.ids[i], f"{shard.dataset}/{shard.path.name}", stage, result.reason,
                                        str(result)))  # fmt: skip
                log_failure(failures[-1])
                tally.add("failed", reason=result.reason)
            else:
                good.append(result)
                if len(good) >= batch_clips:
                    emit(last=False)
        if output is not None:
            emit(last=True)
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
