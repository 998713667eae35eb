"""What a prediction reads: audio files, folders of them, URLs, and clips of a raw clip store, each decoded to
the 16-bit samples the acquire stages would store (tasks.audio.read_pcm), or a clear error naming it."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import requests

from tasks.audio import AudioError, decode_flac, read_pcm
from tasks.config import PredictConfig
from tasks.errors import PipelineError
from tasks.fetch import redact, redact_text
from tasks.storage import MANIFEST, read_store

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".aiff", ".aif", ".webm"}
Audio = tuple[np.ndarray, int]  # float32 frames x channels, and their rate
RAW_PREFIX = "raw:"  # raw:<dataset>[/<clip id>] names clips of the raw clip store under predict.raw_dir


class InputError(PipelineError):
    """A PATH argument that names nothing to predict; the message names it."""


@dataclass(frozen=True)
class Item:
    """One thing to predict: a file, a URL, or a clip (`raw:<dataset>/<id>`) of a raw clip store."""

    name: str  # as the user gave it, or found it in a folder

    @property
    def is_url(self) -> bool:
        return urlparse(self.name).scheme in ("http", "https")

    @property
    def is_raw(self) -> bool:
        return self.name.startswith(RAW_PREFIX)


def expand(paths: list[str], raw_dir: Path | None = None) -> list[Item]:
    """Files and URLs as given, folders as their audio files (recursively, sorted), `raw:<dataset>` as its clips.
    A path that does not exist is an error before anything runs: a typo should not cost a whole batch."""
    items: list[Item] = []
    for text in paths:
        item = Item(text)
        if item.is_url:
            items.append(item)
        elif item.is_raw:
            items += raw_items(text, raw_dir)
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise InputError(f"{text}: a folder with no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
            items += [Item(str(p)) for p in found]
        elif Path(text).exists():
            items.append(item)
        else:
            raise InputError(f"{text}: no such file, folder or URL")
    return items


def raw_items(text: str, raw_dir: Path | None) -> list[Item]:
    dataset, _, clip = text.removeprefix(RAW_PREFIX).partition("/")
    if raw_dir is None or not (raw_dir / dataset / MANIFEST).exists():
        raise InputError(f"{text}: no raw clip store {dataset!r} under {raw_dir} (run acquire_{dataset} first)")
    with read_store(raw_dir / dataset) as store:
        ids = store.manifest.column("id").to_pylist()
    if clip:
        if clip not in ids:
            raise InputError(f"{text}: the {dataset} store holds no clip {clip!r}")
        return [Item(text)]
    return [Item(f"{RAW_PREFIX}{dataset}/{i}") for i in ids]


@dataclass(frozen=True)
class Limits:
    """What one input may cost: bytes on disk (or downloaded), seconds of audio (memory: ~40 MB a minute of
    44.1 kHz stereo while it is decoded), and the download's read timeout."""

    max_bytes: int
    max_seconds: float
    timeout_s: float

    @classmethod
    def of(cls, cfg: PredictConfig) -> Limits:
        return cls(int(cfg.max_file_mb * 1e6), cfg.max_seconds, cfg.url_timeout_s)


def load(item: Item, limits: Limits, raw_dir: Path | None) -> Audio:
    """The item's samples at its own rate and channels; AudioError names what is wrong with it."""
    if item.is_raw:
        return raw_audio(item, raw_dir, limits)
    if item.is_url:
        with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
            return read_pcm(download(item.name, Path(tmp), limits), limits.max_seconds)
    path = Path(item.name)
    if not path.is_file():
        raise AudioError("missing", f"{item.name} is not a file")
    check_size(path, limits)
    return read_pcm(path, limits.max_seconds)


def check_size(path: Path, limits: Limits) -> None:
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise AudioError("too_large", f"{size / 1e6:.1f} MB is more than predict.max_file_mb "
                                      f"({limits.max_bytes / 1e6:g} MB)")  # fmt: skip


def download(url: str, folder: Path, limits: Limits) -> Path:
    """The URL's body in `folder`, refused past max_bytes whatever Content-Length claims. The local name keeps
    only the URL's suffix, so a hostile name (../../etc) never becomes a path."""
    suffix = Path(unquote(urlparse(url).path)).suffix.lower()
    target = folder / f"download{suffix if suffix in AUDIO_SUFFIXES else ''}"
    try:
        with requests.get(url, stream=True, timeout=limits.timeout_s) as response:
            response.raise_for_status()
            got = 0
            with target.open("wb") as out:
                for chunk in response.iter_content(1 << 16):
                    got += len(chunk)
                    if got > limits.max_bytes:
                        raise AudioError("too_large", f"{redact(url)}: more than predict.max_file_mb "
                                                      f"({limits.max_bytes / 1e6:g} MB)")  # fmt: skip
                    out.write(chunk)
    except requests.RequestException as exc:
        raise AudioError("download", f"{redact(url)}: {exc.__class__.__name__}: "
                                     f"{redact_text(str(exc))[:200]}") from None  # fmt: skip
    return target


def raw_audio(item: Item, raw_dir: Path | None, limits: Limits) -> Audio:
    """A raw store's clip, checked against the manifest's sha256 as the features stages check it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    dataset, _, clip = item.name.removeprefix(RAW_PREFIX).partition("/")
    if raw_dir is None:
        raise AudioError("missing", f"{item.name}: no predict.raw_dir")
    with read_store(raw_dir / dataset) as store:
        manifest = store.manifest
        found = manifest.filter(pc.equal(manifest.column("id"), clip))
        if found.num_rows == 0:
            raise AudioError("missing", f"{item.name}: the {dataset} store holds no such clip")
        shard = pq.read_table(store.shard_file(found.column("shard")[0].as_py()), columns=["id", "audio"],
                              filters=[("id", "=", clip)])  # fmt: skip
        blob = shard.column("audio")[0].as_py()
    if hashlib.sha256(blob).hexdigest() != found.column("sha256")[0].as_py():
        raise AudioError("checksum", f"{item.name}: audio bytes do not match the manifest's sha256")
    pcm, rate = decode_flac(blob)
    if len(pcm) > limits.max_seconds * rate:
        raise AudioError("too_long", f"{item.name}: {len(pcm) / rate:.0f} s is more than predict.max_seconds "
                                     f"({limits.max_seconds:g} s)")  # fmt: skip
    return pcm, rate


def loaders(items: list[Item], limits: Limits, raw_dir: Path | None) -> Iterator[tuple[str, Callable[[], Audio]]]:
    """Each item's name (a URL without its secrets) with what loads it (Predictor.predict runs them on its worker
    threads)."""
    for item in items:
        yield redact(item.name) if item.is_url else item.name, partial(load, item, limits, raw_dir)
