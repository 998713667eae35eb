import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tasks.audio import decode_flac
from tasks.config import apply_overrides, section_config
from tasks.ravdess import RavdessNameError, acquire_ravdess, parse_name
from tasks.storage import StageFailed

from .conftest import PROJECT


def test_parse_name_reads_every_field() -> None:
    name = parse_name("03-02-05-02-01-02-12")
    assert (name.modality, name.vocal_channel, name.emotion, name.intensity) == ("audio", "song", "angry", "strong")
    assert (name.statement, name.repetition, name.actor, name.gender) == (1, 2, 12, "female")
    assert parse_name("03-02-01-01-02-01-07").gender == "male"


@pytest.mark.parametrize(
    ("stem", "why"),
    [
        ("03-02-05-02-01-02", "seven two-digit fields"),
        ("03-02-05-02-01-02-12-01", "seven two-digit fields"),
        ("3-2-5-2-1-2-12", "seven two-digit fields"),
        ("04-02-05-02-01-02-12", "modality code 04"),
        ("03-03-05-02-01-02-12", "vocal channel code 03"),
        ("03-02-07-01-01-01-12", "emotion code 07 does not exist for song"),
        ("03-02-01-02-01-01-12", "neutral has no strong intensity"),
        ("03-02-05-03-01-01-12", "intensity code 03"),
        ("03-02-05-01-03-01-12", "statement code 03"),
        ("03-02-05-01-01-00-12", "repetition code 00"),
        ("03-02-05-01-01-01-25", "actor 25"),
        ("../../etc/passwd", "seven two-digit fields"),
    ],
)
def test_parse_name_is_strict(stem: str, why: str) -> None:
    with pytest.raises(RavdessNameError, match=why):
        parse_name(stem)


def cfg_for(params: dict, url: Path | str, *extra: str):
    return section_config(apply_overrides(params, [f"acquire_ravdess.download.url={url}", *extra]), "acquire_ravdess")


def test_acquire_stores_every_song_clip(params: dict, ravdess_zip: Path, tmp_path: Path) -> None:
    metrics = acquire_ravdess(cfg_for(params, ravdess_zip), tmp_path)
    assert metrics["clips"] == 44 and metrics["failed"] == 0
    assert metrics["per_label"] == {"neutral": 4, "calm": 8, "happy": 8, "sad": 8, "angry": 8, "fearful": 8}
    out = tmp_path / "data/raw/ravdess"
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    assert {"id", "labels", "duration_s", "sample_rate", "sha256", "shard", "actor", "gender", "intensity"} <= set(
        manifest.columns
    )
    assert (manifest.sample_rate == 48000).all() and (manifest.actor == 1).all()
    # The stored audio is the original, sample for sample (FLAC is lossless).
    first_shard = out / "shards" / manifest.shard[0]
    row = pq.read_table(first_shard).slice(0, 1).to_pylist()[0]
    with zipfile.ZipFile(ravdess_zip) as zf:
        original, rate = sf.read(zf.open(f"Actor_01/{row['id']}.wav"), dtype="int16")
    stored, stored_rate = decode_flac(row["audio"], dtype="int16")
    assert stored_rate == rate == 48000
    np.testing.assert_array_equal(stored[:, 0], original)
    # FLAC is stored as it is (zstd and a dictionary gain nothing on it); the metadata is compressed.
    chunk = pq.ParquetFile(first_shard).metadata.row_group(0)
    columns = {chunk.column(i).path_in_schema: chunk.column(i) for i in range(chunk.num_columns)}
    assert columns["audio"].compression == "UNCOMPRESSED" and "RLE_DICTIONARY" not in columns["audio"].encodings
    assert columns["id"].compression == columns["labels.list.element"].compression == "ZSTD"


def test_emotion_filter_and_unparseable_names(params: dict, ravdess_zip: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.zip"
    shutil.copy(ravdess_zip, hostile)
    with zipfile.ZipFile(hostile, "a") as zf:
        zf.writestr("Actor_01/03-02-09-01-01-01-01.wav", b"RIFF")  # emotion 09 does not exist
        zf.writestr("Actor_02/03-02-05-01-01-01-01.wav", b"RIFF")  # actor 01 filed under Actor_02
        zf.writestr("Actor_01/notes.wav", b"RIFF")
        zf.writestr("README.txt", b"not audio: ignored")
    cfg = cfg_for(params, hostile, "acquire_ravdess.emotions=[happy, sad]",
                  "acquire_ravdess.store.max_failure_share=0.5")  # fmt: skip
    metrics = acquire_ravdess(cfg, tmp_path)
    assert metrics["per_label"] == {"happy": 8, "sad": 8}
    assert metrics["failed_by_reason"] == {"bad_name": 3}
    failures = pq.read_table(tmp_path / "data/raw/ravdess/failures.parquet").to_pandas()
    assert set(failures.id) == {"Actor_01/03-02-09-01-01-01-01.wav", "Actor_02/03-02-05-01-01-01-01.wav",
                                "Actor_01/notes.wav"}  # fmt: skip
    assert failures.message.str.contains("filed under Actor_02").any()


def test_corrupt_audio_is_recorded_and_too_many_failures_fail_the_stage(params, ravdess_zip, tmp_path) -> None:
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(ravdess_zip) as src, zipfile.ZipFile(broken, "w") as dst:
        for i, info in enumerate(src.infolist()):
            data = src.read(info)
            dst.writestr(info, data[:40] if i % 4 == 0 else data)  # every 4th WAV truncated to its header
    with pytest.raises(StageFailed, match=r"acquire_ravdess: 11 of 44 items failed .* stored so far is kept"):
        acquire_ravdess(cfg_for(params, broken), tmp_path)
    manifest = pq.read_table(tmp_path / "data/raw/ravdess/manifest.parquet")
    failures = pq.read_table(tmp_path / "data/raw/ravdess/failures.parquet").to_pandas()
    assert manifest.num_rows == 33 and len(failures) == 11
    assert set(failures.reason) <= {"decode", "empty"} and (failures.stage == "acquire_ravdess").all()


@pytest.mark.slow
def test_killed_mid_shards_leaves_no_partial_output_and_rerun_skips_done(ravdess_zip: Path, tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    args = [sys.executable, "-m", "tasks", "acquire_ravdess", "--root", str(tmp_path),
            "-S", f"acquire_ravdess.download.url={ravdess_zip}",
            "-S", "acquire_ravdess.store.shard_rows=1"]  # fmt: skip
    shards = tmp_path / "data/raw/ravdess/shards"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(shards.glob("part-*.parquet"))) < 5:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(shards.glob("part-*.parquet"))
    assert 5 <= len(done) < 44, "the kill must land mid-run"
    assert not (tmp_path / "data/raw/ravdess/manifest.parquet").exists()
    for shard in done:  # every visible shard is complete and readable
        assert pq.read_table(shard).num_rows == 1
    rerun = subprocess.run(args, capture_output=True, text=True, check=True)
    assert f"skipped {len(done)} " in rerun.stderr
    assert set(done) <= set(shards.glob("part-*.parquet"))  # kept as they were, under the same names
    assert not list(tmp_path.rglob(".*.tmp-*"))
    manifest = pq.read_table(tmp_path / "data/raw/ravdess/manifest.parquet")
    assert manifest.num_rows == 44 and len(set(manifest.column("id").to_pylist())) == 44
