"""Package synthetic corpora in the official archive layouts of RAVDESS, CAL500 and AudioSet.

The acquisition stages read real archives; these builders give them byte-reproducible
stand-ins with the same member names, formats and annotation files, so the whole pipeline
runs offline. Every file's randomness comes from (seed, its own name), never from the
order of work, so builds are identical across runs and across thread schedules.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf

from devtools.mirror.synth import MOOD_PROFILES, synthesize

RAVDESS_SONG_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful"}
RAVDESS_SAMPLE_RATE = 48000
RAVDESS_INTENSITY = {"01": 1.0, "02": 1.6}  # strong takes: louder, brighter, wider vibrato
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

CAL500_SAMPLE_RATE = 22050
CAL500_BITRATE = "32k"  # the study's MP3s are 32 kbps mono
CAL500_MOODS = ("happy", "sad", "angry", "calm", "tender", "fearful", "exciting")
CAL500_MOOD_TAGS: dict[str, list[str]] = {
    "happy": ["Emotion-Happy", "Emotion-Cheerful_/_Festive"],
    "sad": ["Emotion-Sad"],
    "angry": ["Emotion-Angry_/_Agressive"],
    "calm": ["Emotion-Calming_/_Soothing", "Emotion-Laid-back_/_Mellow"],
    "tender": ["Emotion-Tender_/_Soft"],
    "fearful": ["Emotion-Bizarre_/_Weird", "NOT-Emotion-Pleasant_/_Comfortable"],
    "exciting": ["Emotion-Exciting_/_Thrilling", "Emotion-Arousing_/_Awakening"],
}
# Tags annotators often add for a mood: likely but not certain, and the pool for label noise.
CAL500_RELATED_TAGS: dict[str, list[str]] = {
    "happy": ["Emotion-Carefree_/_Lighthearted", "Emotion-Light_/_Playful", "Emotion-Positive_/_Optimistic",
              "Emotion-Pleasant_/_Comfortable", "NOT-Emotion-Sad"],
    "sad": ["Emotion-Emotional_/_Passionate", "Emotion-Touching_/_Loving", "NOT-Emotion-Happy",
            "NOT-Emotion-Cheerful_/_Festive"],
    "angry": ["Emotion-Powerful_/_Strong", "Emotion-Arousing_/_Awakening", "NOT-Emotion-Calming_/_Soothing",
              "NOT-Emotion-Tender_/_Soft"],
    "calm": ["Emotion-Pleasant_/_Comfortable", "Emotion-Tender_/_Soft", "NOT-Emotion-Arousing_/_Awakening",
             "NOT-Emotion-Angry_/_Agressive"],
    "tender": ["Emotion-Loving_/_Romantic", "Emotion-Touching_/_Loving", "Emotion-Calming_/_Soothing",
               "NOT-Emotion-Angry_/_Agressive"],
    "fearful": ["NOT-Emotion-Happy", "Emotion-Arousing_/_Awakening", "NOT-Emotion-Calming_/_Soothing",
                "Emotion-Powerful_/_Strong"],
    "exciting": ["Emotion-Powerful_/_Strong", "Emotion-Happy", "Emotion-Positive_/_Optimistic",
                 "NOT-Emotion-Calming_/_Soothing"],
}  # fmt: skip
# Non-emotion tags that follow the music a listener hears: (tag, chance of a positive vote).
CAL500_MOOD_CUES: dict[str, list[tuple[str, float]]] = {
    "happy": [("Song-Fast_Tempo", 0.8), ("Song-High_Energy", 0.7), ("Song-Very_Danceable", 0.6),
              ("Instrument_-_Drum_Set", 0.7), ("Usage-At_a_party", 0.5), ("Song-Positive_Feelings", 0.8)],
    "sad": [("NOT-Song-Fast_Tempo", 0.8), ("NOT-Song-High_Energy", 0.7), ("Instrument_-_Piano", 0.5),
            ("Instrument_-_String_Ensemble", 0.4), ("NOT-Song-Positive_Feelings", 0.6)],
    "angry": [("Song-Fast_Tempo", 0.8), ("Song-High_Energy", 0.8), ("Song-Heavy_Beat", 0.7),
              ("Instrument_-_Electric_Guitar_(distorted)", 0.7), ("Vocals-Aggressive", 0.5),
              ("Genre--_Metal/Hard_Rock", 0.5), ("Instrument_-_Drum_Set", 0.8)],
    "calm": [("NOT-Song-Fast_Tempo", 0.8), ("NOT-Song-High_Energy", 0.7), ("Usage-Going_to_sleep", 0.5),
             ("Usage-Reading", 0.4), ("Instrument_-_Acoustic_Guitar", 0.5)],
    "tender": [("NOT-Song-Fast_Tempo", 0.7), ("NOT-Song-Heavy_Beat", 0.6), ("Instrument_-_Piano", 0.5),
               ("Vocals-Breathy", 0.4), ("Usage-Romancing", 0.5)],
    "fearful": [("NOT-Song-Tonality", 0.6), ("Instrument_-_Synthesizer", 0.5), ("Instrument_-_Ambient_Sounds", 0.5),
                ("NOT-Song-Very_Danceable", 0.6)],
    "exciting": [("Song-Fast_Tempo", 0.8), ("Song-High_Energy", 0.8), ("Song-Heavy_Beat", 0.6),
                 ("Instrument_-_Drum_Machine", 0.5), ("Usage-Exercising", 0.5), ("Usage-Driving", 0.4)],
}  # fmt: skip
PRIMARY_VOTE, RELATED_VOTE, OPPOSITE_VOTE = 0.88, 0.4, 0.03
LABEL_NOISE = 0.05  # share of songs that gain one extra related emotion at full strength
TITLE_WORDS = (
    ("blue", "golden", "quiet", "paper", "silver", "northern", "open", "electric", "hidden", "morning",
     "long", "little", "wild", "distant", "velvet", "broken", "crystal", "summer", "winter", "second"),
    ("evening", "road", "river", "window", "letter", "garden", "city", "train", "mirror", "song",
     "harbour", "light", "house", "island", "engine", "story", "valley", "signal", "shadow", "coast"),
)  # fmt: skip

AUDIOSET_SAMPLE_RATE = 44100
YTID_RE = re.compile(r"[A-Za-z0-9_-]{11}")
# ext -> (ffmpeg muxer, codec arguments); stereo like the downloads the fetch stage sees.
MEDIA_FORMATS: dict[str, tuple[str, list[str]]] = {
    "m4a": ("ipod", ["-c:a", "aac", "-b:a", "128k"]),
    "mp3": ("mp3", ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "flac": ("flac", ["-c:a", "flac"]),
    "wav": ("wav", ["-c:a", "pcm_s16le"]),
}
BITEXACT = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact"]


# ----------------------------------------------------------------------------- shared helpers


def file_rng(seed: int, key: str) -> np.random.Generator:
    """A generator owned by one output file: sha256, not hash(), so it is stable across processes."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield `<path>.tmp` to write; rename it over `path` only if the block succeeds."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg is not on PATH; it is needed to encode the mirror's mp3/m4a files")
    return exe


def _encode(samples: np.ndarray, sample_rate: int, out: Path, muxer: str, codec: list[str], channels: int) -> None:
    """Encode float mono samples with ffmpeg, stripped of metadata and encoder versions."""
    cmd = [
        _ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
        *BITEXACT, *codec, "-ac", str(channels), "-ar", str(sample_rate), "-f", muxer, str(out.resolve()),
    ]  # fmt: skip
    done = subprocess.run(cmd, input=samples.astype("<f4").tobytes(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed ({done.returncode}) writing {out}: {done.stderr.decode(errors='replace')[-500:]}"
        )


def _encode_bytes(samples: np.ndarray, sample_rate: int, muxer: str, codec: list[str], scratch: Path) -> bytes:
    _encode(samples, sample_rate, scratch, muxer, codec, channels=1)
    try:
        return scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- RAVDESS


def ravdess_song_filenames(actor: int) -> list[str]:
    """The 44 official song names of one actor, `Actor_XX/03-02-EE-II-SS-RR-AA.wav`, sorted."""
    _check_actor(actor)
    names = []
    for emotion in RAVDESS_SONG_EMOTIONS:
        for intensity in ("01",) if emotion == "01" else ("01", "02"):  # neutral has no strong take
            for statement in ("01", "02"):
                for repetition in ("01", "02"):
                    names.append(
                        f"Actor_{actor:02d}/03-02-{emotion}-{intensity}-{statement}-{repetition}-{actor:02d}.wav"
                    )
    return sorted(names)


def _check_actor(actor: int) -> None:
    if not isinstance(actor, int) or not 1 <= actor <= 24:
        raise ValueError(f"RAVDESS actor must be an integer 1..24, got {actor!r}")


def _singer(seed: int, actor: int) -> tuple[float, float, float]:
    """(pitch offset in semitones, formant scale, recording gain) of one actor.

    Odd actors are male: lower and darker. The gain mirrors the real takes, which peak far
    below full scale (about 0.05-0.35), so level normalisation downstream is exercised.
    """
    rng = file_rng(seed, f"Actor_{actor:02d}")
    male = actor % 2 == 1
    pitch = (-10.0 if male else 0.0) + rng.uniform(-2.5, 2.5)
    formants = (0.87 if male else 1.0) * rng.uniform(0.95, 1.05)
    return pitch, formants, rng.uniform(0.15, 0.4)


def _ravdess_wav(name: str, seed: int, min_seconds: float, max_seconds: float) -> bytes:
    fields = Path(name).stem.split("-")
    emotion, intensity, actor = fields[2], fields[3], int(fields[6])
    pitch, formants, gain = _singer(seed, actor)
    rng = file_rng(seed, name)
    seconds = rng.uniform(min_seconds, max_seconds)
    audio = synthesize(
        RAVDESS_SONG_EMOTIONS[emotion], seconds, RAVDESS_SAMPLE_RATE, rng, voice=True,
        pitch_offset=pitch, formant_scale=formants, intensity=RAVDESS_INTENSITY[intensity],
    )  # fmt: skip
    audio *= np.float32(gain * rng.uniform(0.8, 1.2))
    buf = io.BytesIO()
    sf.write(buf, audio, RAVDESS_SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def build_ravdess_zip(
    out_path: Path, actors: Sequence[int], seed: int, min_seconds: float = 3.8, max_seconds: float = 6.1
) -> Path:
    """`Audio_Song_Actors_01-24.zip` look-alike: `Actor_XX/*.wav`, 48 kHz 16-bit mono sung lines."""
    for actor in actors:
        _check_actor(actor)
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    names = sorted(name for actor in sorted(set(actors)) for name in ravdess_song_filenames(actor))
    out_path = Path(out_path)
    with _atomic(out_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf, \
            ThreadPoolExecutor(_workers()) as pool:  # fmt: skip
        wavs = pool.map(lambda name: _ravdess_wav(name, seed, min_seconds, max_seconds), names)
        for name, data in zip(names, wavs, strict=True):
            zf.writestr(_zip_info(name), data)
    return out_path


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, whatever the building host
    info.external_attr = 0o100644 << 16
    return info


# ----------------------------------------------------------------------------- CAL500


def load_cal500_vocab() -> list[str]:
    """The 174 official CAL500 tag words in their official column order."""
    text = resources.files(__package__).joinpath("cal500_vocab.txt").read_text(encoding="utf-8")
    words = [line.strip() for line in text.splitlines() if line.strip()]
    if len(words) != 174:
        raise RuntimeError(f"cal500_vocab.txt holds {len(words)} words, expected 174")
    return words


def _counterpart(tag: str) -> str:
    return tag.removeprefix("NOT-") if tag.startswith("NOT-") else f"NOT-{tag}"


def _tag_chances(vocab: list[str], mood: str, background: np.ndarray) -> np.ndarray:
    """Chance that one annotator marks each tag for a song of this mood."""
    index = {tag: i for i, tag in enumerate(vocab)}
    chances = background.copy()
    for tag in CAL500_RELATED_TAGS[mood]:
        chances[index[tag]], chances[index[_counterpart(tag)]] = RELATED_VOTE, OPPOSITE_VOTE
    for tag, chance in CAL500_MOOD_CUES[mood]:
        chances[index[tag]] = chance
        if _counterpart(tag) in index:
            chances[index[_counterpart(tag)]] = OPPOSITE_VOTE
    for tag in CAL500_MOOD_TAGS[mood]:
        chances[index[tag]], chances[index[_counterpart(tag)]] = PRIMARY_VOTE, OPPOSITE_VOTE
    return chances


def _background_chances(vocab: list[str], seed: int) -> np.ndarray:
    """Per-corpus base rates shaped like CAL500's: listeners say "not X" more often than "X",
    any one genre is rare, a few tags (Song-Recorded) are near universal."""
    rng = file_rng(seed, "CAL500/tag-rates")
    chances = rng.beta(1.1, 5.0, size=len(vocab))
    for i, tag in enumerate(vocab):
        if tag.startswith("NOT-Emotion-"):
            chances[i] = rng.uniform(0.25, 0.5)
        elif tag.startswith("Emotion-"):
            chances[i] = rng.uniform(0.05, 0.2)
        elif tag.startswith("Genre-Best"):
            chances[i] = min(chances[i], 0.15)
        elif tag.startswith("Genre"):
            chances[i] = min(chances[i], 0.3)
    return chances


def _tag_pairs(vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of (X, NOT-X) pairs: one question, so one annotator answers at most one side."""
    index = {tag: i for i, tag in enumerate(vocab)}
    pairs = [(index[_counterpart(tag)], i) for tag, i in index.items() if tag.startswith("NOT-")]
    return np.array([p for p, _ in pairs]), np.array([n for _, n in pairs])


def cal500_annotations(vocab: list[str], moods: Sequence[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(soft, hard) matrices songs x tags: soft is the share of 3-4 annotators who chose a tag."""
    background = _background_chances(vocab, seed)
    pos, neg = _tag_pairs(vocab)
    index = {tag: i for i, tag in enumerate(vocab)}
    soft = np.zeros((len(moods), len(vocab)))
    for row, mood in enumerate(moods):
        chances = _tag_chances(vocab, mood, background)
        rng = file_rng(seed, f"CAL500/annotations/{row}")
        if rng.random() < LABEL_NOISE:
            related = CAL500_RELATED_TAGS[mood]
            chances[index[related[rng.integers(len(related))]]] = PRIMARY_VOTE
        raters = int(rng.integers(3, 5))
        draws = rng.random((raters, len(vocab)))
        marked = draws < chances
        # The NOT- side reuses the positive side's draw: yes, no and neither are exclusive answers.
        either = np.minimum(chances[pos] + chances[neg], 1.0)
        marked[:, neg] = (draws[:, pos] >= chances[pos]) & (draws[:, pos] < either)
        votes = marked.sum(axis=0)
        first = index[CAL500_MOOD_TAGS[mood][0]]
        votes[first] = max(votes[first], raters // 2 + 1)  # every song keeps its mood by majority
        other = index[_counterpart(CAL500_MOOD_TAGS[mood][0])]
        votes[other] = min(votes[other], raters - votes[first])
        soft[row] = votes / raters
    return soft, (soft >= 0.5).astype(np.int8)


def _song_names(n_songs: int, seed: int) -> list[str]:
    rng = file_rng(seed, "CAL500/songNames")
    width = max(3, len(str(n_songs)))
    adjectives, nouns = TITLE_WORDS
    names = []
    for i in range(1, n_songs + 1):  # one song per artist, as in CAL500
        title = f"{adjectives[rng.integers(len(adjectives))]}_{nouns[rng.integers(len(nouns))]}"
        names.append(f"synth_artist_{i:0{width}d}-{title}")
    return names


def _song_moods(n_songs: int, seed: int) -> list[str]:
    """Moods balanced across the corpus, in random order."""
    rng = file_rng(seed, "CAL500/moods")
    tiled = np.resize(np.arange(len(CAL500_MOODS)), n_songs)
    return [CAL500_MOODS[i] for i in rng.permutation(tiled)]


def cal500_song_plan(n_songs: int, seed: int, min_seconds: float, max_seconds: float) -> list[tuple[str, str, float]]:
    """(artist-title, true mood, seconds) of every song the archive will hold, in songNames order."""
    plan = []
    for name, mood in zip(_song_names(n_songs, seed), _song_moods(n_songs, seed), strict=True):
        seconds = file_rng(seed, f"CAL500/mp3/{name}").uniform(min_seconds, max_seconds)
        plan.append((name, mood, round(seconds * CAL500_SAMPLE_RATE) / CAL500_SAMPLE_RATE))
    return plan


def _cal500_mp3(name: str, mood: str, seed: int, min_seconds: float, max_seconds: float, scratch: Path) -> bytes:
    rng = file_rng(seed, f"CAL500/mp3/{name}")
    seconds = rng.uniform(min_seconds, max_seconds)  # the same draw cal500_song_plan reports
    audio = synthesize(mood, seconds, CAL500_SAMPLE_RATE, rng, voice=False)
    codec = ["-c:a", "libmp3lame", "-b:a", CAL500_BITRATE]
    return _encode_bytes(audio, CAL500_SAMPLE_RATE, "mp3", codec, scratch / f"{name}.mp3")


def _matrix_text(rows: np.ndarray, fmt: Callable[[float], str]) -> bytes:
    return "".join(",".join(fmt(v) for v in row) + "\n" for row in rows).encode()


def build_cal500_archive(
    out_path: Path, n_songs: int, seed: int, min_seconds: float = 20.0, max_seconds: float = 45.0
) -> Path:
    """CAL500 look-alike `.tar.gz`: `CAL500/{songNames,vocab,hardAnnotations,softAnnotations}.txt` + `mp3/`."""
    if n_songs < 1 or not 0 < min_seconds <= max_seconds:
        raise ValueError(
            f"need n_songs >= 1 and 0 < min_seconds <= max_seconds, got {n_songs}, {min_seconds}, {max_seconds}"
        )
    vocab = load_cal500_vocab()
    names, moods = _song_names(n_songs, seed), _song_moods(n_songs, seed)
    soft, hard = cal500_annotations(vocab, moods, seed)
    out_path = Path(out_path)
    members: dict[str, bytes | None] = {"CAL500": None, "CAL500/mp3": None}  # None: a directory
    members["CAL500/songNames.txt"] = "".join(f"{name}\n" for name in names).encode()
    members["CAL500/vocab.txt"] = "".join(f"{word}\n" for word in vocab).encode()
    members["CAL500/hardAnnotations.txt"] = _matrix_text(hard, lambda v: str(int(v)))
    members["CAL500/softAnnotations.txt"] = _matrix_text(soft, lambda v: f"{v:.4f}")
    with _atomic(out_path) as tmp:
        scratch = tmp.with_name(tmp.name + ".d")
        scratch.mkdir(exist_ok=True)
        try:
            with ThreadPoolExecutor(_workers()) as pool:
                mp3s = pool.map(
                    lambda job: _cal500_mp3(job[0], job[1], seed, min_seconds, max_seconds, scratch),
                    zip(names, moods, strict=True),
                )
                for name, data in zip(names, mp3s, strict=True):
                    members[f"CAL500/mp3/{name}.mp3"] = data
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        _write_tar_gz(tmp, members)
    return out_path


def _write_tar_gz(path: Path, members: dict[str, bytes | None]) -> None:
    """Reproducible tar.gz: sorted members, zero mtimes and owners, no name in the gzip header."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:  # fmt: skip
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------- AudioSet


def _audioset_mood(mood: str) -> str:
    """Accept both `happy` and the ontology's `Happy music`."""
    key = mood.strip().lower().removesuffix(" music")
    if key not in MOOD_PROFILES:
        raise ValueError(f"unknown mood {mood!r}; known moods: {', '.join(sorted(MOOD_PROFILES))}")
    return key


def build_audioset_media(
    out_dir: Path, clips: Sequence[tuple[str, str, float, float]], seed: int, media_seconds: float = 30.0,
    ext: str = "m4a",
) -> list[Path]:  # fmt: skip
    """One `<out_dir>/<ytid>.<ext>` per video: its labelled segments hold the mood, the rest other music.

    A video lasts max(media_seconds, its latest segment end). A YTID listed twice (the eval
    list has one clip labelled both Sad and Scary) gets one file; where segments overlap the
    first-listed mood wins.
    """
    for ytid, _, start, end in clips:  # validate everything before any path is built
        if not isinstance(ytid, str) or not YTID_RE.fullmatch(ytid):
            raise ValueError(f"invalid YouTube id {ytid!r}: need 11 characters of [A-Za-z0-9_-]")
        if not 0 <= start < end:
            raise ValueError(f"segment of {ytid} needs 0 <= start < end, got {start}, {end}")
    if ext not in MEDIA_FORMATS:
        raise ValueError(f"unsupported media extension {ext!r}; supported: {', '.join(sorted(MEDIA_FORMATS))}")
    videos: dict[str, list[tuple[str, float, float]]] = {}
    for ytid, mood, start, end in clips:
        videos.setdefault(ytid, []).append((_audioset_mood(mood), float(start), float(end)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(_workers()) as pool:
        jobs = [(ytid, segments, out_dir / f"{ytid}.{ext}") for ytid, segments in videos.items()]
        return list(pool.map(lambda job: _write_media(*job, seed, media_seconds, ext), jobs))


def _write_media(
    ytid: str, segments: list[tuple[str, float, float]], path: Path, seed: int, media_seconds: float, ext: str
) -> Path:
    audio = _media_audio(ytid, segments, seed, media_seconds)
    muxer, codec = MEDIA_FORMATS[ext]
    with _atomic(path) as tmp:
        _encode(audio, AUDIOSET_SAMPLE_RATE, tmp, muxer, codec, channels=2)
    return path


def _media_audio(ytid: str, segments: list[tuple[str, float, float]], seed: int, media_seconds: float) -> np.ndarray:
    sr = AUDIOSET_SAMPLE_RATE
    seconds = max(media_seconds, max(end for _, _, end in segments))
    rng = file_rng(seed, f"audioset/{ytid}")
    # Background music of a clearly different mood, quieter, around the labelled segments.
    taken = {mood for mood, _, _ in segments} | {"scary", "fearful"}
    others = sorted(set(MOOD_PROFILES) - taken)
    audio = synthesize(others[rng.integers(len(others))], seconds, sr, rng) * np.float32(rng.uniform(0.25, 0.45))
    for mood, start, end in reversed(segments):  # first-listed written last, so it wins overlaps
        first, last = round(start * sr), round(end * sr)
        clip = synthesize(mood, (last - first) / sr, sr, file_rng(seed, f"audioset/{ytid}/{start}/{mood}"))
        fade = min(int(0.03 * sr), clip.size // 2)
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        weight = np.ones(clip.size, dtype=np.float32)
        weight[:fade], weight[clip.size - fade :] = ramp, ramp[::-1]
        audio[first:last] = audio[first:last] * (1 - weight) + clip * weight
    return np.clip(audio, -1.0, 1.0)
