"""Audio I/O shared by every stage: lossless FLAC blobs in, numpy arrays out."""

from __future__ import annotations

import hashlib
import io
import math
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import miniaudio
import numpy as np
import pyarrow as pa
import soundfile as sf

# FLAC bytes as the stages pass them: bytes, or a zero-copy view of an Arrow column.
FlacBytes = bytes | memoryview | pa.Buffer

# Formats libsndfile reads itself; anything else (mp3, m4a, webm) goes through ffmpeg.
SNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


class AudioError(Exception):
    """Audio that cannot be decoded or is unusable; `reason` is the failure class."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FlacBlob:
    data: bytes
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def encode_flac(samples: np.ndarray, sample_rate: int) -> FlacBlob:
    """PCM (int16, or float in [-1, 1]) -> 16-bit FLAC bytes; frames x channels or mono."""
    if samples.size == 0:
        raise AudioError("empty", "no samples to encode")
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="FLAC", subtype="PCM_16")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    return FlacBlob(buf.getvalue(), sample_rate, channels, samples.shape[0])


# Demuxers a file from outside may use: audio containers only, so no playlist (hls, concat) makes ffmpeg read
# other files or URLs.
AUDIO_DEMUXERS = "wav,flac,mp3,mov,mp4,m4a,3gp,3g2,mj2,ogg,matroska,webm,aac,aiff,caf,w64,asf"


def _ffmpeg(path: Path, out: Path, codec: list[str], demuxers: str | None = None) -> bytes:
    """Decode the first audio stream of `path` into `out` (a real file, not a pipe: ffmpeg seeks back to write
    the length into the header) with `codec`; its bytes, or AudioError naming the file."""
    allowed = ["-format_whitelist", demuxers] if demuxers else []
    cmd = ["ffmpeg", "-nostdin", "-v", "error", *allowed, "-i", str(path), "-map", "0:a:0", *codec,
           "-fflags", "+bitexact", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, check=False)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        raise AudioError("decode", f"ffmpeg could not decode {path.name}: {err[-300:] or 'no audio'}")
    # ffmpeg exits 0 on a truncated mp3 but reports the damage; a partial song is not the song.
    if any(word in err.lower() for word in ("invalid", "truncat", "error")):
        raise AudioError("decode", f"{path.name} is damaged: {err[-300:]}")
    return out.read_bytes()


def _ffmpeg_to_flac(path: Path) -> bytes:
    with tempfile.TemporaryDirectory(prefix="flac-") as tmp:
        return _ffmpeg(path, Path(tmp) / "audio.flac", ["-c:a", "flac", "-sample_fmt", "s16"])


def file_to_flac(path: Path) -> FlacBlob:
    """Decode any audio file losslessly to a FLAC blob at its original rate and channels."""
    if path.stat().st_size == 0:
        raise AudioError("empty", f"{path.name} is an empty file")
    if path.suffix.lower() in SNDFILE_SUFFIXES:
        try:
            samples, rate = sf.read(path, dtype="int16", always_2d=False)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError("decode", f"cannot decode {path.name}: {exc}") from exc
        if samples.size == 0:
            raise AudioError("empty", f"{path.name} holds no samples")
        return encode_flac(samples, rate)
    data = _ffmpeg_to_flac(path)
    info = sf.info(io.BytesIO(data))
    if info.frames == 0:
        raise AudioError("empty", f"{path.name} holds no samples")
    return FlacBlob(data, info.samplerate, info.channels, info.frames)


def read_pcm(path: Path, max_seconds: float = math.inf) -> tuple[np.ndarray, int]:
    """Any audio file as float32 samples (frames x channels) and its rate: the 16-bit samples file_to_flac would
    store, scaled as decode_flac scales them, without the FLAC round trip (a third of the time for an mp3).
    More than `max_seconds` of audio is refused (`too_long`) before it is all in memory."""
    if path.stat().st_size == 0:
        raise AudioError("empty", f"{path.name} is an empty file")
    try:
        if path.suffix.lower() in SNDFILE_SUFFIXES:
            info = sf.info(path)
            check_length(path, info.frames, info.samplerate, max_seconds)
            if info.format == "FLAC" and info.subtype == "PCM_16":
                # dr_flac, the stages' decoder, reads 16-bit FLAC in about half libsndfile's time, to the same
                # samples.
                try:
                    return decode_flac(path.read_bytes())
                except AudioError as exc:
                    raise AudioError(exc.reason, f"{path.name}: {exc}") from None
            pcm, rate = sf.read(path, dtype="int16", always_2d=True)
        else:
            with tempfile.TemporaryDirectory(prefix="pcm-") as tmp:
                # Decoding stops a second past the limit, so an endless stream never fills the memory.
                limit = [] if math.isinf(max_seconds) else ["-t", f"{max_seconds + 1:g}"]
                wav = _ffmpeg(path, Path(tmp) / "audio.wav", [*limit, "-c:a", "pcm_s16le"], AUDIO_DEMUXERS)
                pcm, rate = sf.read(io.BytesIO(wav), dtype="int16", always_2d=True)
            check_length(path, len(pcm), rate, max_seconds, cut=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError("decode", f"cannot decode {path.name}: {exc}") from exc
    if pcm.size == 0:
        raise AudioError("empty", f"{path.name} holds no samples")
    samples = pcm.astype(np.float32)
    samples *= 1.0 / 32768.0
    return samples, rate


def check_length(path: Path, frames: int, rate: int, max_seconds: float, cut: bool = False) -> None:
    """Refuse more than max_seconds of audio; `cut`: decoding stopped past the limit, so the length is unknown."""
    if frames > max_seconds * rate:
        length = "more than that" if cut else f"{frames / rate:.0f} s"
        raise AudioError("too_long", f"{path.name}: {length} of audio is more than the limit "
                                     f"({max_seconds:g} s, predict.max_seconds)")  # fmt: skip


# A FLAC frame holds at most 65535 samples per channel in no fewer than ~10 bytes: a header
# claiming more frames than that is a lie to refuse before allocating for it.
MAX_FRAMES_PER_BYTE = 8192
# dr_flac's reader per output type; its float32 is sample / 32768, libsndfile's scaling, so float
# samples are the same whichever library decoded them.
_READERS = {"int16": ("short[]", "ma_dr_flac_read_pcm_frames_s16"),
            "float32": ("float[]", "ma_dr_flac_read_pcm_frames_f32")}  # fmt: skip


def _read_into(flac: Any, pcm: np.ndarray) -> int:
    """Decode up to len(pcm) frames of an open dr_flac stream into `pcm`; the frames decoded."""
    c_type, read = _READERS[pcm.dtype.name]
    with miniaudio.ffi.from_buffer(c_type, pcm, require_writable=True) as target:
        return getattr(miniaudio.lib, read)(flac, pcm.shape[0], target)


def decode_flac(data: FlacBytes, dtype: str = "float32") -> tuple[np.ndarray, int]:
    """FLAC blob (any buffer) -> (samples frames x channels as int16 or float32, sample rate).

    dr_flac (through miniaudio's bindings) reads the bytes in place and writes straight into a
    numpy array, with no Python read callbacks, so threads decode in parallel; it is about a
    quarter faster than libsndfile (benchmarks/features.py). It skips a frame whose CRC fails and
    stops at a truncation without an error, so the decoded length is checked against the length
    STREAMINFO declares.
    """
    source = miniaudio.ffi.from_buffer(data)
    flac = miniaudio.lib.ma_dr_flac_open_memory(source, len(source), miniaudio.ffi.NULL)
    if flac == miniaudio.ffi.NULL:
        miniaudio.ffi.release(source)
        raise AudioError("decode", "corrupt FLAC blob: no readable FLAC stream header")
    try:
        frames, channels = flac.totalPCMFrameCount, flac.channels
        if frames == 0:
            raise AudioError("decode", "corrupt FLAC blob: STREAMINFO declares no length")
        if frames > MAX_FRAMES_PER_BYTE * len(source):
            raise AudioError("decode", f"corrupt FLAC blob: STREAMINFO declares {frames} frames, more than "
                                       f"{len(source)} bytes of FLAC can hold")  # fmt: skip
        pcm = np.empty((frames, channels), dtype)
        decoded = _read_into(flac, pcm)
        if decoded != frames:
            raise AudioError("decode", f"corrupt FLAC blob: decoded {decoded} of the {frames} frames its "
                                       "STREAMINFO declares (truncated, or frames failed their CRC)")  # fmt: skip
        if _read_into(flac, np.empty((1, channels), dtype)):  # dr_flac reads on past the declared length
            raise AudioError("decode", f"corrupt FLAC blob: holds more than the {frames} frames its "
                                       "STREAMINFO declares")  # fmt: skip
        return pcm, flac.sampleRate
    finally:
        miniaudio.lib.ma_dr_flac_close(flac)
        miniaudio.ffi.release(source)
