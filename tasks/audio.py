"""Audio I/O shared by every stage: lossless FLAC blobs in, numpy arrays out."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def _ffmpeg_to_flac(path: Path) -> bytes:
    # A real file, not a pipe: ffmpeg seeks back to write the frame count into STREAMINFO.
    with tempfile.TemporaryDirectory(prefix="flac-") as tmp:
        out = Path(tmp) / "audio.flac"
        cmd = [
            "ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
            "-c:a", "flac", "-sample_fmt", "s16", "-fflags", "+bitexact", str(out),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, check=False)
        err = proc.stderr.decode(errors="replace").strip()
        if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
            raise AudioError("decode", f"ffmpeg could not decode {path.name}: {err[-300:] or 'no audio'}")
        # ffmpeg exits 0 on a truncated mp3 but reports the damage; a partial song is not the song.
        if any(word in err.lower() for word in ("invalid", "truncat", "error")):
            raise AudioError("decode", f"{path.name} is damaged: {err[-300:]}")
        return out.read_bytes()


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


# A FLAC frame holds at most 65535 samples per channel in no fewer than ~10 bytes: a header
# claiming more frames than that is a lie to refuse before allocating for it.
MAX_FRAMES_PER_BYTE = 8192
# dr_flac's reader per output type; its float32 is sample / 32768, libsndfile's scaling, so float
# samples are the same whichever library decoded them.
_READERS = {"int16": ("short[]", "ma_dr_flac_read_pcm_frames_s16"),
            "float32": ("float[]", "ma_dr_flac_read_pcm_frames_f32")}  # fmt: skip
# Frames per block of FlacReader.blocks: 512 KB of float32 stereo, so a block is still in the
# core's cache when the caller reads it back.
BLOCK_FRAMES = 65536


class FlacReader:
    """An open FLAC blob (any buffer), decoded by dr_flac: `with FlacReader(blob) as flac: flac.read()`.

    dr_flac (through miniaudio's bindings) reads the bytes in place and writes straight into
    numpy arrays, with no Python read callbacks, so threads decode in parallel; it is about a
    quarter faster than libsndfile (benchmarks/features.py). It skips a frame whose CRC fails and
    stops at a truncation without an error, so the decoded length is checked against the length
    STREAMINFO declares.
    """

    def __init__(self, data: FlacBytes) -> None:
        self.data = data

    def __enter__(self) -> FlacReader:
        self.source = miniaudio.ffi.from_buffer(self.data)
        self.flac = miniaudio.lib.ma_dr_flac_open_memory(self.source, len(self.source), miniaudio.ffi.NULL)
        if self.flac == miniaudio.ffi.NULL:
            miniaudio.ffi.release(self.source)
            raise AudioError("decode", "corrupt FLAC blob: no readable FLAC stream header")
        self.frames, self.rate, self.channels = self.flac.totalPCMFrameCount, self.flac.sampleRate, self.flac.channels
        try:
            if self.frames == 0:
                raise AudioError("decode", "corrupt FLAC blob: STREAMINFO declares no length")
            if self.frames > MAX_FRAMES_PER_BYTE * len(self.source):
                raise AudioError("decode", f"corrupt FLAC blob: STREAMINFO declares {self.frames} frames, more "
                                           f"than {len(self.source)} bytes of FLAC can hold")  # fmt: skip
        except AudioError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        miniaudio.lib.ma_dr_flac_close(self.flac)
        miniaudio.ffi.release(self.source)

    def _read_into(self, pcm: np.ndarray) -> int:
        c_type, read = _READERS[pcm.dtype.name]
        with miniaudio.ffi.from_buffer(c_type, pcm, require_writable=True) as target:
            return getattr(miniaudio.lib, read)(self.flac, pcm.shape[0], target)

    def _check_length(self, decoded: int) -> None:
        """The stream held exactly the frames STREAMINFO declares (dr_flac reads on past them)."""
        if decoded != self.frames:
            raise AudioError("decode", f"corrupt FLAC blob: decoded {decoded} of the {self.frames} frames its "
                                       "STREAMINFO declares (truncated, or frames failed their CRC)")  # fmt: skip
        if self._read_into(np.empty((1, self.channels), np.float32)):
            raise AudioError("decode", f"corrupt FLAC blob: holds more than the {self.frames} frames its "
                                       "STREAMINFO declares")  # fmt: skip

    def read(self, dtype: str = "float32") -> np.ndarray:
        """Every frame: frames x channels, int16 or float32."""
        pcm = np.empty((self.frames, self.channels), dtype)
        self._check_length(self._read_into(pcm))
        return pcm

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """Every frame as float32 blocks of up to `frames` x channels, in one buffer that each block
        overwrites: for a pass over a long song that stays in the cache instead of memory."""
        buffer = np.empty((min(frames, self.frames), self.channels), np.float32)
        decoded = 0
        while decoded < self.frames:
            n = self._read_into(buffer[: self.frames - decoded])
            if n == 0:
                break
            decoded += n
            yield buffer[:n]
        self._check_length(decoded)


def decode_flac(data: FlacBytes, dtype: str = "float32") -> tuple[np.ndarray, int]:
    """FLAC blob -> (samples frames x channels as int16 or float32, sample rate)."""
    with FlacReader(data) as flac:
        return flac.read(dtype), flac.rate
