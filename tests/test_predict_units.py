"""Prediction's parts on their own: inputs and their limits, the served model's input rows, the batch's files."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from devtools.mirror.server import MirrorServer
from tasks.audio import AudioError, decode_flac, read_pcm
from tasks.config import PredictConfig
from tasks.predict import batch, pyfunc
from tasks.predict.inputs import InputError, Item, Limits, download, expand, load
from tasks.predict.predictor import in_order

from .conftest import PROJECT

RATE = 16000


def tone(path: Path, seconds: float, rate: int = RATE, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.repeat(wave[:, None], channels, 1).astype(np.float32), rate, subtype="PCM_16")
    return path


def test_served_requirements_are_the_projects_pins() -> None:
    pins = dict(line.split("==") for line in (PROJECT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))  # fmt: skip
    pins = {k.split("[")[0].strip().lower(): v.split()[0] for k, v in pins.items()}
    for requirement in pyfunc.REQUIREMENTS:
        name, version = requirement.split("==")
        assert pins.get(name.lower()) == version, requirement


def test_expand_names_what_it_cannot_find(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    album = tmp_path / "album" / "cd2"
    album.mkdir(parents=True)
    for name in ("b.mp3", "a.WAV", "notes.txt", "cd2/c.flac"):
        (tmp_path / "album" / name).write_bytes(b"x")
    assert [Path(i.name).name for i in expand([str(tmp_path / "album")])] == ["a.WAV", "b.mp3", "c.flac"]
    with pytest.raises(InputError, match="empty: a folder with no audio files"):
        expand([str(tmp_path / "empty")])
    with pytest.raises(InputError, match=r"nope\.mp3: no such file, folder or URL"):
        expand([str(tmp_path / "album"), str(tmp_path / "nope.mp3")])
    with pytest.raises(InputError, match="no raw clip store 'ravdess'"):
        expand(["raw:ravdess"], tmp_path)


def test_read_pcm_equals_the_stages_samples_and_refuses_long_audio(tmp_path: Path) -> None:
    wav = tone(tmp_path / "a.wav", 3.0, 44100, 2)
    flac = tmp_path / "a.flac"
    sf.write(flac, sf.read(wav, dtype="int16")[0], 44100, subtype="PCM_16")
    samples, rate = read_pcm(wav)
    assert rate == 44100 and samples.shape == (3 * 44100, 2) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, decode_flac(flac.read_bytes())[0])
    np.testing.assert_array_equal(read_pcm(flac)[0], samples)
    mp3 = tmp_path / "long.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tone(tmp_path / "long.wav", 12.0)), str(mp3)], check=True)
    assert read_pcm(mp3, 20.0)[0].shape[0] == pytest.approx(12 * RATE, abs=2000)
    for path in (tmp_path / "long.wav", mp3):
        with pytest.raises(AudioError, match=rf"{path.name}: (12 s|more than that) of audio is more than the limit "
                                             r"\(5 s") as exc:
            read_pcm(path, 5.0)
        assert exc.value.reason == "too_long"


def test_downloads_stop_at_the_limit_and_keep_no_name_or_secret(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    tone(served / "big.wav", 10.0)  # 320 kB
    limits = Limits(100_000, 60.0, 10.0)
    with MirrorServer(served) as mirror:
        with pytest.raises(AudioError, match=r"big\.wav: more than predict\.max_file_mb") as exc:
            download(f"{mirror.url}/big.wav", served, limits)
        assert exc.value.reason == "too_large"
        with pytest.raises(AudioError, match=r"token=\*\*\*: HTTPError") as exc:
            load(Item(f"{mirror.url}/..%2F..%2Fetc%2Fpasswd?token=s3cret"), limits, None)
        assert "s3cret" not in str(exc.value) and exc.value.reason == "download"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # nothing written outside its temp folder
        samples, rate = load(Item(f"{mirror.url}/big.wav"), Limits(10**6, 60.0, 10.0), None)
        assert rate == RATE and len(samples) == 10 * RATE


def test_served_rows_are_named_and_paths_are_off_unless_allowed(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    wav = tone(tmp_path / "a.wav", 2.0)
    monkeypatch.delenv(pyfunc.ALLOW_PATHS, raising=False)
    name, load_row = pyfunc.source_of({"path": str(wav), "filename": math.nan, "audio_base64": math.nan}, 0, tmp_path)
    assert name == str(wav)
    with pytest.raises(AudioError, match="`path` inputs are off: set MOOD_SERVE_ALLOW_PATHS=1"):
        load_row()
    monkeypatch.setenv(pyfunc.ALLOW_PATHS, "1")
    assert load_row()[1] == RATE
    name, load_row = pyfunc.source_of({"audio_base64": "not base64!!"}, 3, tmp_path)
    with pytest.raises(AudioError, match="audio_base64 is not base64") as exc:
        load_row()
    assert name == "row 3" and exc.value.reason == "decode"
    # A playlist suffix never reaches ffmpeg; the bytes are sniffed as what they are.
    payload = pyfunc.example_input(2.0).audio_base64[0]
    name, load_row = pyfunc.source_of({"audio_base64": payload, "filename": "../../x.m3u8"}, 1, tmp_path)
    assert name == "../../x.m3u8" and load_row()[1] == RATE
    assert list(tmp_path.iterdir()) == [wav]  # the decoded upload is gone
    # A playlist is refused whatever it is called: it would make ffmpeg read other files.
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\nfile://{wav}\n#EXT-X-ENDLIST\n".encode()
    name, load_row = pyfunc.source_of({"audio_base64": base64.b64encode(playlist).decode()}, 2, tmp_path)
    with pytest.raises(AudioError, match=r"ffmpeg could not decode input-2: .*Format not on whitelist"):
        load_row()


def test_in_order_keeps_the_order_whatever_finishes_first() -> None:
    seen = []
    lock = threading.Lock()

    def work(delay: float) -> float:
        time.sleep(delay)
        with lock:
            seen.append(delay)
        return delay

    delays = [0.05, 0.0, 0.03, 0.0, 0.01, 0.0]
    with ThreadPoolExecutor(3) as pool:
        out = list(in_order(pool, work, ((str(i), d) for i, d in enumerate(delays)), 2))
    assert out == [(str(i), d) for i, d in enumerate(delays)] and seen != delays


def test_a_batch_collects_only_this_plans_parts(tmp_path: Path) -> None:
    cfg = PredictConfig(out_dir="out")
    folder = batch.run_folder(cfg, tmp_path, "..")
    assert folder.parent == tmp_path / "out" and folder.name == "_"
    folder = batch.run_folder(cfg, tmp_path, "manual__2026-12-01T04:00:00+00:00")
    folder.mkdir(parents=True)
    (folder / batch.FILES).write_text(json.dumps({"chunks": 1, "files": ["a.wav", "b.wav"], "model": "m",
                                                  "voting": "soft"}))  # fmt: skip
    row = {"file": ["a.wav"], "mood": ["sad"], "reason": [None]}
    pq.write_table(pa.table(row), batch.part_path(folder, 0))
    pq.write_table(pa.table({**row, "file": ["stale.wav"]}), batch.part_path(folder, 1))  # an earlier plan's
    summary = batch.collect(folder)
    assert pq.read_table(folder / batch.OUTPUT).column("file").to_pylist() == ["a.wav"]
    assert summary["predicted"] == 1 and summary["missing"] == 1 and summary["moods"] == {"sad": 1}
