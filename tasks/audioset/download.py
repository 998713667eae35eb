"""Stage `acquire_audioset`: the selected segments, by YouTube id, with yt-dlp, into the raw clip store.

Three steps, which the Airflow DAG runs as separate tasks and `dvc repro` runs in one process:
    plan_audioset      check the store against the selection; keep every clip already fetched
    download_shard     one shard: bounded concurrency, paced requests, backoff, stop-loss
    finalize_audioset  manifest, failures table, metrics per class and split

Each clip: only the section [start, end] is fetched (yt-dlp `download_ranges`, ffmpeg reads it with
Range requests), converted to `sample_rate` / `channels`, verified (duration, not silent) and staged
in the state database at once, so a killed task loses nothing; the shard file is written when every
clip of the shard is stored or has failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from tasks.audio import FlacBlob, encode_flac
from tasks.audioset.classify import PERMANENT, RATE_LIMITS, ClipProblem, Problem, classify
from tasks.audioset.lists import InvalidId, check_ytid
from tasks.audioset.select import read_selection
from tasks.audioset.state import DownloadState, fingerprint
from tasks.config import AcquireAudiosetConfig, CredentialsConfig
from tasks.fetch import redact, redact_text
from tasks.progress import Tally, track
from tasks.storage import (
    Clip,
    Failure,
    RawStore,
    StageFailed,
    atomic_write_text,
    check_failure_share,
    log_failure,
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
PARAMS_FILE = "download.json"  # in the store: the parameters its clips were made with


class ShardPaused(StageFailed):
    """Rate limiting persisted: the shard stopped early; what it fetched is kept for the rerun."""


class _Stopped(Exception):
    """Raised in a worker once the stop-loss has given up on the shard."""


@dataclass(frozen=True)
class Credentials:
    """Optional cookies file and proxy. Never logged: repr shows only whether each is set."""

    cookies_file: Path | None = field(default=None, repr=False)
    proxy: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        state = {name: "set" if value else "unset" for name, value in (("cookies", self.cookies_file),
                                                                       ("proxy", self.proxy))}  # fmt: skip
        return f"Credentials(cookies={state['cookies']}, proxy={state['proxy']})"

    @classmethod
    def from_env(cls, cfg: CredentialsConfig) -> Credentials:
        cookies = os.environ.get(cfg.cookies_env) or None
        return cls(Path(cookies) if cookies else None, os.environ.get(cfg.proxy_env) or None)

    def redact(self, text: str) -> str:
        for secret, mark in ((self.proxy, "<proxy>"), (str(self.cookies_file) if self.cookies_file else None,
                                                       "<cookies>")):  # fmt: skip
            if secret:
                text = text.replace(secret, mark)
        return text


@dataclass(frozen=True)
class Job:
    id: str
    ytid: str
    start: float
    end: float
    split: str
    labels: list[str]
    class_ids: list[str]


class Pacer:
    """A minimum interval between one worker's requests, plus random jitter, so workers never burst."""

    def __init__(self, interval_s: float, jitter_s: float, rng: random.Random, sleep: Callable[[float], None]) -> None:
        self.interval_s, self.jitter_s, self.rng, self.sleep = interval_s, jitter_s, rng, sleep
        self.next_at = 0.0

    def wait(self) -> None:
        delay = self.next_at - time.monotonic()
        if delay > 0:
            self.sleep(delay)
        self.next_at = time.monotonic() + self.interval_s + self.rng.uniform(0.0, self.jitter_s)


class StopLoss:
    """After `after` rate-limited attempts in a row, every worker of the shard pauses for `pause_s`;
    after `max_pauses` pauses the shard stops instead of burning through the list."""

    def __init__(self, after: int, pause_s: float, max_pauses: int, sleep: Callable[[float], None]) -> None:
        self.after, self.pause_s, self.max_pauses, self.sleep = after, pause_s, max_pauses, sleep
        self.streak = self.pauses = 0
        self.resume_at = 0.0
        self.stopped = False
        self.lock = threading.Lock()

    def gate(self) -> None:
        while True:
            with self.lock:
                if self.stopped:
                    raise _Stopped
                wait = self.resume_at - time.monotonic()
            if wait <= 0:
                return
            self.sleep(min(wait, 5.0))

    def ok(self) -> None:
        with self.lock:
            self.streak = 0

    def limited(self) -> None:
        with self.lock:
            self.streak += 1
            if self.streak < self.after or self.stopped:
                return
            self.streak = 0
            if self.pauses >= self.max_pauses:
                self.stopped = True
                log.warning("stop-loss: rate limited after %d pauses; stopping the shard", self.pauses)
                return
            self.pauses += 1
            self.resume_at = time.monotonic() + self.pause_s
            log.warning("stop-loss: %d rate-limited attempts in a row; pausing the shard %.0f s (pause %d of %d)",
                        self.after, self.pause_s, self.pauses, self.max_pauses)  # fmt: skip


class _YtdlpLog:
    """yt-dlp's own chatter goes to debug: each outcome is logged once, classified, by the shard loop."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", redact_text(self.creds.redact(msg)))

    info = warning = error = debug


def ytdlp_options(cfg: AcquireAudiosetConfig, job: Job, workdir: Path, creds: Credentials) -> dict[str, Any]:
    from yt_dlp.utils import download_range_func

    opts: dict[str, Any] = {
        "format": "bestaudio/best",
        "outtmpl": "clip.%(ext)s",
        "paths": {"home": str(workdir), "temp": str(workdir)},
        "download_ranges": download_range_func(None, [(job.start, job.end)]),
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": "wav"}],
        "postprocessor_args": {"extractaudio": ["-ar", str(cfg.sample_rate), "-ac", str(cfg.channels)]},
        # ffmpeg reads the section itself; without a timeout a stalled server would hang it forever.
        "external_downloader_args": {"ffmpeg_i": ["-rw_timeout", str(int(cfg.socket_timeout_s * 1e6))]},
        "socket_timeout": cfg.socket_timeout_s,
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0, "file_access_retries": 0,  # we retry, counted
        "noplaylist": True, "overwrites": True, "cachedir": False,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": _YtdlpLog(creds),
    }  # fmt: skip
    if creds.cookies_file:
        # yt-dlp writes cookies back on exit: each download gets its own copy, the user's file stays as it is.
        copy = workdir / "cookies.txt"
        shutil.copyfile(creds.cookies_file, copy)
        opts["cookiefile"] = str(copy)
    if creds.proxy:
        opts["proxy"] = creds.proxy
    return opts


def verify(path: Path, job: Job, cfg: AcquireAudiosetConfig) -> FlacBlob:
    """Decoded audio of the expected rate, length (within the tolerance) and level, as FLAC."""
    try:
        samples, rate = sf.read(path, dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise ClipProblem(Problem("postprocessing", f"converted audio is unreadable: {exc}")) from exc
    if rate != cfg.sample_rate or samples.shape[1] != cfg.channels:
        raise ClipProblem(Problem("postprocessing", f"converted audio is {rate} Hz x {samples.shape[1]}, expected "
                                                    f"{cfg.sample_rate} Hz x {cfg.channels}"))  # fmt: skip
    seconds, expected = samples.shape[0] / rate, job.end - job.start
    if abs(seconds - expected) > cfg.duration_tolerance_s:
        raise ClipProblem(Problem("duration_mismatch", f"got {seconds:.2f} s of audio for the {expected:.2f} s segment "
                                                       f"{job.start:g}-{job.end:g} (tolerance "
                                                       f"{cfg.duration_tolerance_s:g} s)"))  # fmt: skip
    rms = math.sqrt(float(np.mean(np.square(samples.astype(np.float64) / 32768.0))))
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    if level < cfg.silence_dbfs:
        raise ClipProblem(Problem("silent", f"RMS level {level:.1f} dBFS is below {cfg.silence_dbfs:g} dBFS"))
    return encode_flac(samples[:, 0] if cfg.channels == 1 else samples, rate)


def fetch_section(cfg: AcquireAudiosetConfig, job: Job, creds: Credentials, scratch: Path) -> FlacBlob:
    """One attempt at one clip: yt-dlp's Python API, never a shell string."""
    import yt_dlp

    url = cfg.url_template.format(ytid=check_ytid(job.ytid))
    with tempfile.TemporaryDirectory(prefix="clip-", dir=scratch) as tmp:
        workdir = Path(tmp)
        try:
            with yt_dlp.YoutubeDL(ytdlp_options(cfg, job, workdir, creds)) as ydl:
                ydl.download([url])
        except ClipProblem:
            raise
        except Exception as exc:  # yt-dlp raises DownloadError, or a bare TransportError from some paths
            problem = classify(exc)
            message = redact_text(creds.redact(problem.message))  # cookies, proxy and any secret in the URL
            raise ClipProblem(Problem(problem.reason, message, problem.retry_after)) from None
        out = workdir / "clip.wav"
        if not out.exists():
            raise ClipProblem(Problem("postprocessing", "yt-dlp finished but wrote no audio file"))
        return verify(out, job, cfg)


class ShardDownloader:
    """Downloads the missing clips of one shard with bounded concurrency."""

    def __init__(self, cfg: AcquireAudiosetConfig, index: int, creds: Credentials, scratch: Path,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.cfg, self.index, self.creds, self.scratch, self.sleep = cfg, index, creds, scratch, sleep
        sl = cfg.stop_loss
        self.stop_loss = StopLoss(sl.after, sl.pause_s, sl.max_pauses, sleep)
        self._local = threading.local()
        self._workers = 0
        self._lock = threading.Lock()

    def _pacer(self) -> Pacer:
        if not hasattr(self._local, "pacer"):
            with self._lock:
                self._workers += 1
                worker = self._workers
            rng = random.Random(f"{self.cfg.seed}/{self.index}/{worker}")
            self._local.pacer = Pacer(self.cfg.min_interval_s, self.cfg.jitter_s, rng, self.sleep)
        return self._local.pacer

    def backoff(self, attempt: int, problem: Problem) -> float:
        """Exponential backoff; a server's Retry-After is honoured when it asks for longer, up to max_backoff_s."""
        wait = self.cfg.backoff_s * 2 ** (attempt - 1)
        if problem.retry_after is not None:
            wait = max(wait, problem.retry_after)
        return min(wait, self.cfg.max_backoff_s)

    def clip(self, job: Job) -> Clip | Failure:
        source = "selection"
        try:
            source = redact(self.cfg.url_template.format(ytid=check_ytid(job.ytid)))  # stored in manifest, failures
        except InvalidId as exc:
            return Failure(job.id, source, STAGE, "invalid_id", str(exc), 0)
        for attempt in range(1, self.cfg.attempts + 1):
            self.stop_loss.gate()
            self._pacer().wait()
            try:
                flac = fetch_section(self.cfg, job, self.creds, self.scratch)
            except ClipProblem as exc:
                problem = exc.problem
                if problem.reason in RATE_LIMITS:
                    self.stop_loss.limited()
                elif problem.permanent:
                    self.stop_loss.ok()  # a definite answer: the server is talking to us
                if problem.permanent or attempt == self.cfg.attempts:
                    return Failure(job.id, source, STAGE, problem.reason, problem.message, attempt)
                wait = self.backoff(attempt, problem)
                log.info("%s: %s (attempt %d of %d); retrying in %.1f s", job.id, problem.reason, attempt,
                         self.cfg.attempts, wait)  # fmt: skip
                self.sleep(wait)
                continue
            self.stop_loss.ok()
            return Clip(job.id, flac, job.labels, source, _meta(job))
        raise AssertionError("unreachable: the last attempt returns")


def _meta(job: Job) -> dict[str, Any]:
    return {"ytid": job.ytid, "start_s": job.start, "end_s": job.end, "split": job.split, "class_ids": job.class_ids}


# ----------------------------------------------------------------------------- the three steps


def _store(cfg: AcquireAudiosetConfig, root: Path) -> RawStore:
    return RawStore(root / cfg.store.out_dir, DATASET, META_SCHEMA, shard_stamp(_keys(cfg), __file__))


def _rows_stamp(jobs: dict[str, Job], ids: list[str]) -> dict[str, str]:
    """What a shard's rows say besides their audio: labels and metadata, which the selection may change."""
    rows = [[i, jobs[i].labels, _meta(jobs[i])] for i in ids]
    return {"rows": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]}


def _keys(cfg: AcquireAudiosetConfig) -> dict[str, Any]:
    """clip_key: parameters that shape a stored clip; source_key: those plus where it comes from."""
    shape = {"sample_rate": cfg.sample_rate, "channels": cfg.channels,
             "duration_tolerance_s": cfg.duration_tolerance_s, "silence_dbfs": cfg.silence_dbfs}  # fmt: skip
    return {**shape, "clip_key": fingerprint(shape),
            "source_key": fingerprint({**shape, "url_template": cfg.url_template})}  # fmt: skip


def _state(cfg: AcquireAudiosetConfig, root: Path) -> DownloadState:
    keys = _keys(cfg)
    return DownloadState(root / cfg.state_dir, keys["clip_key"], keys["source_key"])


def _jobs(cfg: AcquireAudiosetConfig, root: Path) -> dict[str, Job]:
    rows = read_selection(root / cfg.selection).to_pylist()
    return {r["id"]: Job(r["id"], r["ytid"], r["start_s"], r["end_s"], r["split"], r["labels"], r["class_ids"])
            for r in rows}  # fmt: skip


def _plan(cfg: AcquireAudiosetConfig, jobs: dict[str, Job]) -> list[list[str]]:
    return plan_shards(jobs, cfg.store.shard_rows)


def _part_ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["id"]).column("id").to_pylist() if path.exists() else []


def plan_audioset(cfg: AcquireAudiosetConfig, root: Path) -> list[int]:
    """Shard indexes to run. Clips of shards that the new plan cuts differently are staged first,
    so no shard task has to fetch a clip that is already in the store."""
    jobs = _jobs(cfg, root)
    plan = _plan(cfg, jobs)
    store = _store(cfg, root)
    store.remove_partial_files()
    keys = _keys(cfg)
    params_path = store.root / PARAMS_FILE
    old = _read_json(params_path)
    if old.get("clip_key") != keys["clip_key"]:
        if store.shards_dir.exists() or store.failures_dir.exists():
            log.info("%s: clip parameters changed; the stored clips do not fit them and are discarded", STAGE)
        shutil.rmtree(store.shards_dir, ignore_errors=True)
        shutil.rmtree(store.failures_dir, ignore_errors=True)
    elif old.get("source_key") != keys["source_key"]:
        log.info("%s: url_template changed; failed clips will be tried again at the new source", STAGE)
        shutil.rmtree(store.failures_dir, ignore_errors=True)
    state = _state(cfg, root)
    try:
        staged = 0
        for path in sorted(store.shards_dir.glob("part-*.parquet")):
            index = int(path.stem.split("-")[1])
            failures = store.shard_failures_path(index)
            if failures.exists():
                for row in pq.read_table(failures).to_pylist():
                    if _is_permanent(row["reason"]):
                        state.remember(Failure(**row))
            if index < len(plan) and sorted(_part_ids(path) + _part_ids(failures)) == sorted(plan[index]):
                continue
            table = pq.read_table(path)
            for row in table.to_pylist():
                if row["id"] in jobs:
                    state.stage(row["id"], FlacBlob(row["audio"], row["sample_rate"], row["channels"], row["frames"]))
                    staged += 1
        if staged:
            log.info("%s: %d stored clips staged for their new shards", STAGE, staged)
    finally:
        state.close()
    atomic_write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n", params_path)
    log.info("%s: %d clips selected in %d shards of up to %d", STAGE, len(jobs), len(plan), cfg.store.shard_rows)
    return list(range(len(plan)))


def _is_permanent(reason: str) -> bool:
    return PERMANENT.get(reason, False)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def download_shard(cfg: AcquireAudiosetConfig, root: Path, index: int, creds: Credentials | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:  # fmt: skip
    """Fetch what shard `index` lacks and write it; stored clips and remembered failures are reused."""
    jobs = _jobs(cfg, root)
    plan = _plan(cfg, jobs)
    if index >= len(plan):
        raise StageFailed(f"{STAGE}: shard {index} does not exist; the selection makes {len(plan)} shards")
    ids = plan[index]
    store = _store(cfg, root)
    tally = Tally(f"{STAGE} shard {index}")
    wanted = set(ids)
    stored = _stored_clips(store, index, wanted)
    old_failures = {i: f for i, f in _failures(store, index).items() if i in wanted}
    transient = [i for i, f in old_failures.items() if not _is_permanent(f.reason)]
    if store.shard_done(index, ids, _rows_stamp(jobs, ids)) and not transient:
        tally.add("skipped", len(ids))
        log.info(tally.summary())
        return dict(tally.counts)
    state = _state(cfg, root)
    try:
        clips = {i: Clip(i, flac, jobs[i].labels, redact(cfg.url_template.format(ytid=jobs[i].ytid)), _meta(jobs[i]))
                 for i, flac in {**state.staged(ids), **stored}.items()}  # fmt: skip
        failures = {i: f for i, f in {**old_failures, **state.remembered(ids)}.items()
                    if i not in clips and _is_permanent(f.reason)}  # fmt: skip
        tally.add("skipped", len(clips) + len(failures))
        todo = [jobs[i] for i in ids if i not in clips and i not in failures]
        # yt-dlp's working files; a killed attempt's leftovers go when the shard runs again.
        scratch = root / cfg.state_dir / "tmp" / f"shard-{index:05d}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        downloader = ShardDownloader(cfg, index, creds or Credentials.from_env(cfg.credentials), scratch, sleep)
        stopped = _download(downloader, todo, state, clips, failures, tally)
        shutil.rmtree(scratch, ignore_errors=True)
        if stopped:
            left = len(ids) - len(clips) - len(failures)
            raise ShardPaused(f"{STAGE}: shard {index} stopped by the stop-loss after persistent rate limiting; "
                              f"{left} clips left for a later run; the {len(clips)} fetched are kept")  # fmt: skip
        store.write_shard(index, [clips[i] for i in sorted(clips)], [failures[i] for i in sorted(failures)],
                          _rows_stamp(jobs, ids))  # fmt: skip
        state.unstage(clips)
    finally:
        state.close()
    log.info(tally.summary())
    return dict(tally.counts)


def _download(downloader: ShardDownloader, todo: list[Job], state: DownloadState, clips: dict[str, Clip],
              failures: dict[str, Failure], tally: Tally) -> bool:  # fmt: skip
    """Run the jobs; results are saved in the state as they arrive. True when the stop-loss stopped the shard."""
    if not todo:
        return False
    stopped = False
    index = downloader.index
    with ThreadPoolExecutor(max_workers=downloader.cfg.concurrency, thread_name_prefix=f"shard{index}") as pool:
        futures = [pool.submit(downloader.clip, job) for job in todo]
        for future in track(as_completed(futures), len(futures), f"{STAGE} shard {index}"):
            try:
                result = future.result()
            except _Stopped:
                stopped = True
                continue
            if isinstance(result, Clip):
                state.stage(result.id, result.flac)
                clips[result.id] = result
                tally.add("done")
                continue
            if _is_permanent(result.reason):
                state.remember(result)
            failures[result.id] = result
            tally.add("failed", reason=result.reason)
            log_failure(result)
    return stopped


def _stored_clips(store: RawStore, index: int, ids: set[str]) -> dict[str, FlacBlob]:
    path = store.shard_path(index)
    if not path.exists():
        return {}
    try:
        rows = pq.read_table(path, columns=["id", "audio", "sample_rate", "channels", "frames"]).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        log.warning("%s is unreadable (%s); its clips come from the state or are fetched again", path.name, exc)
        return {}
    return {r["id"]: FlacBlob(r["audio"], r["sample_rate"], r["channels"], r["frames"]) for r in rows if r["id"] in ids}


def _failures(store: RawStore, index: int) -> dict[str, Failure]:
    path = store.shard_failures_path(index)
    try:
        return {r["id"]: Failure(**r) for r in pq.read_table(path).to_pylist()} if path.exists() else {}
    except (pa.ArrowInvalid, OSError):
        return {}


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
    state = _state(cfg, root)
    try:
        state.unstage(manifest.column("id").to_pylist())
    finally:
        state.close()
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
