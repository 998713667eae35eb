"""Benchmark: AudioSet downloads (real yt-dlp + ffmpeg) from the loopback mirror with a fixed latency per request.

1. Concurrency, with the request budget out of the way. Baseline: one download in flight
   (concurrency 1). For 1, 2, 4 and 8 concurrent downloads it prints clips per minute and the ratio
   to the baseline, then the time of a rerun over the fully downloaded shard (which must fetch nothing).
2. The shared politeness budget: `--tasks` shard tasks (separate processes, as Airflow runs them) x
   `--threads` downloads each, against a budget of `--budget` requests per hour. It prints the request
   starts the mirror saw per hour beside the budget (their ratio), and how many starts came before the
   token bucket allowed them (burst + rate x time since the start): this must be 0.

Writes benchmarks/results/audioset_download.json.

    .venv/bin/python benchmarks/audioset_download.py [--latency 0.1] [--per-class 8] [--budget 3600]

Measured 2026-12-01 on 2 cores (`--concurrency 1,4`, defaults otherwise): 73.5 clips/min at concurrency 1,
230.6 at 4 (3.14x); a rerun over the downloaded shard 0.015 s and 0 requests; the shared budget with
4 tasks x 4 threads at 3600/h, burst 2: 34 starts in 34.3 s = 3357/h past the burst, 0.932x the budget,
0 starts over it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import pyarrow.parquet as pq  # noqa: E402

from devtools.mirror.audioset import build_audioset_tree  # noqa: E402
from devtools.mirror.cli import audioset_overrides  # noqa: E402
from devtools.mirror.server import MirrorServer  # noqa: E402
from tasks.audioset.download import download_shard, finalize_audioset, plan_audioset  # noqa: E402
from tasks.audioset.select import select_audioset  # noqa: E402
from tasks.audioset.ytdlp import Credentials  # noqa: E402
from tasks.config import apply_overrides, load_params, section_config  # noqa: E402
from tasks.fetch import sha256_file  # noqa: E402

RESULTS = PROJECT / "benchmarks" / "results" / "audioset_download.json"


def run(root: Path, overrides: list[str], concurrency: int) -> tuple[float, int, int]:
    """Seconds for plan + download + finalize of one shard; stored clips; media requests seen."""
    params = apply_overrides(load_params(PROJECT / "params.yaml"), overrides)
    select_audioset(section_config(params, "select_audioset"), root)
    cfg = section_config(apply_overrides(params, [f"acquire_audioset.concurrency={concurrency}"]), "acquire_audioset")
    started = time.perf_counter()
    for index in plan_audioset(cfg, root):
        download_shard(cfg, root, index, Credentials())
    metrics = finalize_audioset(cfg, root)
    return time.perf_counter() - started, metrics["clips"], metrics["selected"]


def _shard_task(cfg: object, root: Path, index: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    download_shard(cfg, root, index, Credentials())


def budget_run(root: Path, overrides: list[str], server: MirrorServer, tasks: int, threads: int,
               per_hour: float, burst: int) -> dict[str, float]:  # fmt: skip
    """`tasks` processes x `threads` downloads against one budget: the starts the mirror saw, against the bucket."""
    params = apply_overrides(load_params(PROJECT / "params.yaml"), overrides)
    select_audioset(section_config(params, "select_audioset"), root)
    n_clips = len(pq.read_table(root / params["acquire_audioset"]["selection"]).column("id"))
    extra = [f"acquire_audioset.concurrency={threads}", f"acquire_audioset.max_requests_per_hour={per_hour}",
             f"acquire_audioset.burst={burst}", "acquire_audioset.jitter_s=0.5",
             f"acquire_audioset.store.shard_rows={math.ceil(n_clips / tasks)}"]  # fmt: skip
    cfg = section_config(apply_overrides(params, extra), "acquire_audioset")
    shards = plan_audioset(cfg, root)
    first = len(server.requests)
    began = time.time()
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_shard_task, args=(cfg, root, index)) for index in shards]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    # A start is yt-dlp's probe of the media (no Range header); ffmpeg's reads of the section follow it.
    starts = sorted(t for (path, rng), t in zip(server.requests[first:], server.request_times[first:], strict=True)
                    if path.startswith("/youtube/") and rng is None)  # fmt: skip
    rate = per_hour / 3600
    early = sum(1 for i, t in enumerate(starts) if i + 1 > burst + (t - began) * rate + 1e-6)
    span = starts[-1] - began
    # Past the burst the bucket refills at `rate`: that is the pace the budget allows.
    pace = (len(starts) - burst) / span * 3600 if span > 0 else 0.0
    return {"tasks": len(shards), "threads": threads, "budget_per_hour": per_hour, "burst": burst,
            "requests": len(starts), "seconds": round(span, 2), "requests_per_hour": round(pace, 1),
            "ratio_to_budget": round(pace / per_hour, 3), "over_budget": early}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to every mirror request")
    parser.add_argument("--per-class", type=int, default=8, help="train segments per study mood (4 moods)")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=3600.0, help="requests per hour for the budget run")
    parser.add_argument("--burst", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    levels = [int(x) for x in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-audioset-"))
    try:
        tree = work / "mirror"
        files = {p: sha256_file(tree / p) for p in build_audioset_tree(tree, args.seed, (args.per_class, 0), 0,
                                                                          10.0, 14.0)}  # fmt: skip
        rows = []
        with MirrorServer(tree, latency_s=args.latency) as server:
            common = [*audioset_overrides(server.url, files), "acquire_audioset.store.max_failure_share=1",
                      "select_audioset.quota.train=null"]  # fmt: skip
            base = [*common, "acquire_audioset.max_requests_per_hour=1e9", "acquire_audioset.burst=1000",
                    "acquire_audioset.jitter_s=0", "acquire_audioset.store.shard_rows=1000"]  # fmt: skip
            for level in levels:
                seconds, stored, selected = run(work / f"c{level}", base, level)
                rows.append({"concurrency": level, "seconds": round(seconds, 3), "clips": stored,
                             "clips_per_min": round(stored / seconds * 60, 1)})  # fmt: skip
            before = len(server.requests)
            rerun_s, _, _ = run(work / f"c{levels[-1]}", base, levels[-1])
            rerun_requests = len(server.requests) - before
            budget = budget_run(work / "budget", common, server, args.tasks, args.threads, args.budget, args.burst)
        baseline = rows[0]["clips_per_min"]
        for row in rows:
            row["ratio_to_1"] = round(row["clips_per_min"] / baseline, 2)
        print(f"AudioSet download from the loopback mirror: {selected} segments ({stored} downloadable), "
              f"{args.latency * 1000:.0f} ms latency per request, {os.cpu_count()} CPUs")  # fmt: skip
        print(f"{'concurrency':>11} {'seconds':>8} {'clips/min':>10} {'vs 1':>6}")
        for row in rows:
            print(f"{row['concurrency']:>11} {row['seconds']:>8.2f} {row['clips_per_min']:>10.1f} "
                  f"{row['ratio_to_1']:>5.2f}x")  # fmt: skip
        print(f"rerun over the fully downloaded shard: {rerun_s:.3f} s, {rerun_requests} requests "
              f"({rows[-1]['seconds'] / rerun_s:.0f}x faster than downloading it)")  # fmt: skip
        b = budget
        print(f"shared budget, {b['tasks']} shard tasks x {b['threads']} threads: {b['requests']} request starts in "
              f"{b['seconds']:.1f} s = {b['requests_per_hour']:.0f}/h past the burst of {b['burst']}, against a "
              f"budget of {b['budget_per_hour']:.0f}/h: {b['ratio_to_budget']:.3f}x; starts over the budget: "
              f"{b['over_budget']}")  # fmt: skip
        result = {"benchmark": "audioset_download", "baseline": "concurrency 1", "latency_s": args.latency,
                  "segments": selected, "downloadable": stored, "cpus": os.cpu_count(),
                  "python": platform.python_version(), "runs": rows,
                  "rerun": {"seconds": round(rerun_s, 4), "requests": rerun_requests}, "budget": budget}  # fmt: skip
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(PROJECT)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
