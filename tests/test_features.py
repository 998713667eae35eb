"""Feature stages: the log-mel front end, square slices, the Parquet feature datasets and their reader."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import librosa
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from devtools.mirror.store import synth_clip, write_store
from tasks.audio import AudioError, FlacBlob, decode_flac, encode_flac
from tasks.cli import run_stage
from tasks.config import AudioChecks, ConfigError, FrontEndConfig, apply_overrides, section_config
from tasks.features import dataset, slices, stage
from tasks.features.dataset import open_table, read_metadata
from tasks.features.frontend import (
    CPU_CHUNK_FRAMES,
    Spectrogram,
    band_groups,
    check_levels,
    frame_count,
    load_audio,
)
from tasks.features.reader import FeatureDataset, loader
from tasks.features.slices import features_slices, slice_starts
from tasks.storage import Clip, StageFailed

from .conftest import PROJECT, shared

SR = 16000
# float32 torch against float32/64 librosa: log-mel values agree to this, in natural-log units.
LOG_TOLERANCE = 1e-3


def librosa_logmel(samples: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """The same settings through librosa (frames x bands).

    librosa centres the win_length window in the n_fft frame; padding (n_fft - win_length) / 2
    on both sides makes its frame f start at sample f * hop, as VGGish frames.
    """
    pad = (cfg.n_fft - cfg.win_length) // 2
    mel = librosa.feature.melspectrogram(
        y=np.pad(samples, pad), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=False, power=1.0, n_mels=cfg.n_bands,
        fmin=cfg.fmin, fmax=cfg.fmax, htk=True, norm=None,
    )  # fmt: skip
    return np.log(mel + cfg.log_offset).T


def music(seconds: float, seed: int = 0, mood: str = "happy") -> np.ndarray:
    from devtools.mirror.package import file_rng
    from devtools.mirror.synth import synthesize

    return synthesize(mood, seconds, SR, file_rng(seed, "frontend"))


@pytest.mark.parametrize(
    "settings",
    [{}, {"win_length": 1024, "hop_length": 500, "n_fft": 2048, "n_bands": 128, "fmin": 0.0, "fmax": 8000.0}],
    ids=["vggish", "slices"],
)
def test_frontend_matches_librosa(settings: dict) -> None:
    cfg = FrontEndConfig(**settings)
    samples = music(3.3)
    ours = Spectrogram(cfg)(torch.from_numpy(samples)).numpy()
    theirs = librosa_logmel(samples, cfg)
    assert ours.shape == theirs.shape == (frame_count(samples.size, cfg), cfg.n_bands)
    assert np.abs(ours - theirs).max() < LOG_TOLERANCE


@pytest.mark.parametrize(("lead", "trail"), [(0, 0), (262, 3000), (700, 300 * 160 + 17)],
                         ids=["none", "short", "whole-chunk"])  # fmt: skip
def test_frontend_padding_is_zeros_around_the_wave(lead: int, trail: int) -> None:
    """Padding given to the front end is the same as zeros written around the wave, on chunks
    wholly inside the wave, across its ends, and wholly inside the padding."""
    cfg = FrontEndConfig()
    samples = music(3.3, seed=5)
    ours = Spectrogram(cfg)(torch.from_numpy(samples), lead, trail).numpy()
    theirs = librosa_logmel(np.pad(samples, (lead, trail)), cfg)
    assert ours.shape == theirs.shape == (frame_count(lead + samples.size + trail, cfg), cfg.n_bands)
    assert ours.shape[0] > CPU_CHUNK_FRAMES  # more than one chunk
    assert np.abs(ours - theirs).max() < LOG_TOLERANCE


def test_band_groups_cover_every_non_zero_of_the_bank() -> None:
    bank = np.zeros((10, 40), np.float32)
    for band in range(6):  # bands 6-9 are empty
        bank[band, 3 * band : 3 * band + 5] = 1.0
    runs = band_groups(bank, 4)
    assert runs == [(0, 4, 0, 14), (4, 8, 12, 20), (8, 10, 0, 0)]
    covered = np.zeros_like(bank)
    for band, band_end, low, high in runs:
        covered[band:band_end, low:high] = bank[band:band_end, low:high]
    assert np.array_equal(covered, bank)


def test_frontend_vggish_framing_by_hand() -> None:
    """Frame f is the 400 samples from f * 160, periodic Hann, |rfft 512|, as VGGish's mel_features."""
    cfg = FrontEndConfig()
    samples = music(1.0, seed=3)
    frames = np.lib.stride_tricks.sliding_window_view(samples, 400)[::160]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    magnitude = np.abs(np.fft.rfft(frames * window, 512))
    bank = librosa.filters.mel(sr=SR, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None)
    expected = np.log(magnitude @ bank.T + 0.01)
    ours = Spectrogram(cfg)(torch.from_numpy(samples)).numpy()
    assert ours.shape == (1 + (SR - 400) // 160, 64) == expected.shape
    assert np.abs(ours - expected).max() < LOG_TOLERANCE


def test_frontend_is_batched_and_linear_scale_is_the_raw_spectrum() -> None:
    cfg = FrontEndConfig()
    batch = torch.from_numpy(np.stack([music(1.2, seed=s) for s in range(3)]))
    together = Spectrogram(cfg)(batch)
    assert together.shape == (3, frame_count(batch.shape[1], cfg), 64)
    for i in range(3):
        assert torch.allclose(together[i], Spectrogram(cfg)(batch[i]), atol=1e-5)
    # Linear triangles 257 wide on the 257 FFT bins (0 to Nyquist) are the identity: the raw spectrogram.
    linear = FrontEndConfig(scale="linear", n_bands=257, fmin=0.0, fmax=8000.0)
    spectrum = np.abs(librosa.stft(np.pad(batch[0].numpy(), 56), n_fft=512, hop_length=160, win_length=400,
                                   center=False)).T  # fmt: skip
    ours = Spectrogram(linear)(batch[0]).numpy()
    assert np.abs(ours - np.log(spectrum + 0.01)).max() < LOG_TOLERANCE


@pytest.mark.parametrize(
    ("n_cells", "step", "tail", "starts"),
    [
        (1, 128, "pad", [0]),
        (128, 128, "pad", [0]),
        (129, 128, "pad", [0, 128]),
        (300, 128, "pad", [0, 128, 256]),
        (300, 128, "align_end", [0, 128, 172]),
        (256, 128, "align_end", [0, 128]),
        (300, 64, "pad", [0, 64, 128, 192]),
        (300, 64, "align_end", [0, 64, 128, 172]),
        (50, 64, "align_end", [0]),
    ],
)
def test_slice_starts(n_cells: int, step: int, tail: str, starts: list[int]) -> None:
    assert slice_starts(n_cells, 128, step, tail) == starts


def test_check_audio_reasons() -> None:
    checks = AudioChecks()
    good = music(0.5)[:, None]
    check_levels(good, checks)
    for bad, reason in [
        (np.where(np.arange(good.size)[:, None] == 7, np.nan, good), "nonfinite"),
        (np.where(np.arange(good.size)[:, None] == 7, np.inf, good), "nonfinite"),
        (np.zeros_like(good), "silent"),
        (np.clip(good * 40, -1, 1), "clipped"),
    ]:
        with pytest.raises(AudioError) as info:
            check_levels(bad, checks)
        assert info.value.reason == reason


# ----------------------------------------------------------------------------- stage on generated stores


def slices_cfg(params: dict, root: Path, *extra: str):
    return section_config(apply_overrides(params, [f"features_slices.store.raw_dir={root / 'raw'}",
                                                   f"features_slices.store.out_dir={root / 'slices'}",
                                                   f"features_slices.store.metrics_file={root / 'm.json'}",
                                                   *extra]), "features_slices")  # fmt: skip


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RAVDESS-like sung clips (48 kHz mono, actors) and CAL500-like songs (44.1 kHz stereo)."""
    root = tmp_path_factory.mktemp("raw")
    moods = ["happy", "sad", "angry", "calm"]
    ravdess = [synth_clip(f"03-02-0{i % 4 + 3}-01-01-01-0{i % 2 + 1}", moods[i % 4], 1.5 + 0.7 * i, 48000, 1,
                          voice=True, meta={"actor": i % 2 + 1}) for i in range(4)]  # fmt: skip
    cal500 = [synth_clip(f"artist_{i}-song_{i}", moods[i], 6.0 + 2.5 * i, 44100, 2, channels=2) for i in range(3)]
    write_store(root / "raw", "ravdess", ravdess, shard_rows=3)
    write_store(root / "raw", "cal500", cal500, shard_rows=2)
    return root


def test_slices_stage_partitions_square_slices_with_metadata(params: dict, raw: Path, tmp_path: Path) -> None:
    (tmp_path / "raw").symlink_to(raw / "raw")
    metrics = features_slices(slices_cfg(params, tmp_path), tmp_path)
    assert metrics["clips"] == 7 and metrics["failed"] == 0 and metrics["shape"] == [128, 128]
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert set(metrics["per_dataset"]) == {"ravdess", "cal500"}
    assert set(metrics["per_dataset"]["ravdess"]) == {"train"} and set(metrics["per_dataset"]["cal500"]) == {"test"}
    table = open_table(tmp_path / "slices")
    # 4 s slices, no overlap, padded tail: ceil(duration / 4 s) each (1.5-3.6 s clips; 6, 8.5, 11 s songs).
    per_clip = {c: table["clip_id"].to_pylist().count(c) for c in set(table["clip_id"].to_pylist())}
    assert sorted(per_clip.values()) == [1, 1, 1, 1, 2, 3, 3] and table.num_rows == metrics["rows"] == 12
    field = table.schema.field("spectrogram")
    assert isinstance(field.type, pa.FixedShapeTensorType) and field.type.shape == [128, 128]
    assert field.type.value_type == pa.float16()
    ravdess = table.filter(pa.compute.equal(table["dataset"], "ravdess"))
    assert set(ravdess["actor"].to_pylist()) == {1, 2} and set(ravdess["split"].to_pylist()) == {"train"}
    meta = read_metadata(tmp_path / "slices")
    first_file = next((tmp_path / "slices").rglob("part-*.parquet"))
    file_meta = json.loads(pq.read_schema(first_file).metadata[b"mood_pipeline"])
    assert meta["params_hash"] == file_meta["params_hash"] == metrics["params_hash"]
    assert meta["code_version"] == file_meta["code_version"] and len(meta["code_version"]) == 16
    assert meta["frontend"]["n_bands"] == 128 and meta["frontend"]["hop_length"] == 500


def test_bounded_files_split_a_shard_and_count_each_clip_once(params: dict, raw: Path, tmp_path: Path) -> None:
    (tmp_path / "raw").symlink_to(raw / "raw")
    metrics = features_slices(slices_cfg(params, tmp_path, "features_slices.store.rows_per_file=2"), tmp_path)
    files = sorted((tmp_path / "slices").rglob("part-*.parquet"))
    assert all(pq.read_metadata(f).num_rows <= 2 for f in files) and len(files) >= 6
    assert metrics["clips"] == 7 and metrics["rows"] == 12
    assert metrics["per_dataset"]["cal500"]["test"] == {"clips": 3, "rows": 8}


def test_slices_cover_every_sample_of_every_clip(params: dict, tmp_path: Path) -> None:
    """Clips of awkward lengths (at 16 kHz, so no resampling moves a sample) under every tail policy."""
    hop, size = 500, 128
    lengths = [1200, size * hop, size * hop + 1, size * hop - 1, 3 * size * hop + 777, 150_001]
    clips = []
    for n in lengths:
        samples = music(n / SR, seed=n)[:n] * 0.3
        samples[-160:] = 0.9 * np.sign(np.sin(np.arange(160) * 0.7))  # a loud burst in the last 10 ms
        clips.append(Clip(f"clip-{n}", encode_flac(samples, SR), ["happy"], "synth", {"split": "test"}))
    write_store(tmp_path / "raw", "songs", clips)
    for tail, overlap in [("pad", 0.0), ("align_end", 0.0), ("pad", 0.5), ("align_end", 0.25)]:
        out = tmp_path / f"{tail}-{overlap}"
        cfg = slices_cfg(params, tmp_path, "features_slices.datasets=[songs]", f"features_slices.tail={tail}",
                         f"features_slices.overlap={overlap}", f"features_slices.store.out_dir={out}")  # fmt: skip
        features_slices(cfg, tmp_path)
        table = open_table(out)
        for clip, n in zip(clips, lengths, strict=True):
            rows = table.filter(pa.compute.equal(table["clip_id"], clip.id))
            covered = np.zeros(n, bool)
            for start, end in zip(rows["start_sample"].to_pylist(), rows["end_sample"].to_pylist(), strict=True):
                assert end - start <= size * hop
                covered[start:end] = True
            assert covered.all(), f"{clip.id} {tail} {overlap}: samples {np.flatnonzero(~covered)[:5]} uncovered"
            # The burst ending the clip is in every slice holding the last sample's cell, in that cell's frame.
            spec = rows["spectrogram"].combine_chunks().to_numpy_ndarray().astype(np.float32)
            last_cell = (n - 1) // hop
            holders = [(row, last_cell - start // hop) for row, start in enumerate(rows["start_sample"].to_pylist())
                       if 0 <= last_cell - start // hop < size]  # fmt: skip
            assert holders
            for row, frame in holders:
                assert spec[row, :, frame].max() > np.log(0.01) + 5
                if frame + 2 < size:  # windows two cells on start after the end: padding, silence
                    assert spec[row, :, frame + 2 :].max() < np.log(0.01) + 0.01


def test_slices_match_the_front_end_on_the_whole_clip(params: dict, tmp_path: Path) -> None:
    """Each stored slice is the front end's frames [s, s + 128) of the clip, centred on its hop cells."""
    n = 9 * SR + 123
    samples = music(n / SR, seed=5)
    write_store(tmp_path / "raw", "songs", [Clip("one", encode_flac(samples, SR), ["sad"], "synth", {"split": "x"})])
    cfg = slices_cfg(params, tmp_path, "features_slices.datasets=[songs]", "features_slices.dtype=float32")
    features_slices(cfg, tmp_path)
    table = open_table(tmp_path / "slices")
    stored = table["spectrogram"].combine_chunks().to_numpy_ndarray()
    decoded = decode_flac(encode_flac(samples, SR).data)[0][:, 0]
    fe = cfg.frontend
    lead = (fe.win_length - fe.hop_length) // 2
    padded = np.concatenate([np.zeros(lead, np.float32), decoded, np.zeros(3 * 128 * 500, np.float32)])
    frames = librosa_logmel(padded, fe)
    for row, start in enumerate(table["start_sample"].to_pylist()):
        s = start // fe.hop_length
        assert np.abs(stored[row] - frames[s : s + 128].T).max() < LOG_TOLERANCE


def test_rerun_skips_done_shards_and_a_param_change_redoes_them(params: dict, raw: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    (tmp_path / "raw").symlink_to(raw / "raw")
    first = features_slices(slices_cfg(params, tmp_path), tmp_path)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "slices").rglob("part-*.parquet")}
    caplog.clear()
    assert features_slices(slices_cfg(params, tmp_path), tmp_path) == first
    assert "done 0 / skipped 7 / failed 0" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "slices").rglob("part-*.parquet")} == files
    # A killed writer leaves a temp file and a shard without its marker: both are cleaned up and redone.
    marker = next((tmp_path / "slices" / "_shards").glob("cal500-*"))
    marker.unlink()
    (marker.parent / ".x.parquet.tmp-1").write_bytes(b"partial")
    caplog.clear()
    assert features_slices(slices_cfg(params, tmp_path), tmp_path)["rows"] == first["rows"]
    assert "skipped 5" in caplog.text and not list((tmp_path / "slices").rglob(".*tmp*"))
    overlapped = features_slices(slices_cfg(params, tmp_path, "features_slices.overlap=0.5"), tmp_path)
    assert overlapped["rows"] > first["rows"] and overlapped["params_hash"] != first["params_hash"]
    fewer = features_slices(slices_cfg(params, tmp_path, "features_slices.datasets=[cal500]"), tmp_path)
    assert set(fewer["per_dataset"]) == {"cal500"}
    assert not (tmp_path / "slices" / "dataset=ravdess").exists()


def test_a_run_killed_mid_shard_keeps_done_shards_and_the_rerun_finishes_the_same(
        params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Rows are written while a shard is computed; until its marker they count for nothing."""
    clips = [synth_clip(f"c{i}", "sad", 2.0 + 1.5 * i, SR, 3, meta={"split": "x"}) for i in range(7)]
    write_store(tmp_path / "raw", "songs", clips, shard_rows=4)
    monkeypatch.setattr(dataset, "ROW_GROUP_BYTES", 2 * 128 * 128 * 2)  # row groups of 2 float16 slices
    monkeypatch.setattr(stage, "WORKERS", 1)  # clips in order, so the kill falls in the second shard
    monkeypatch.setattr(slices, "WRITE_CLIPS", 1)  # each clip's rows to the writer as it is done
    cfg = slices_cfg(params, tmp_path, "features_slices.datasets=[songs]")
    reference = features_slices(slices_cfg(params, tmp_path, "features_slices.datasets=[songs]",
                                           f"features_slices.store.out_dir={tmp_path / 'ref'}"), tmp_path)  # fmt: skip
    real_slice_clip, calls = slices.slice_clip, []

    def killed_at_the_sixth(*args: object) -> object:
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("killed")
        return real_slice_clip(*args)

    monkeypatch.setattr(slices, "slice_clip", killed_at_the_sixth)
    with pytest.raises(RuntimeError, match="killed"):
        features_slices(cfg, tmp_path)
    out = tmp_path / "slices"
    assert [p.name[: len("songs-part-00000-")] for p in (out / "_shards").iterdir()] == ["songs-part-00000-"]
    assert not list(out.rglob("part-00001-*.parquet"))  # only under temporary names
    assert list(out.rglob(".part-00001-*.tmp-*"))  # the fifth clip's rows went out before the kill
    monkeypatch.setattr(slices, "slice_clip", real_slice_clip)
    caplog.clear()
    rerun = features_slices(cfg, tmp_path)
    assert {k: rerun[k] for k in ("clips", "rows", "failed", "per_dataset")} == {
        k: reference[k] for k in ("clips", "rows", "failed", "per_dataset")}  # fmt: skip
    assert "done 3 / skipped 4 / failed 0" in caplog.text and not list(out.rglob(".*tmp*"))
    ours, ref = open_table(out), open_table(tmp_path / "ref")
    assert ours.equals(ref)
    for path in out.rglob("part-*.parquet"):
        meta = pq.ParquetFile(path).metadata
        assert meta.num_row_groups >= 2 and all(meta.row_group(g).num_rows <= 2 for g in range(meta.num_row_groups))


def test_a_rewritten_raw_shard_is_redone_and_the_outputs_of_its_old_files_dropped(
        params: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """Outputs are named after the raw shard file, which is named after its contents: an acquire run that
    changes one shard leaves the others' names, so only the changed one is computed again."""
    clips = [synth_clip(f"c{i}", "sad", 1.0, SR, 3, meta={"split": "x"}) for i in range(6)]
    write_store(tmp_path / "raw", "songs", clips, shard_rows=3)
    cfg = slices_cfg(params, tmp_path, "features_slices.datasets=[songs]")
    features_slices(cfg, tmp_path)
    out = tmp_path / "slices"
    before = sorted(p.name for p in (out / "_shards").iterdir())
    write_store(tmp_path / "raw", "songs", [*clips[:5], synth_clip("c6", "happy", 1.5, SR, 4, meta={"split": "x"})],
                shard_rows=3)  # fmt: skip
    caplog.clear()
    features_slices(cfg, tmp_path)
    assert "done 3 / skipped 3 / failed 0" in caplog.text
    after = sorted(p.name for p in (out / "_shards").iterdir())
    assert after[0] == before[0] and after[1] != before[1] and len(after) == 2
    shards = {name.removeprefix("songs-").removesuffix(".parquet") for name in after}
    assert {p.name.rsplit("-", 1)[0] for p in out.rglob("part-*.parquet")} == shards  # no outputs of old files
    reference = features_slices(slices_cfg(params, tmp_path, "features_slices.datasets=[songs]",
                                           f"features_slices.store.out_dir={tmp_path / 'ref'}"), tmp_path)  # fmt: skip
    assert reference["rows"] == read_metadata(out)["counts"]["songs"]["x"]["rows"]
    assert open_table(out).equals(open_table(tmp_path / "ref"))


def test_a_failed_write_stops_the_stage_with_its_error_and_marks_nothing(
        params: dict, raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "raw").symlink_to(raw / "raw")

    def disk_full(self: dataset.ShardWriter, blocks: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset.ShardWriter, "add", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        features_slices(slices_cfg(params, tmp_path), tmp_path)
    assert not list((tmp_path / "slices").rglob("_shards/*.parquet"))


def lie_about_length(flac: bytes, frames: int = 2**36 - 1) -> bytes:
    """STREAMINFO's 36-bit total-samples field (the low bits of bytes 21-25) set to `frames`."""
    lied = bytearray(flac)
    lied[21] = (lied[21] & 0xF0) | (frames >> 32)
    lied[22:26] = (frames & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(lied)


def test_decoding_matches_libsndfile_and_accepts_zero_copy_views() -> None:
    stereo = np.stack([music(1.3), music(1.3, seed=1) * 0.5], axis=1)
    flac = encode_flac(stereo, 44100).data
    reference = sf.read(io.BytesIO(flac), dtype="int16", always_2d=True)[0]
    for view in (flac, memoryview(flac), pa.py_buffer(flac)):
        pcm, rate = decode_flac(view, dtype="int16")
        assert rate == 44100 and pcm.shape == (stereo.shape[0], 2) and np.array_equal(pcm, reference)
    floats = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)[0]
    assert np.array_equal(decode_flac(flac)[0], floats)


def test_load_audio_is_librosa_load_at_the_front_end_rate() -> None:
    """Decoded, mixed to the channels' mean and resampled with soxr HQ, as librosa.load does it."""
    for rate, channels in [(44100, 2), (48000, 1), (16000, 2)]:
        stereo = np.stack([music(2.3, seed=rate), music(2.3, seed=channels) * 0.4], axis=1)[:, :channels]
        flac = encode_flac(stereo, rate).data
        ours = load_audio(flac, SR, AudioChecks())
        theirs, _ = librosa.load(io.BytesIO(flac), sr=SR, mono=True)
        # librosa pads soxr's output to ceil(n * ratio) samples; soxr itself rounds.
        n = min(ours.size, theirs.size)
        assert ours.dtype == np.float32 and abs(ours.size - theirs.size) <= 1
        assert np.abs(ours[:n] - theirs[:n]).max() < 1e-6, (rate, channels)


def test_load_audio_checks_every_sample_of_a_song() -> None:
    """The checks see every sample of every channel: what only a song's end or one channel holds counts."""
    rate, frames = 44100, 5 * 44100
    song = np.zeros((frames, 2), np.float32)
    song[-2000:, 0] = 0.5  # a silent song but for its last 2000 samples
    load_audio(encode_flac(song, rate).data, SR, AudioChecks())
    song[:, 1] = music(5.0, seed=2)[: frames // 4].repeat(4)[:frames] * 0.3
    clipped = slice(frames // 2, frames // 2 + frames // 25)  # 4% of one channel: 2% of the samples
    song[clipped, 1] = np.where(np.arange(frames // 25) % 2, 1.0, -1.0)
    with pytest.raises(AudioError, match=r"^2\.0% of samples at or above 0\.999") as error:
        load_audio(encode_flac(song, rate).data, SR, AudioChecks())
    assert error.value.reason == "clipped"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], r"decoded \d+ of the \d+ frames its STREAMINFO declares"),
        (lambda b: b[:3000] + bytes([b[3000] ^ 0xFF]) + b[3001:], r"frames failed their CRC"),
        (lambda b: b[:120], r"decoded 0 of the \d+ frames"),
        (lie_about_length, r"declares 68719476735 frames, more than \d+ bytes of FLAC can hold"),
        (lambda b: lie_about_length(b, 70000), r"holds more than the 70000 frames its STREAMINFO declares"),
        (lambda b: b"RIFF" + b[4:], r"no readable FLAC stream header"),
        (lambda b: b"", r"no readable FLAC stream header"),
    ],
    ids=["truncated", "bit-flip", "header-only", "lying-length", "short-length", "wrong-format", "empty"],
)
@pytest.mark.parametrize("decoder", ["decode_flac", "load_audio"])
def test_damaged_flac_is_a_decode_error_naming_the_damage(damage, message: str, decoder: str) -> None:
    """Decoded alone (decode_flac) or as the stages read (load_audio)."""
    flac = encode_flac(music(10.0), SR).data
    with pytest.raises(AudioError, match=message) as error:
        decode_flac(damage(flac)) if decoder == "decode_flac" else load_audio(damage(flac), SR, AudioChecks())
    assert error.value.reason == "decode"


def test_bad_audio_goes_to_failures_and_the_run_goes_on(params: dict, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    good = [synth_clip(f"good-{i}", "happy", 2.0, SR, 2) for i in range(5)]
    corrupt = FlacBlob(b"fLaC" + bytes(range(200)), SR, 1, 16000)
    bad = [
        Clip("silent", encode_flac(np.zeros(SR, np.float32), SR), ["sad"], "synth", {}),
        Clip("clipped", encode_flac(np.clip(music(1.0) * 50, -1, 1), SR), ["angry"], "synth", {}),
        Clip("corrupt", corrupt, ["calm"], "synth", {}),
    ]
    write_store(tmp_path / "raw", "mixed", good + bad, shard_rows=4)
    cfg = slices_cfg(params, tmp_path, "features_slices.datasets=[mixed]", "features_slices.default_splits={mixed: x}")
    with pytest.raises(StageFailed, match=r"3 of 8 items failed"):
        features_slices(cfg, tmp_path)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["clips"] == 5 and metrics["failed"] == 3
    assert metrics["failed_by_reason"] == {"clipped": 1, "decode": 1, "silent": 1}
    failures = pq.read_table(tmp_path / "slices" / "_failures.parquet").to_pylist()
    assert {(f["id"], f["reason"], f["stage"]) for f in failures} == {
        ("silent", "silent", "features_slices"), ("clipped", "clipped", "features_slices"),
        ("corrupt", "decode", "features_slices"),
    }  # fmt: skip
    assert all(f["source"].startswith("mixed/part-") and f["message"] for f in failures)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for clip, reason in [("silent", "silent"), ("clipped", "clipped"), ("corrupt", "decode")]:
        assert [m for m in warnings if m.startswith(f"features_slices: clip {clip} failed: {reason}: ")], warnings
    lenient = slices_cfg(params, tmp_path, "features_slices.datasets=[mixed]",
                         "features_slices.default_splits={mixed: x}",
                         "features_slices.store.max_failure_share=0.5")  # fmt: skip
    assert features_slices(lenient, tmp_path)["clips"] == 5


def test_a_clip_missing_from_its_shard_file_fails_and_the_next_shards_go_on(params: dict, tmp_path: Path) -> None:
    clips = [synth_clip(f"c{i}", "happy", 1.5, SR, 0) for i in range(7)]
    write_store(tmp_path / "raw", "gaps", clips, shard_rows=3)
    first = sorted((tmp_path / "raw" / "gaps" / "shards").glob("*.parquet"))[0]
    table = pq.read_table(first)
    pq.write_table(table.filter(pc.not_equal(table["id"], "c1")), first)
    cfg = slices_cfg(params, tmp_path, "features_slices.datasets=[gaps]", "features_slices.default_splits={gaps: x}",
                     "features_slices.store.max_failure_share=0.5")  # fmt: skip
    metrics = features_slices(cfg, tmp_path)
    assert metrics["clips"] == 6 and metrics["failed_by_reason"] == {"missing": 1}
    failures = pq.read_table(tmp_path / "slices" / "_failures.parquet").to_pylist()
    assert [(f["id"], f["reason"], f["source"]) for f in failures] == [("c1", "missing", f"gaps/{first.name}")]
    ids = open_table(tmp_path / "slices", columns=["clip_id"]).column("clip_id").to_pylist()
    assert list(dict.fromkeys(ids)) == ["c0", "c2", "c3", "c4", "c5", "c6"]  # shard order kept across 3 shards


def test_a_store_without_split_or_manifest_is_a_clear_error(params: dict, raw: Path, tmp_path: Path) -> None:
    (tmp_path / "raw").symlink_to(raw / "raw")
    with pytest.raises(StageFailed, match=r"no raw clip store for dataset 'audioset'.*acquire_audioset"):
        features_slices(slices_cfg(params, tmp_path, "features_slices.datasets=[audioset]"), tmp_path)
    with pytest.raises(StageFailed, match="no split column and default_splits names no split for 'ravdess'"):
        features_slices(slices_cfg(params, tmp_path, "features_slices.default_splits={}"), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("features_slices.slice_seconds=3", r"square slice needs .* e.g. frontend.hop_length=375"),
        ("features_slices.frontend.win_length=400", "would skip audio"),
        ("features_slices.overlap=1.0", "features_slices.overlap: Input should be less than 1"),
        ("features_slices.tail=drop", "features_slices.tail"),
        ("features_slices.frontend.fmax=9000", "fmax <= sample_rate / 2"),
    ],
)
def test_bad_slice_params_name_the_key(params: dict, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        section_config(apply_overrides(params, [override]), "features_slices")


def test_reader_gives_batches_without_per_row_copies(params: dict, raw: Path, tmp_path: Path) -> None:
    (tmp_path / "raw").symlink_to(raw / "raw")
    metrics = features_slices(slices_cfg(params, tmp_path), tmp_path)
    data = FeatureDataset(tmp_path / "slices", "spectrogram", classes=["happy", "sad", "angry", "calm"])
    assert len(data) == metrics["rows"] and data.features.dtype == torch.float16
    assert data.features.shape == (metrics["rows"], 128, 128)
    assert data.metadata["params_hash"] == metrics["params_hash"]
    assert torch.equal(data.targets.sum(1), torch.ones(len(data)))
    batches = list(loader(data, batch_size=4, shuffle=True, seed=3))
    assert [len(b["row"]) for b in batches[:-1]] == [4] * (len(batches) - 1)
    assert sorted(torch.cat([b["row"] for b in batches]).tolist()) == list(range(len(data)))
    assert torch.equal(batches[0]["features"], data.features[batches[0]["row"]])
    again = list(loader(data, batch_size=4, shuffle=True, seed=3))
    assert all(torch.equal(a["row"], b["row"]) for a, b in zip(batches, again, strict=True))
    test = FeatureDataset(tmp_path / "slices", "spectrogram", dataset="cal500", split="test")
    assert len(test) == metrics["per_dataset"]["cal500"]["test"]["rows"]


def test_cli_runs_the_stage_with_overrides(params: dict, raw: Path, tmp_path: Path) -> None:
    (tmp_path / "raw").symlink_to(raw / "raw")
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    metrics = run_stage("features_slices", tmp_path, overrides=["features_slices.store.raw_dir=raw",
                                                                "features_slices.tail=align_end"])  # fmt: skip
    assert metrics["clips"] == 7
    assert (tmp_path / "data/features/slices/_dataset.json").exists()
    assert (tmp_path / "metrics/features_slices.json").exists()


def test_vocal_isolation_keeps_length_and_changes_the_slices(params: dict, tmp_path: Path) -> None:
    song = synth_clip("song", "happy", 5.0, SR, 4, meta={"split": "test"})
    write_store(tmp_path / "raw", "songs", [song])
    plain = features_slices(slices_cfg(params, tmp_path, "features_slices.datasets=[songs]"), tmp_path)
    vocal = features_slices(slices_cfg(params, tmp_path, "features_slices.datasets=[songs]",
                                       "features_slices.vocal_isolation=true",
                                       f"features_slices.store.out_dir={tmp_path / 'vocal'}"), tmp_path)  # fmt: skip
    assert plain["rows"] == vocal["rows"] == 2
    a = open_table(tmp_path / "slices")["spectrogram"].combine_chunks().to_numpy_ndarray()
    b = open_table(tmp_path / "vocal")["spectrogram"].combine_chunks().to_numpy_ndarray()
    assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.mark.realdata
def test_real_ravdess_song_clips_slice(params: dict, tmp_path: Path) -> None:
    import soundfile as sf

    folder = shared("ravdess", "song_wav48k")
    paths = sorted(folder.rglob("*.wav"))[:6]
    clips = []
    for path in paths:
        samples, rate = sf.read(path, dtype="int16")
        clips.append(Clip(path.stem, encode_flac(samples, rate), ["x"], path.name, {"actor": int(path.stem[-2:])}))
    write_store(tmp_path / "raw", "ravdess", clips)
    metrics = features_slices(slices_cfg(params, tmp_path, "features_slices.datasets=[ravdess]"), tmp_path)
    assert metrics["clips"] == 6 and metrics["failed"] == 0
    # 3.8-6.1 s clips: two 4 s slices each at most.
    assert 6 <= metrics["rows"] <= 12
