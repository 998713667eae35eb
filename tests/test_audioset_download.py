"""AudioSet downloads with the real yt-dlp and ffmpeg against the loopback mirror, with injected faults."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from devtools.mirror.audioset import MEDIA_DIR, MEDIA_EXT, plan_rows
from devtools.mirror.cli import audioset_overrides
from devtools.mirror.server import Fault, MirrorServer
from devtools.workspace import PostgresDatabase, missing_services
from tasks.audio import decode_flac
from tasks.audioset.classify import ClipProblem, classify
from tasks.audioset.download import (
    Job,
    ShardPaused,
    acquire_audioset,
    download_shard,
    finalize_audioset,
    plan_audioset,
)
from tasks.audioset.politeness import Budget
from tasks.audioset.select import select_audioset
from tasks.audioset.state import STATE_DB_ENV
from tasks.audioset.ytdlp import Credentials, fetch_section
from tasks.config import apply_overrides, section_config
from tasks.storage import params_hash

from .conftest import PROJECT, SMALL

# Fast, not polite: the mirror is ours. Short timeouts so a stalled server is found quickly.
FAST = ["acquire_audioset.max_requests_per_hour=3600000", "acquire_audioset.burst=100", "acquire_audioset.jitter_s=0",
        "acquire_audioset.backoff_s=0.01",
        "acquire_audioset.socket_timeout_s=1", "acquire_audioset.attempts=3", "acquire_audioset.concurrency=2",
        "acquire_audioset.stop_loss.after=50"]  # fmt: skip


def media(ytid: str) -> str:
    return f"/{MEDIA_DIR}/{ytid}.{MEDIA_EXT}"


def kinds() -> dict[str, list[str]]:
    """Selected ytids of the test corpus by what their video does (independent of the downloader)."""
    rows = plan_rows(SMALL.seed, SMALL.audioset_per_class, SMALL.audioset_missing, SMALL.audioset_segment_seconds,
                     SMALL.audioset_media_seconds)  # fmt: skip
    moods = {"/t/dd00031", "/t/dd00033", "/t/dd00036", "/t/dd00037"}
    out: dict[str, list[str]] = {}
    for r in rows:
        if len(set(r.labels) & moods) == 1:
            out.setdefault(r.media, []).append(r.ytid)
    return out


class Setup:
    def __init__(self, params: dict, corpus: tuple[Path, dict[str, str]], server: MirrorServer, root: Path) -> None:
        self.params, self.files, self.server, self.root = params, corpus[1], server, root
        select_audioset(self.select_cfg(), root)

    def overrides(self, *extra: str) -> list[str]:
        return [*audioset_overrides(self.server.url, self.files), *FAST, *extra]

    def select_cfg(self, *extra: str):
        return section_config(apply_overrides(self.params, self.overrides(*extra)), "select_audioset")

    def cfg(self, *extra: str):
        return section_config(apply_overrides(self.params, self.overrides(*extra)), "acquire_audioset")

    def hits(self, ytid: str) -> int:
        return sum(1 for path, _ in self.server.requests if path == media(ytid))

    def media_requests(self) -> int:
        return sum(1 for path, _ in self.server.requests if path.startswith(f"/{MEDIA_DIR}/"))


@pytest.fixture
def setup(params: dict, corpus: tuple[Path, dict[str, str]], tmp_path: Path):
    with MirrorServer(corpus[0]) as server:
        yield Setup(params, corpus, server, tmp_path)


def read(root: Path, name: str) -> list[dict]:
    return pq.read_table(root / "data/raw/audioset" / name).to_pylist()


def test_every_fault_lands_in_its_class_and_the_run_goes_on(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    k = kinds()
    ok = k["mood"]
    throttled, reset_once, reset_always, truncated, slow, limited = ok[:6]
    setup.server.add_fault(media(throttled), Fault("status", 429, {"Retry-After": "2"}))
    # The first request is yt-dlp sniffing the link; the next ones are ffmpeg fetching the section.
    setup.server.add_fault(media(reset_once), Fault("delay", seconds=0))
    setup.server.add_fault(media(reset_once), Fault("reset", after_bytes=2000))
    setup.server.add_fault(media(reset_always), Fault("reset", after_bytes=100), times=20)
    setup.server.add_fault(media(truncated), Fault("delay", seconds=0))
    setup.server.add_fault(media(truncated), Fault("truncate", after_bytes=3000), times=20)
    setup.server.add_fault(media(slow), Fault("delay", seconds=2.5))  # past socket_timeout_s=1
    setup.server.add_fault(media(limited), Fault("status", 429), times=20)
    waits: list[float] = []
    metrics = acquire_audioset_with(setup, waits.append)

    failed = {r["id"].rsplit("_", 1)[0]: r for r in read(setup.root, "failures.parquet")}
    reasons = {ytid: (r["reason"], r["attempts"]) for ytid, r in failed.items()}
    assert reasons == {
        k["none"][0]: ("unavailable", 1),  # HTTP 404: permanent, asked once
        k["short"][0]: ("duration_mismatch", 1),
        k["silent"][0]: ("silent", 1),
        reset_always: ("network", 3),
        truncated: ("network", 3),
        limited: ("rate_limited", 3),
    }
    assert "HTTP Error 404" in failed[k["none"][0]]["message"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for ytid, (reason, attempts) in reasons.items():
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        prefix = f"acquire_audioset: clip {failed[ytid]['id']} failed{tries}: {reason}: "
        assert [m for m in warnings if m.startswith(prefix)], (prefix, warnings)
    stored = {r["ytid"] for r in read(setup.root, "manifest.parquet")}
    assert {throttled, reset_once, slow} <= stored  # transient once, then fetched
    assert setup.hits(throttled) >= 2 and setup.hits(slow) >= 2 and setup.hits(reset_once) >= 3
    assert 2.0 in waits  # Retry-After honoured (over the 0.01 s backoff)
    assert metrics["clips"] == len(stored) == 14 - 6 and metrics["failed"] == 6
    assert metrics["failed_by_reason"] == {"duration_mismatch": 1, "network": 2, "rate_limited": 1, "silent": 1,
                                           "unavailable": 1}  # fmt: skip
    assert sum(c["selected"] for c in metrics["per_split"].values()) == 14


def acquire_audioset_with(setup: Setup, sleep, *extra: str) -> dict:
    """The stage's three steps with a recording sleep (backoff waits are checked, not slept)."""
    cfg = setup.cfg("acquire_audioset.store.max_failure_share=0.5", *extra)
    for index in plan_audioset(cfg, setup.root):
        download_shard(cfg, setup.root, index, Credentials(), sleep=sleep)
    return finalize_audioset(cfg, setup.root)


def test_stored_clips_are_verified_16k_mono_sections(setup: Setup) -> None:
    metrics = acquire_audioset(setup.cfg("acquire_audioset.store.shard_rows=5"), setup.root)
    assert metrics["failed_by_reason"] == {"duration_mismatch": 1, "silent": 1, "unavailable": 1}
    manifest = pq.read_table(setup.root / "data/raw/audioset/manifest.parquet").to_pandas()
    assert {"ytid", "start_s", "end_s", "split", "labels", "class_ids", "shard"} <= set(manifest.columns)
    assert sorted(name.split("-")[1] for name in set(manifest.shard)) == ["00000", "00001", "00002"]
    assert (manifest.sample_rate == 16000).all() and (manifest.channels == 1).all()
    assert ((manifest.duration_s - SMALL.audioset_segment_seconds).abs() < 0.1).all()
    assert set(manifest.split) == {"train", "test"} and all(len(x) == 1 for x in manifest.labels)
    row = pq.read_table(setup.root / "data/raw/audioset/shards" / manifest.shard[0]).slice(0, 1).to_pylist()[0]
    samples, rate = decode_flac(row["audio"])
    assert rate == 16000 and samples.shape == (row["frames"], 1) and abs(samples).max() > 0.01
    # Only the section was fetched: ffmpeg asks for byte ranges, never a plain whole-file GET after the sniff.
    ranged = [r for p, r in setup.server.requests if p == media(row["ytid"])]
    assert ranged[0] is None and all(r and r.startswith("bytes=") for r in ranged[1:])
    assert yaml.safe_load((setup.root / "metrics/acquire_audioset.json").read_text())["clips"] == 11


def test_rerun_downloads_nothing_and_permanent_failures_are_remembered(setup: Setup) -> None:
    cfg = setup.cfg()
    acquire_audioset(cfg, setup.root)
    before = [setup.root / "data/raw/audioset" / n for n in ("manifest.parquet", "failures.parquet")]
    snapshot = [p.read_bytes() for p in before]
    n = setup.media_requests()
    # Even with the stored shards gone (as after a `dvc repro` that wipes outputs), the 404 is not asked again.
    for part in (setup.root / "data/raw/audioset/failures").glob("*.parquet"):
        part.unlink()
    acquire_audioset(cfg, setup.root)
    assert setup.media_requests() == n
    assert [p.read_bytes() for p in before] == snapshot


def test_transient_failures_are_retried_on_the_next_run(setup: Setup) -> None:
    target = kinds()["mood"][0]
    setup.server.add_fault(media(target), Fault("status", 503), times=3)
    metrics = acquire_audioset(setup.cfg(), setup.root)
    assert metrics["failed_by_reason"]["network"] == 1
    metrics = acquire_audioset(setup.cfg(), setup.root)
    assert "network" not in metrics["failed_by_reason"] and metrics["clips"] == 11


def test_changing_the_shard_size_refetches_nothing(setup: Setup) -> None:
    first = acquire_audioset(setup.cfg("acquire_audioset.store.shard_rows=4"), setup.root)
    n = setup.media_requests()
    ids = read(setup.root, "manifest.parquet")
    second = acquire_audioset(setup.cfg("acquire_audioset.store.shard_rows=3"), setup.root)
    assert setup.media_requests() == n
    assert first["per_class"] == second["per_class"]
    again = read(setup.root, "manifest.parquet")
    assert sorted((r["id"], r["sha256"]) for r in again) == sorted((r["id"], r["sha256"]) for r in ids)
    assert len(list((setup.root / "data/raw/audioset/shards").glob("*.parquet"))) == 5


def test_stop_loss_pauses_the_shard_instead_of_burning_the_list(setup: Setup) -> None:
    ok = kinds()["mood"]
    for ytid in ok:
        setup.server.add_fault(media(ytid), Fault("status", 429, {"Retry-After": "1"}), times=50)
    cfg = setup.cfg("acquire_audioset.stop_loss.after=3", "acquire_audioset.stop_loss.max_pauses=1",
                    "acquire_audioset.stop_loss.pause_s=0.05", "acquire_audioset.concurrency=1")  # fmt: skip
    plan_audioset(cfg, setup.root)
    with pytest.raises(ShardPaused, match="stop-loss"):
        download_shard(cfg, setup.root, 0, Credentials(), sleep=lambda s: None)
    limited = sum(1 for p, _ in setup.server.requests if p in {media(y) for y in ok})
    assert limited == 6  # 3 in a row, a pause, 3 more: then it stops, with most of the list untouched
    assert not (setup.root / "data/raw/audioset/shards").exists()
    setup.server.faults.clear()
    metrics = acquire_audioset(cfg, setup.root)
    assert metrics["clips"] == 11


@pytest.mark.slow
def test_kill_mid_shard_leaves_no_partial_output_and_retry_refetches_nothing(
    params: dict, corpus: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    with MirrorServer(corpus[0], latency_s=0.15) as server:  # slow enough to be killed mid-shard
        setup = Setup(params, corpus, server, tmp_path)
        overrides = setup.overrides("acquire_audioset.concurrency=1")
        params_file = tmp_path / "params.yaml"
        params_file.write_text(yaml.safe_dump(apply_overrides(params, overrides)))
        proc = subprocess.Popen([sys.executable, "-m", "tasks", "acquire_audioset", "--root", str(tmp_path),
                                 "--params", str(params_file)], cwd=PROJECT, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        state = tmp_path / ".cache/audioset/state.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _fetched(state) < 3:
            assert proc.poll() is None, "the stage finished before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        store = tmp_path / "data/raw/audioset"
        assert not (store / "shards").exists() and not (store / "manifest.parquet").exists()
        fetched = {p for p, r in server.requests if p.startswith(f"/{MEDIA_DIR}/") and r is None}
        before = {p: sum(1 for q, _ in server.requests if q == p) for p in fetched}
        metrics = acquire_audioset(setup.cfg(), tmp_path)
        assert metrics["clips"] == 11
        fetched_paths = {media(r["ytid"]) for r in read(tmp_path, "manifest.parquet")} & fetched
        assert len(fetched_paths) >= 3
        # Clips fetched before the kill were not fetched again (one in flight at the kill may be).
        refetched = [p for p in fetched_paths if sum(1 for q, _ in server.requests if q == p) > before[p]]
        assert len(refetched) <= 1
        assert not list(tmp_path.rglob(".*.tmp-*")) and not list((tmp_path / ".cache/audioset/tmp").rglob("*.wav"))
        n = len(server.requests)
        acquire_audioset(setup.cfg(), tmp_path)
        assert len(server.requests) == n


def _fetched(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=1) as db:
            return db.execute("SELECT count(*) FROM fetched").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_invalid_id_in_the_selection_never_reaches_a_url(setup: Setup) -> None:
    path = setup.root / "data/audioset/selection.parquet"
    table = pq.read_table(path).to_pylist()
    table[0]["ytid"] = "../../x?y=1"
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)
    acquire_audioset(setup.cfg(), setup.root)
    bad = [r for r in read(setup.root, "failures.parquet") if r["reason"] == "invalid_id"]
    assert len(bad) == 1 and bad[0]["attempts"] == 0 and "11 characters" in bad[0]["message"]
    assert not any(".." in p for p, _ in setup.server.requests)


def test_proxy_and_cookies_are_used_and_never_logged(setup: Setup, corpus, caplog, monkeypatch) -> None:
    cookies = setup.root / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSID\tsecret-cookie\n")
    original = cookies.read_bytes()
    with MirrorServer(corpus[0]) as proxy:
        host, port = proxy.server_address[:2]
        monkeypatch.setenv("AUDIOSET_COOKIES_FILE", str(cookies))
        monkeypatch.setenv("AUDIOSET_PROXY", f"http://user:s3cret-pass@{host}:{port}")
        creds = Credentials.from_env(section_config(apply_overrides(setup.params, setup.overrides()),
                                                    "acquire_audioset").credentials)  # fmt: skip
        assert "s3cret" not in repr(creds) and "cookies" not in repr(creds).replace("cookies=set", "")
        cfg = setup.cfg()
        plan_audioset(cfg, setup.root)
        download_shard(cfg, setup.root, 0)
        assert any(p.startswith(f"/{MEDIA_DIR}/") for p, _ in proxy.requests)  # the proxy carried the downloads
    failures = (setup.root / "data/raw/audioset/failures").glob("part-*.parquet")
    text = caplog.text + "".join(str(pq.read_table(p).to_pylist()) for p in failures)
    assert "s3cret" not in text and "secret-cookie" not in text
    assert cookies.read_bytes() == original  # yt-dlp wrote back to its own copy


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("ERROR: [youtube] abc: Video unavailable", "unavailable"),
        ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video", "private"),
        ("ERROR: [youtube] abc: This video has been removed by the uploader", "removed"),
        ("ERROR: [youtube] abc: Video unavailable. This video is no longer available because the YouTube account "
         "associated with this video has been terminated.", "removed"),
        ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users.",
         "sign_in_required"),
        ("ERROR: [youtube] abc: Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser", "bot_check"),
        ("ERROR: [youtube] abc: Video unavailable. The uploader has not made this video available in your country",
         "geo_blocked"),
        ("ERROR: [youtube] abc: Join this channel to get access to members-only content", "private"),
        ("ERROR: ffmpeg exited with code 1", "network"),
    ],
)
def test_youtube_messages_are_classified(message: str, reason: str) -> None:
    from yt_dlp.utils import DownloadError, ExtractorError

    exc = DownloadError(message, (ExtractorError, ExtractorError(message, expected=True), None))
    assert classify(exc).reason == reason


def test_structured_errors_and_retry_after_forms() -> None:
    from email.utils import format_datetime

    from yt_dlp.utils import DownloadError, GeoRestrictedError, PostProcessingError

    from tasks.audioset.classify import retry_after

    def wrapped(exc: Exception) -> DownloadError:
        return DownloadError(f"ERROR: {exc}", (type(exc), exc, None))

    assert classify(wrapped(PostProcessingError("audio conversion failed: bad input"))).reason == "postprocessing"
    assert classify(wrapped(GeoRestrictedError("The uploader has not made this video available"))).reason == (
        "geo_blocked"
    )
    assert classify(TimeoutError("read timed out")).reason == "network"
    assert retry_after("120") == 120.0 and retry_after(None) is None and retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    assert 80 < retry_after(later) <= 90


def test_relabelled_clips_are_rewritten_from_the_stored_audio_without_a_request(setup: Setup) -> None:
    """A shard is done only when its rows match the selection's labels too: a new label (here set in the
    selection by hand, as a changed mapping or multi_label rule would) rewrites the shard from its stored audio."""
    cfg = setup.cfg()
    acquire_audioset(cfg, setup.root)
    n = setup.media_requests()
    selection_path = setup.root / cfg.selection
    selection = pq.read_table(selection_path)
    labels = selection.column("labels").to_pylist()
    relabelled = selection.column("id").to_pylist()[0]
    labels[0] = sorted({*labels[0], "scary"})
    pq.write_table(selection.set_column(selection.column_names.index("labels"), "labels",
                                        pa.array(labels, pa.list_(pa.string()))), selection_path)  # fmt: skip
    acquire_audioset(cfg, setup.root)
    assert setup.media_requests() == n
    stored = {r["id"]: r["labels"] for r in read(setup.root, "manifest.parquet")}
    assert stored[relabelled] == labels[0]


def test_a_signed_url_template_leaves_no_secret_in_the_store(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    template = f"{setup.server.url}/{MEDIA_DIR}/{{ytid}}.{MEDIA_EXT}?download=1&token=s3cr3t"
    acquire_audioset(setup.cfg(f"acquire_audioset.url_template={template}"), setup.root)
    assert any(r is None and p.startswith(f"/{MEDIA_DIR}/") for p, r in setup.server.requests)
    stored = [*read(setup.root, "manifest.parquet"), *read(setup.root, "failures.parquet")]
    assert any("token=***" in r["source"] for r in stored)
    assert not [r for r in stored if "s3cr3t" in str(r)]  # sources and failure messages alike
    assert "s3cr3t" not in caplog.text


def test_new_thresholds_rejudge_the_fetched_audio_without_a_request(setup: Setup) -> None:
    """Thresholds judge the stored audio; they never invalidate it. The clip shorter than its segment is
    kept under a wide tolerance and dropped again under the default, and nothing is fetched twice."""
    short = kinds()["short"][0]
    first = acquire_audioset_with(setup, lambda s: None)
    n = setup.media_requests()
    assert short not in {r["ytid"] for r in read(setup.root, "manifest.parquet")}
    loose = acquire_audioset_with(setup, lambda s: None, "acquire_audioset.duration_tolerance_s=5",
                                  "acquire_audioset.silence_dbfs=-200")  # fmt: skip
    assert setup.media_requests() == n
    assert short in {r["ytid"] for r in read(setup.root, "manifest.parquet")}
    assert loose["clips"] == first["clips"] + 1 and loose["failed_by_reason"].get("duration_mismatch") is None
    again = acquire_audioset_with(setup, lambda s: None)
    assert setup.media_requests() == n
    assert again == first


def test_a_shrunk_then_regrown_quota_fetches_nothing_again(setup: Setup) -> None:
    """Clips a smaller selection no longer wants stay in the state for when it wants them again."""
    first = acquire_audioset_with(setup, lambda s: None)
    n = setup.media_requests()
    ids = sorted((r["id"], r["sha256"]) for r in read(setup.root, "manifest.parquet"))
    select_audioset(setup.select_cfg("select_audioset.quota.train=1"), setup.root)
    fewer = acquire_audioset_with(setup, lambda s: None)
    assert fewer["selected"] < first["selected"] and setup.media_requests() == n
    select_audioset(setup.select_cfg(), setup.root)
    regrown = acquire_audioset_with(setup, lambda s: None)
    assert setup.media_requests() == n
    assert regrown == first and sorted((r["id"], r["sha256"]) for r in read(setup.root, "manifest.parquet")) == ids


def _long_media(root: Path, ext: str) -> str:
    """A 20 s tone in a streamable container (as YouTube serves): ffmpeg decodes it as the bytes arrive."""
    ytid = "streamable1"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=20", "-ac", "1", str(root / f"{ytid}.{ext}")], check=True)  # fmt: skip
    return ytid


@pytest.mark.parametrize("kind", ["cut", "reset"])
def test_a_body_cut_short_is_a_transient_network_failure_not_a_short_video(
    kind: str, params: dict, tmp_path: Path
) -> None:
    """Content-Length larger than the body, or a reset mid-body, in the middle of the segment: ffmpeg
    would have ended the audio early with exit code 0 and the clip be judged `duration_mismatch`."""
    ytid = _long_media(tmp_path, "mp3")
    job = Job("x_5", ytid, 5.0, 15.0, "train", ["happy"], [])
    size = (tmp_path / f"{ytid}.mp3").stat().st_size
    with MirrorServer(tmp_path) as server:
        cfg = section_config(apply_overrides(params, [f"acquire_audioset.url_template={server.url}/{{ytid}}.mp3",
                                                      *FAST]), "acquire_audioset")  # fmt: skip
        whole = fetch_section(cfg, ytid, (job.start, job.end), Credentials(), tmp_path)
        assert abs(whole.frames / whole.sample_rate - 10.0) < 0.1
        server.add_fault(f"/{ytid}.mp3", Fault("delay", seconds=0))  # yt-dlp's probe
        server.add_fault(f"/{ytid}.mp3", Fault(kind, after_bytes=size // 2), times=20)
        with pytest.raises(ClipProblem) as caught:
            fetch_section(cfg, ytid, (job.start, job.end), Credentials(), tmp_path)
    assert caught.value.problem.reason == "network" and not caught.value.problem.permanent


@pytest.fixture
def postgres_state(monkeypatch: pytest.MonkeyPatch):
    """The download state in a Postgres database of its own, as a multi-host deployment sets it."""
    missing = [m for m in missing_services() if "PostgreSQL" in m or "psycopg2" in m]
    if missing:
        pytest.skip("the Postgres state needs " + ", ".join(missing))
    with PostgresDatabase(f"mood_state_{os.getpid()}") as db:
        monkeypatch.setenv(STATE_DB_ENV, db.url("postgresql"))
        yield db


@pytest.fixture(params=["sqlite", "postgres"])
def state_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_state")
    return request.param


def test_one_budget_bounds_every_worker_of_every_shard(tmp_path: Path, state_backend: str) -> None:
    """Four shards' budgets (separate connections, as separate processes have) with four threads each draw
    from one bucket: never more starts than the burst plus the rate times the time elapsed."""
    per_hour, burst = 36000.0, 3  # 10 per second
    starts: list[float] = []
    lock = threading.Lock()
    stop = time.time() + 1.5

    def worker(budget: Budget) -> None:
        while time.time() < stop:
            gate = budget.take()
            if gate.wait_s > 0:
                time.sleep(min(gate.wait_s, 0.05))
                continue
            with lock:
                starts.append(time.time())

    budgets = [Budget(tmp_path, "https://www.youtube.com/watch?v={ytid}", per_hour, burst) for _ in range(4)]
    began = time.time()
    threads = [threading.Thread(target=worker, args=(b,)) for b in budgets for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, at in enumerate(sorted(starts)):
        assert i + 1 <= burst + (at - began) * per_hour / 3600 + 1e-6, f"start {i + 1} came too early"
    assert starts  # the bucket does hand out requests
    other = Budget(tmp_path, "http://127.0.0.1:1/{ytid}", per_hour, burst)
    assert other.take().wait_s == 0  # another host has its own budget


def test_a_pause_stops_every_worker_and_counts_pauses_in_a_row(tmp_path: Path) -> None:
    one, two = (Budget(tmp_path, "https://www.youtube.com/watch?v={ytid}", 3600, 5) for _ in range(2))
    resume_at, pauses = one.pause(60)
    assert pauses == 1 and resume_at > time.time() + 50
    gate = two.take()
    assert gate.paused_until == resume_at and gate.wait_s > 50
    assert two.pause(60) == (resume_at, 1)  # the same streak seen by another worker: one pause
    one.succeeded()
    assert one.pause(60) == (resume_at, 0)  # still running: not extended, and no longer in a row


PROBE_DAG = """
from acquire import download_audioset_shard
from airflow.sdk import dag
from common import START


@dag(dag_id="audioset_shard_probe", schedule=None, start_date=START, catchup=False)
def probe() -> None:
    download_audioset_shard.expand(shard=[0])


probe()
"""


@pytest.mark.slow
def test_airflow_reschedules_a_paused_shard_for_the_end_of_the_pause(setup: Setup, tmp_path: Path) -> None:
    """The acquire DAG's shard task, in a real Airflow: a pause of the budget frees its slot until the pause
    ends (UP_FOR_RESCHEDULE at the budget's stored end, no retry spent), then the shard is finished."""
    from devtools.workspace import airflow, airflow_env, make_workspace, prepare_airflow

    pause_s = 8
    overrides = setup.overrides("acquire_audioset.stop_loss.after=3", "acquire_audioset.concurrency=1",
                                f"acquire_audioset.stop_loss.pause_s={pause_s}")  # fmt: skip
    ws = make_workspace(tmp_path / "ws", overrides)
    select_audioset(setup.select_cfg(), ws)
    (ws / "dags/shard_probe.py").write_text(PROBE_DAG)
    ids = sorted(pq.read_table(ws / "data/audioset/selection.parquet").column("id").to_pylist())
    first = next(i for i in ids if i.rsplit("_", 1)[0] in kinds()["mood"]).rsplit("_", 1)[0]
    # 3 attempts rate limited in a row: the stop-loss pauses; after the pause 2 more, then it answers.
    setup.server.add_fault(media(first), Fault("status", 429), times=5)
    env = airflow_env(tmp_path / "airflow", ws)
    prepare_airflow(env)
    proc = airflow(env, "dags", "test", "audioset_shard_probe")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    with sqlite3.connect(tmp_path / "airflow/airflow.db") as db:
        reschedules = db.execute("SELECT start_date, reschedule_date FROM task_reschedule").fetchall()
        state, try_number, started = db.execute("SELECT state, try_number, start_date FROM task_instance "
                                                "WHERE task_id = 'download_audioset_shard'").fetchone()  # fmt: skip
    assert state == "success" and try_number == 1  # a reschedule, not a retry
    assert len(reschedules) == 1
    paused_at, resume_at = (datetime.fromisoformat(v).replace(tzinfo=UTC) for v in reschedules[0])
    assert resume_at - paused_at >= timedelta(seconds=pause_s - 1)
    assert datetime.fromisoformat(started).replace(tzinfo=UTC) >= resume_at
    attempts = [r for p, r in setup.server.requests if p == media(first) and r is None]  # yt-dlp's probe
    assert len(attempts) == 6  # 3, the pause, 2 rate limited and the one that got through
    assert list((ws / "data/raw/audioset/shards").glob("part-00000-*.parquet"))


def test_a_store_without_its_state_refetches_nothing(setup: Setup) -> None:
    """A store from `dvc pull` on another machine: its clips and its permanent failures at the same source go
    into the fresh state, so neither the stored clips nor the gone video are asked for again."""
    first = acquire_audioset_with(setup, lambda s: None)
    n = setup.media_requests()
    shutil.rmtree(setup.root / ".cache/audioset")
    assert acquire_audioset_with(setup, lambda s: None) == first
    assert setup.media_requests() == n


def test_a_state_of_the_earlier_layout_is_migrated_not_lost(setup: Setup) -> None:
    """Before the state kept every clip it kept `staged` clips (awaiting their shard) and failures keyed by the
    thresholds too: an upgrade fetches none of them again."""
    cfg = setup.cfg()
    first = acquire_audioset_with(setup, lambda s: None)
    n = setup.media_requests()
    shutil.rmtree(setup.root / "data/raw/audioset")
    shape = {"sample_rate": cfg.sample_rate, "channels": cfg.channels,
             "duration_tolerance_s": cfg.duration_tolerance_s, "silence_dbfs": cfg.silence_dbfs}  # fmt: skip
    old_clip_key, old_source_key = params_hash(shape), params_hash({**shape, "url_template": cfg.url_template})
    with sqlite3.connect(setup.root / ".cache/audioset/state.sqlite") as db:
        db.execute("CREATE TABLE staged (id TEXT NOT NULL, fingerprint TEXT NOT NULL, flac BLOB NOT NULL, "
                   "sample_rate INTEGER NOT NULL, channels INTEGER NOT NULL, frames INTEGER NOT NULL, "
                   "PRIMARY KEY (id, fingerprint))")  # fmt: skip
        db.execute("INSERT INTO staged SELECT id, ?, flac, sample_rate, channels, frames FROM fetched", (old_clip_key,))
        db.execute("DELETE FROM fetched")
        db.execute("UPDATE failed SET fingerprint = ?", (old_source_key,))
    assert acquire_audioset_with(setup, lambda s: None) == first
    assert setup.media_requests() == n


def test_a_new_sample_rate_fetches_again_and_never_mixes_rates(setup: Setup) -> None:
    acquire_audioset_with(setup, lambda s: None)
    n = setup.media_requests()
    metrics = acquire_audioset_with(setup, lambda s: None, "acquire_audioset.sample_rate=22050")
    assert setup.media_requests() > n and metrics["clips"] == 11
    assert {r["sample_rate"] for r in read(setup.root, "manifest.parquet")} == {22050}


def test_the_state_in_postgres_is_shared_by_every_host(setup: Setup, postgres_state, corpus, tmp_path: Path) -> None:
    """With AUDIOSET_STATE_DB set, a second host (another workspace) finds every clip the first fetched."""
    import psycopg2

    first = acquire_audioset_with(setup, lambda s: None)
    n = setup.media_requests()
    assert not (setup.root / ".cache/audioset/state.sqlite").exists()
    other = Setup(setup.params, corpus, setup.server, tmp_path / "host2")
    assert acquire_audioset_with(other, lambda s: None) == first
    assert setup.media_requests() == n
    conn = psycopg2.connect(postgres_state.url("postgresql"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM fetched")
            fetched = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM failed")
            failed = cur.fetchone()[0]
            cur.execute("SELECT name FROM budget")
            budgets = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    assert (fetched, failed) == (13, 1)  # every clip fetched (2 of them judged short or silent), the gone video
    assert budgets == [f"127.0.0.1:{setup.server.server_address[1]}"]
