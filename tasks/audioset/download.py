"""Stage `acquire_audioset`: the selected segments, by YouTube id, with yt-dlp, into the raw clip store.

Three steps, which the Airflow DAG runs as separate tasks and `dvc repro` runs in one process:
    plan_audioset      make sure every clip the store holds is also in the state database
    download_shard     one shard: fetch what the state lacks within the shared request budget, judge, write
    finalize_audioset  manifest, failures table, metrics per class and split

Nothing fetched is ever thrown away. Each clip goes into the state database as it arrives (a killed
task loses nothing) and stays there, whatever the selection or the acceptance thresholds say: the
shard is judged from it (length, level) when it is written. So new thresholds, a shrunk and regrown
quota or a new shard size rewrite shards without a single request. The attempt itself is
`tasks.audioset.ytdlp`; how fast to ask is `tasks.audioset.politeness`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.audio import AudioError, FlacBlob, decode_flac
from tasks.audioset.classify import PERMANENT, RATE_LIMITS, ClipProblem, Problem
from tasks.audioset.lists import InvalidId, check_ytid
from tasks.audioset.politeness import Budget, StopLoss, backoff
from tasks.audioset.select import read_selection
from tasks.audioset.state import DownloadState
from tasks.audioset.ytdlp import Credentials, fetch_section
from tasks.config import AcquireAudiosetConfig
from tasks.fetch import redact
from tasks.progress import Tally, track
from tasks.storage import (
    Clip,
    Failure,
    RawStore,
    StageFailed,
    check_failure_share,
    log_failure,
    params_hash,
    plan_shards,
    shard_stamp,
    store_metrics,
    write_json,
)

log = logging.getLogger("tasks")

STAGE = "acquire_audioset"
DATASET = "audioset"
META_SCHEMA = pa.schema(
    [
        ("ytid", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("split", pa.string()),
        ("class_ids", pa.list_(pa.string())),
    ]
)


class ShardPaused(StageFailed):
    """Persistent rate limiting paused every worker: the shard stopped early, what it fetched is kept.

    `resume_at` (epoch seconds) is when the pause ends; `exhausted` when more than `max_pauses` came in a
    row, so waiting again is not worth it (the session is likely flagged: new cookies or a proxy).
    """

    def __init__(self, message: str, resume_at: float, exhausted: bool) -> None:
        super().__init__(message)
        self.resume_at, self.exhausted = resume_at, exhausted


class _Stopped(Exception):
    """Raised in a worker once the shard stops for a pause."""


JUDGED = {"duration_mismatch", "silent"}  # verdicts on fetched audio, never remembered as source failures


def _is_permanent(reason: str) -> bool:
    return PERMANENT.get(reason, False)


@dataclass(frozen=True)
class Job:
    id: str
    ytid: str
    start: float
    end: float
    split: str
    labels: list[str]
    class_ids: list[str]


def judge(flac: FlacBlob, job: Job, cfg: AcquireAudiosetConfig) -> Problem | None:
    """Why a fetched clip is not kept under today's thresholds, or None: it is long and loud enough."""
    seconds, expected = flac.frames / flac.sample_rate, job.end - job.start
    if abs(seconds - expected) > cfg.duration_tolerance_s:
        return Problem("duration_mismatch", f"got {seconds:.2f} s of audio for the {expected:.2f} s segment "
                                            f"{job.start:g}-{job.end:g} (tolerance "
                                            f"{cfg.duration_tolerance_s:g} s)")  # fmt: skip
    try:
        samples, _ = decode_flac(flac.data)
    except AudioError as exc:
        return Problem("postprocessing", f"the fetched audio does not decode: {exc}")
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    if level < cfg.silence_dbfs:
        return Problem("silent", f"RMS level {level:.1f} dBFS is below {cfg.silence_dbfs:g} dBFS")
    return None


class ShardDownloader:
    """Fetches the missing clips of one shard with bounded concurrency, within the shared budget.

    wait_out_pauses: sleep through a pause of the budget (the CLI), or stop the shard at once so that
    its worker slot is free until the pause ends (Airflow reschedules it for then).
    """

    def __init__(self, cfg: AcquireAudiosetConfig, index: int, creds: Credentials, scratch: Path, budget: Budget,
                 sleep: Callable[[float], None] = time.sleep, wait_out_pauses: bool = True) -> None:  # fmt: skip
        self.cfg, self.index, self.creds, self.scratch, self.sleep = cfg, index, creds, scratch, sleep
        self.budget, self.wait_out_pauses = budget, wait_out_pauses
        sl = cfg.stop_loss
        self.stop_loss = StopLoss(budget, sl.after, sl.pause_s, sl.max_pauses)
        self.resume_at = 0.0
        self._local = threading.local()
        self._workers = 0
        self._lock = threading.Lock()

    def _rng(self) -> random.Random:
        if not hasattr(self._local, "rng"):
            with self._lock:
                self._workers += 1
                worker = self._workers
            self._local.rng = random.Random(f"{self.cfg.seed}/{self.index}/{worker}")
        return self._local.rng

    def _gate(self) -> None:
        """Wait for a request from the shared budget; a pause stops the shard unless it is waited out."""
        if self.cfg.jitter_s:
            self.sleep(self._rng().uniform(0.0, self.cfg.jitter_s))
        while True:
            if self.stop_loss.stopped:
                raise _Stopped
            gate = self.budget.take()
            if gate.wait_s <= 0:
                return
            if gate.paused_until:
                with self._lock:
                    self.resume_at = max(self.resume_at, gate.paused_until)
                if not self.wait_out_pauses:
                    raise _Stopped
            self.sleep(min(gate.wait_s, 5.0))

    def fetch(self, job: Job) -> FlacBlob | Failure:
        try:
            check_ytid(job.ytid)
        except InvalidId as exc:
            return Failure(job.id, "selection", STAGE, "invalid_id", str(exc), 0)
        source = _source(self.cfg, job)
        for attempt in range(1, self.cfg.attempts + 1):
            self._gate()
            try:
                flac = fetch_section(self.cfg, job.ytid, (job.start, job.end), self.creds, self.scratch)
            except ClipProblem as exc:
                problem = exc.problem
                if problem.reason in RATE_LIMITS:
                    self.stop_loss.limited()
                elif problem.permanent:
                    self.stop_loss.ok()  # a definite answer: the server is talking to us
                if problem.permanent or attempt == self.cfg.attempts:
                    return Failure(job.id, source, STAGE, problem.reason, problem.message, attempt)
                wait = backoff(self.cfg.backoff_s, self.cfg.max_backoff_s, attempt, problem.retry_after)
                log.info("%s: %s (attempt %d of %d); retrying in %.1f s", job.id, problem.reason, attempt,
                         self.cfg.attempts, wait)  # fmt: skip
                self.sleep(wait)
                continue
            self.stop_loss.ok()
            return flac
        raise AssertionError("unreachable: the last attempt returns")


def _meta(job: Job) -> dict[str, Any]:
    return {"ytid": job.ytid, "start_s": job.start, "end_s": job.end, "split": job.split, "class_ids": job.class_ids}


def _source(cfg: AcquireAudiosetConfig, job: Job) -> str:
    """Where the clip comes from, as the manifest and failures show it: no secret of the URL."""
    return redact(cfg.url_template.format(ytid=job.ytid))


# ----------------------------------------------------------------------------- the three steps


def _store(cfg: AcquireAudiosetConfig, root: Path) -> RawStore:
    return RawStore(root / cfg.store.out_dir, DATASET, META_SCHEMA, shard_stamp(_keys(cfg), __file__))


def _rows_stamp(jobs: dict[str, Job], ids: list[str]) -> dict[str, str]:
    """What a shard's rows say besides their audio: labels and metadata, which the selection may change."""
    rows = [[i, jobs[i].labels, _meta(jobs[i])] for i in ids]
    return {"rows": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]}


def _keys(cfg: AcquireAudiosetConfig) -> dict[str, Any]:
    """What shapes a shard: the audio's form, the thresholds that judge it, and where clips come from.
    audio_key keys the fetched clips (the thresholds never invalidate them); source_key the failures."""
    audio = {"sample_rate": cfg.sample_rate, "channels": cfg.channels}
    return {**audio, "duration_tolerance_s": cfg.duration_tolerance_s, "silence_dbfs": cfg.silence_dbfs,
            "audio_key": params_hash(audio),
            "source_key": params_hash({**audio, "url_template": redact(cfg.url_template)})}  # fmt: skip


def _state(cfg: AcquireAudiosetConfig, root: Path) -> DownloadState:
    keys = _keys(cfg)
    return DownloadState(root / cfg.state_dir, keys["audio_key"], keys["source_key"])


def _jobs(cfg: AcquireAudiosetConfig, root: Path) -> dict[str, Job]:
    rows = read_selection(root / cfg.selection).to_pylist()
    return {r["id"]: Job(r["id"], r["ytid"], r["start_s"], r["end_s"], r["split"], r["labels"], r["class_ids"])
            for r in rows}  # fmt: skip


def _plan(cfg: AcquireAudiosetConfig, jobs: dict[str, Job]) -> list[list[str]]:
    return plan_shards(jobs, cfg.store.shard_rows)


def plan_audioset(cfg: AcquireAudiosetConfig, root: Path) -> list[int]:
    """Shard indexes to run. A stored clip the state lacks (a store from `dvc pull`, or from before the
    state kept every clip) is saved into it first, so no shard task fetches what the workspace holds."""
    jobs = _jobs(cfg, root)
    plan = _plan(cfg, jobs)
    store = _store(cfg, root)
    store.remove_partial_files()
    state = _state(cfg, root)
    try:
        # Failures remembered before the state kept every clip were keyed by the thresholds too.
        keys = _keys(cfg)
        earlier = {k: keys[k] for k in ("sample_rate", "channels", "duration_tolerance_s", "silence_dbfs")}
        state.adopt_failures(params_hash({**earlier, "url_template": cfg.url_template}), JUDGED)
        imported = sum(_import_shard(cfg, jobs, store.failures_dir / path.name, path, state)
                       for path in store.current_shards().values())  # fmt: skip
    finally:
        state.close()
    if imported:
        log.info("%s: %d stored clips saved into the download state", STAGE, imported)
    log.info("%s: %d clips selected in %d shards of up to %d", STAGE, len(jobs), len(plan), cfg.store.shard_rows)
    return list(range(len(plan)))


def _import_shard(cfg: AcquireAudiosetConfig, jobs: dict[str, Job], failures: Path, path: Path,
                  state: DownloadState) -> int:  # fmt: skip
    """Save a stored shard's clips the state lacks (if their audio has today's form), and its permanent
    failures at today's source."""
    try:
        for row in pq.read_table(failures).to_pylist() if failures.exists() else []:
            job, reason = jobs.get(row["id"]), row["reason"]
            if job and _is_permanent(reason) and reason not in JUDGED and row["source"] == _source(cfg, job):
                state.remember(Failure(**row))
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        missing = set(ids) - state.fetched_ids(ids)
        if not missing:
            return 0
        rows = pq.read_table(path, columns=["id", "audio", "sample_rate", "channels", "frames"]).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        log.warning("%s is unreadable (%s); its clips come from the state or are fetched again", path.name, exc)
        return 0
    rows = [r for r in rows if r["id"] in missing and (r["sample_rate"], r["channels"]) == (cfg.sample_rate,
                                                                                            cfg.channels)]  # fmt: skip
    for r in rows:
        state.save(r["id"], FlacBlob(r["audio"], r["sample_rate"], r["channels"], r["frames"]))
    return len(rows)


def _transient_failures(store: RawStore, index: int) -> bool:
    path = store.shard_failures_path(index)
    try:
        reasons = pq.read_table(path, columns=["reason"]).column("reason").to_pylist() if path.exists() else []
    except (pa.ArrowInvalid, OSError):
        return True
    return any(not _is_permanent(r) for r in reasons)


def download_shard(cfg: AcquireAudiosetConfig, root: Path, index: int, creds: Credentials | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   wait_out_pauses: bool = True) -> dict[str, int]:  # fmt: skip
    """Fetch what shard `index` lacks and write it; fetched clips and remembered failures are reused.

    Raises ShardPaused when the budget is paused and `wait_out_pauses` is false, or after too many pauses.
    """
    jobs = _jobs(cfg, root)
    plan = _plan(cfg, jobs)
    if index >= len(plan):
        raise StageFailed(f"{STAGE}: shard {index} does not exist; the selection makes {len(plan)} shards")
    ids = plan[index]
    store = _store(cfg, root)
    tally = Tally(f"{STAGE} shard {index}")
    stamp = _rows_stamp(jobs, ids)
    if store.shard_done(index, ids, stamp) and not _transient_failures(store, index):
        tally.add("skipped", len(ids))
        log.info(tally.summary())
        return dict(tally.counts)
    state = _state(cfg, root)
    try:
        fetched = state.fetched(ids)
        failures = {i: f for i, f in state.remembered(ids).items() if i not in fetched}
        reused = set(fetched) | set(failures)
        todo = [jobs[i] for i in ids if i not in fetched and i not in failures]
        # yt-dlp's working files; a killed attempt's leftovers go when the shard runs again.
        scratch = root / cfg.state_dir / "tmp" / f"shard-{index:05d}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        creds = creds or Credentials.from_env(cfg.credentials)
        budget = Budget(root / cfg.state_dir, cfg.url_template, cfg.max_requests_per_hour, cfg.burst, creds.session)
        downloader = ShardDownloader(cfg, index, creds, scratch, budget, sleep, wait_out_pauses)
        stopped = _download(downloader, todo, state, fetched, failures)
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        state.close()
    if stopped:
        left = len(ids) - len(fetched) - len(failures)
        exhausted = downloader.stop_loss.stopped
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(downloader.resume_at))
        why = ("rate limited through more than max_pauses pauses in a row (new cookies or a proxy may help)"
               if exhausted else
               f"the request budget is paused until {when} after persistent rate limiting")  # fmt: skip
        raise ShardPaused(f"{STAGE}: shard {index} stopped by the stop-loss: {why}; {left} clips left for a later "
                          f"run; the {len(fetched)} fetched are kept", downloader.resume_at, exhausted)  # fmt: skip
    clips = []
    for i in sorted(fetched):
        problem = judge(fetched[i], jobs[i], cfg)
        if problem is None:
            clips.append(Clip(i, fetched[i], jobs[i].labels, _source(cfg, jobs[i]), _meta(jobs[i])))
            tally.add("skipped" if i in reused else "done")
            continue
        failures[i] = Failure(i, _source(cfg, jobs[i]), STAGE, problem.reason, problem.message, 1)
        tally.add("failed", reason=problem.reason)
        log_failure(failures[i])
    for i, failure in failures.items():
        if i in fetched:
            continue
        if i in reused:
            tally.add("skipped")
        else:
            tally.add("failed", reason=failure.reason)
    store.write_shard(index, clips, [failures[i] for i in sorted(failures)], stamp)
    log.info(tally.summary())
    return dict(tally.counts)


def _download(downloader: ShardDownloader, todo: list[Job], state: DownloadState, fetched: dict[str, FlacBlob],
              failures: dict[str, Failure]) -> bool:  # fmt: skip
    """Run the jobs; each clip is saved in the state as it arrives. True when the shard stopped for a pause."""
    if not todo:
        return False
    stopped = False
    index = downloader.index
    with ThreadPoolExecutor(max_workers=downloader.cfg.concurrency, thread_name_prefix=f"shard{index}") as pool:
        futures = {pool.submit(downloader.fetch, job): job for job in todo}
        try:
            for future in track(as_completed(futures), len(futures), f"{STAGE} shard {index}"):
                try:
                    result = future.result()
                except _Stopped:
                    stopped = True
                    continue
                job = futures[future]
                if isinstance(result, FlacBlob):
                    state.save(job.id, result)
                    fetched[job.id] = result
                    continue
                if _is_permanent(result.reason):
                    state.remember(result)
                failures[result.id] = result
                log_failure(result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # queued jobs must not go on asking the server
            raise
    return stopped


def finalize_audioset(cfg: AcquireAudiosetConfig, root: Path) -> dict[str, Any]:
    """Manifest, failures table and the summary per class and split; fails past max_failure_share."""
    jobs = _jobs(cfg, root)
    plan = _plan(cfg, jobs)
    store = _store(cfg, root)
    missing = [i for i, ids in enumerate(plan) if not store.shard_done(i, ids, _rows_stamp(jobs, ids))]
    if missing:
        raise StageFailed(f"{STAGE}: shards {missing} are not complete (stopped by the stop-loss or failed); "
                          "rerun to resume them: nothing fetched so far is lost")  # fmt: skip
    manifest, failed = store.finalize(len(plan))
    metrics = summarize(jobs, manifest, failed)
    write_json(metrics, root / cfg.store.metrics_file)
    reasons = ", ".join(f"{k}: {v}" for k, v in metrics["failed_by_reason"].items()) or "none"
    log.info("%s: %d of %d clips stored (%.1f %%), failed %d (%s)", STAGE, metrics["clips"], metrics["selected"],
             100 * metrics["availability"], metrics["failed"], reasons)  # fmt: skip
    for label, c in metrics["per_class"].items():
        log.info("%s: %-8s selected %d, downloaded %d (%.1f %%), failed %s", STAGE, label, c["selected"],
                 c["downloaded"], 100 * c["availability"], c["failed"] or "none")  # fmt: skip
    check_failure_share(failed.num_rows, len(jobs), cfg.store.max_failure_share, STAGE)
    return metrics


def _group(jobs: dict[str, Job], stored: set[str], reasons: dict[str, str], key: Callable[[Job], list[str]]) -> dict:
    out: dict[str, dict[str, Any]] = {}
    for job in jobs.values():
        for name in key(job):
            entry = out.setdefault(name, {"selected": 0, "downloaded": 0, "failed": Counter()})
            entry["selected"] += 1
            if job.id in stored:
                entry["downloaded"] += 1
            elif job.id in reasons:
                entry["failed"][reasons[job.id]] += 1
    return {name: {**e, "failed": dict(sorted(e["failed"].items())),
                   "availability": round(e["downloaded"] / e["selected"], 4)}
            for name, e in sorted(out.items())}  # fmt: skip


def summarize(jobs: dict[str, Job], manifest: pa.Table, failed: pa.Table) -> dict[str, Any]:
    stored = set(manifest.column("id").to_pylist())
    reasons = dict(zip(failed.column("id").to_pylist(), failed.column("reason").to_pylist(), strict=True))
    metrics = store_metrics(manifest, failed)
    metrics.update(
        selected=len(jobs),
        availability=round(len(stored) / len(jobs), 4) if jobs else 0.0,
        per_class=_group(jobs, stored, reasons, lambda j: j.labels),
        per_split=_group(jobs, stored, reasons, lambda j: [j.split]),
    )
    return metrics


def acquire_audioset(cfg: AcquireAudiosetConfig, root: Path) -> dict[str, Any]:
    """The whole stage in one process, as `dvc repro` runs it: plan, every shard, finalize."""
    for index in plan_audioset(cfg, root):
        download_shard(cfg, root, index)
    return finalize_audioset(cfg, root)
