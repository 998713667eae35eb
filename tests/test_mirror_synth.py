"""The mirror corpus: mood-bearing synthesis and its packaging in the official archive layouts."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from devtools.mirror.package import (
    CAL500_MOOD_TAGS,
    CAL500_RELATED_TAGS,
    RAVDESS_SONG_EMOTIONS,
    build_audioset_media,
    build_cal500_archive,
    build_ravdess_zip,
    cal500_song_plan,
    load_cal500_vocab,
    ravdess_song_filenames,
)
from devtools.mirror.synth import MOOD_PROFILES, synthesize

SR = 16000
RAVDESS_NAME = re.compile(r"Actor_(\d\d)/03-02-(0[1-6])-(0[12])-(0[12])-(0[12])-(\d\d)\.wav")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def _clips(mood: str, count: int = 8, seconds: float = 4.0) -> list[np.ndarray]:
    return [synthesize(mood, seconds, SR, np.random.default_rng(1000 + i)) for i in range(count)]


def _spectrogram(x: np.ndarray, frame: int = 1024, hop: int = 256) -> tuple[np.ndarray, np.ndarray]:
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop] * np.hanning(frame)
    return np.abs(np.fft.rfft(frames, axis=1)), np.fft.rfftfreq(frame, 1.0 / SR)


def _centroid(x: np.ndarray) -> float:
    mag, freqs = _spectrogram(x)
    power = mag.sum(axis=1)
    voiced = power > 1e-3 * power.max()
    return float(((mag @ freqs)[voiced] / power[voiced]).mean())


def _onsets_per_second(x: np.ndarray) -> float:
    """Peaks of summed band-energy rises: band sums average out the noise floor, notes do not."""
    mag, freqs = _spectrogram(x)
    band = np.searchsorted(np.geomspace(150, 5000, 21), freqs) - 1
    inside = (band >= 0) & (band < 20)
    energy = np.zeros((mag.shape[0], 20))
    np.add.at(energy.T, band[inside], (mag[:, inside] ** 2).T)
    db = 10 * np.log10(energy + 1e-10 * energy.max())
    rise = np.maximum(db[2:] - db[:-2], 0).sum(axis=1)
    local = np.lib.stride_tricks.sliding_window_view(np.pad(rise, 4), 9).max(axis=1)
    return float(((rise == local) & (rise > np.median(rise) + 20)).sum() / (x.size / SR))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def _decoded_seconds(data: bytes, suffix: str, tmp_path: Path, rate: int) -> float:
    path = tmp_path / f"decode{suffix}"
    path.write_bytes(data)
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(rate)]
    raw = subprocess.run([*cmd, "pipe:1"], capture_output=True, check=True).stdout
    return len(raw) / 4 / rate


# ----------------------------------------------------------------------------- synthesis


@pytest.mark.parametrize("voice", [False, True])
def test_same_seed_gives_the_same_clip(voice: bool) -> None:
    first = synthesize("fearful", 2.0, 22050, np.random.default_rng(5), voice=voice)
    again = synthesize("fearful", 2.0, 22050, np.random.default_rng(5), voice=voice)
    other = synthesize("fearful", 2.0, 22050, np.random.default_rng(6), voice=voice)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("mood", sorted(MOOD_PROFILES))
@pytest.mark.parametrize("voice", [False, True])
def test_clip_has_exact_length_and_range(mood: str, voice: bool) -> None:
    seconds, rate = 1.2345, 22050
    x = synthesize(mood, seconds, rate, np.random.default_rng(3), voice=voice)
    assert x.dtype == np.float32 and x.shape == (round(seconds * rate),)
    assert np.isfinite(x).all()
    assert 0.25 <= np.abs(x).max() <= 0.95  # peak normalised to a random level, never clipped
    assert abs(x[0]) < 1e-3 and abs(x[-1]) < 1e-3  # faded in and out


def test_unknown_mood_is_named() -> None:
    with pytest.raises(ValueError, match=r"'gloomy'.*angry.*tender"):
        synthesize("gloomy", 1.0, SR, np.random.default_rng(0))


def test_angry_is_brighter_than_sad() -> None:
    angry = np.mean([_centroid(x) for x in _clips("angry")])
    sad = np.mean([_centroid(x) for x in _clips("sad")])
    assert angry > 1.5 * sad


def test_happy_has_denser_onsets_than_sad() -> None:
    happy = np.mean([_onsets_per_second(x) for x in _clips("happy")])
    sad = np.mean([_onsets_per_second(x) for x in _clips("sad")])
    assert happy > 2 * sad


def test_loudness_alone_does_not_separate_happy_from_sad() -> None:
    happy = [_rms(x) for x in _clips("happy")]
    sad = [_rms(x) for x in _clips("sad")]
    assert max(sad) > min(happy) and max(happy) > min(sad)


def test_sung_moods_differ_in_pitch_and_brightness() -> None:
    def sung(mood: str) -> list[np.ndarray]:
        return [synthesize(mood, 3.0, SR, np.random.default_rng(50 + i), voice=True) for i in range(6)]

    assert np.mean([_centroid(x) for x in sung("angry")]) > np.mean([_centroid(x) for x in sung("sad")])
    male = synthesize("neutral", 3.0, SR, np.random.default_rng(1), voice=True, pitch_offset=-10, formant_scale=0.87)
    female = synthesize("neutral", 3.0, SR, np.random.default_rng(1), voice=True)
    assert _centroid(male) < _centroid(female)


# ----------------------------------------------------------------------------- RAVDESS


def test_ravdess_names_follow_the_official_scheme() -> None:
    names = ravdess_song_filenames(7)
    assert len(names) == len(set(names)) == 44
    fields = [RAVDESS_NAME.fullmatch(name).groups() for name in names]  # type: ignore[union-attr]
    assert all(actor == "07" and own == "07" for actor, *_, own in fields)
    assert {emotion for _, emotion, *_ in fields} == set(RAVDESS_SONG_EMOTIONS)
    assert not [f for f in fields if f[1] == "01" and f[2] == "02"]  # neutral has no strong take
    assert sum(f[1] == "01" for f in fields) == 4 and sum(f[1] == "05" for f in fields) == 8
    with pytest.raises(ValueError, match="25"):
        ravdess_song_filenames(25)


def test_ravdess_zip_is_reproducible_and_well_formed(tmp_path: Path) -> None:
    first = build_ravdess_zip(tmp_path / "a.zip", [2], seed=11, min_seconds=1.0, max_seconds=1.5)
    again = build_ravdess_zip(tmp_path / "b.zip", [2], seed=11, min_seconds=1.0, max_seconds=1.5)
    assert first.read_bytes() == again.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))
    with zipfile.ZipFile(first) as zf:
        assert zf.namelist() == ravdess_song_filenames(2)
        for name in zf.namelist():
            info = sf.info(io.BytesIO(zf.read(name)))
            assert (info.samplerate, info.channels, info.subtype, info.format) == (48000, 1, "PCM_16", "WAV")
            assert 1.0 <= info.duration <= 1.5


# ----------------------------------------------------------------------------- CAL500


@needs_ffmpeg
def test_cal500_archive_layout_and_annotations(tmp_path: Path) -> None:
    archive = build_cal500_archive(tmp_path / "CAL500.tar.gz", n_songs=4, seed=3, min_seconds=3.0, max_seconds=5.0)
    again = build_cal500_archive(tmp_path / "again.tar.gz", n_songs=4, seed=3, min_seconds=3.0, max_seconds=5.0)
    assert archive.read_bytes() == again.read_bytes()
    plan = cal500_song_plan(4, seed=3, min_seconds=3.0, max_seconds=5.0)
    vocab = load_cal500_vocab()
    official = Path(__file__).resolve().parents[1] / "devtools" / "mirror" / "cal500_vocab.txt"
    assert vocab == official.read_text().split() and len(vocab) == 174
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    names = files["CAL500/songNames.txt"].decode().splitlines()
    assert names == [name for name, _, _ in plan] and names == sorted(names)
    assert all(re.fullmatch(r"[a-z0-9_]+-[a-z0-9_]+", name) for name in names)
    assert files["CAL500/vocab.txt"].decode().splitlines() == vocab
    hard = np.array(
        [[int(v) for v in line.split(",")] for line in files["CAL500/hardAnnotations.txt"].decode().splitlines()]
    )
    soft = np.array(
        [[float(v) for v in line.split(",")] for line in files["CAL500/softAnnotations.txt"].decode().splitlines()]
    )
    assert hard.shape == soft.shape == (4, 174)
    assert ((soft >= 0) & (soft <= 1)).all() and np.array_equal(hard, (soft >= 0.5).astype(int))
    for row, (_, mood, _) in enumerate(plan):
        assert all(hard[row, vocab.index(tag)] for tag in CAL500_MOOD_TAGS[mood][:1])
        assert (
            soft[row, vocab.index(CAL500_MOOD_TAGS[mood][0])]
            > soft[row, vocab.index("NOT-" + CAL500_MOOD_TAGS[mood][0])]
        )
    assert set(files) == {f"CAL500/{f}.txt" for f in ("songNames", "vocab", "hardAnnotations", "softAnnotations")} | {
        f"CAL500/mp3/{name}.mp3" for name in names
    }
    for name, _, seconds in plan:
        assert abs(_decoded_seconds(files[f"CAL500/mp3/{name}.mp3"], ".mp3", tmp_path, 22050) - seconds) < 0.2


def test_cal500_mood_tags_are_in_the_vocabulary() -> None:
    vocab = set(load_cal500_vocab())
    for mood, tags in CAL500_MOOD_TAGS.items():
        related = CAL500_RELATED_TAGS[mood]
        assert set(tags) <= vocab and set(related) <= vocab
        counterparts = {t.removeprefix("NOT-") if t.startswith("NOT-") else f"NOT-{t}" for t in tags + related}
        assert not counterparts & set(tags + related), mood  # never both X and NOT-X for one mood


# ----------------------------------------------------------------------------- AudioSet


@pytest.mark.parametrize("ytid", ["../etc/passw", "short", "abc/def/ghi", "-JvB5AL59f\n"])
def test_audioset_rejects_bad_ytid_before_writing(tmp_path: Path, ytid: str) -> None:
    clips = [("-JvB5AL59fM", "happy", 0.0, 1.0), (ytid, "sad", 0.0, 1.0)]
    with pytest.raises(ValueError, match=re.escape(repr(ytid))):
        build_audioset_media(tmp_path / "media", clips, seed=0, media_seconds=2.0)
    assert not (tmp_path / "media").exists()


@needs_ffmpeg
def test_audioset_media_holds_the_segment(tmp_path: Path) -> None:
    clips = [("-JvB5AL59fM", "Scary music", 1.0, 2.5), ("abcdefghij_", "happy", 0.5, 3.5)]
    paths = build_audioset_media(tmp_path, clips, seed=4, media_seconds=3.0, ext="m4a")
    assert [p.name for p in paths] == ["-JvB5AL59fM.m4a", "abcdefghij_.m4a"]
    assert abs(_decoded_seconds(paths[0].read_bytes(), ".m4a", tmp_path, 44100) - 3.0) < 0.1
    assert abs(_decoded_seconds(paths[1].read_bytes(), ".m4a", tmp_path, 44100) - 3.5) < 0.1
    assert not list(tmp_path.glob("*.tmp"))
