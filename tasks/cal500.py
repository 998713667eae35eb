"""Acquire CAL500 (Turnbull et al.): songs, all 174 tags, and mood labels per training vocabulary."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.archive import extract
from tasks.audio import AudioError, file_to_flac
from tasks.config import AcquireCal500Config
from tasks.fetch import fetch, sha256_file
from tasks.progress import Tally
from tasks.storage import (
    Clip,
    Failure,
    RawStore,
    StageFailed,
    atomic_write_text,
    check_failure_share,
    fill_store,
    shard_stamp,
    store_metrics,
    write_json,
)

log = logging.getLogger("tasks")

# A song name is used to build a file path: only the official `artist-title` alphabet passes.
SONG_NAME_RE = re.compile(r"^[A-Za-z0-9_.()'&,+!]+(-[A-Za-z0-9_.()'&,+!]+)+$")
NOT_PREFIX = "NOT-"


@dataclass(frozen=True)
class Cal500Annotations:
    songs: list[str]
    vocab: list[str]
    hard: np.ndarray  # songs x tags, 0/1
    soft: np.ndarray  # songs x tags, [0, 1]


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _matrix(path: Path, n_tags: int) -> np.ndarray:
    rows = []
    for lineno, line in enumerate(_read_lines(path), 1):
        values = line.replace(" ", "").split(",")
        if len(values) != n_tags:
            raise StageFailed(f"{path.name} line {lineno}: {len(values)} values, expected {n_tags} (one per tag)")
        try:
            rows.append([float(v) for v in values])
        except ValueError as exc:
            raise StageFailed(f"{path.name} line {lineno}: {exc}") from None
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), n_tags)


def find_dataset_root(extracted: Path) -> Path:
    """The folder holding songNames.txt: the archive's top level or one folder down."""
    for candidate in [extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())]:
        if (candidate / "songNames.txt").is_file():
            return candidate
    raise StageFailed(f"{extracted.name}: no songNames.txt at the top of the CAL500 archive")


def read_annotations(folder: Path) -> Cal500Annotations:
    """Parse the official songNames / vocab / hard / soft annotation files; checks they agree."""
    for name in ("songNames.txt", "vocab.txt", "hardAnnotations.txt", "softAnnotations.txt"):
        if not (folder / name).is_file():
            raise StageFailed(f"CAL500 archive lacks {name}")
    songs, vocab = _read_lines(folder / "songNames.txt"), _read_lines(folder / "vocab.txt")
    hard = _matrix(folder / "hardAnnotations.txt", len(vocab))
    soft = _matrix(folder / "softAnnotations.txt", len(vocab))
    for what, matrix in (("hardAnnotations.txt", hard), ("softAnnotations.txt", soft)):
        if matrix.shape[0] != len(songs):
            raise StageFailed(f"{what}: {matrix.shape[0]} rows but songNames.txt lists {len(songs)} songs")
    if not np.isin(hard, (0.0, 1.0)).all():
        raise StageFailed("hardAnnotations.txt: values other than 0 and 1")
    return Cal500Annotations(songs, vocab, hard, soft)


def song_labels(positive: set[str], vocabulary: dict[str, list[str]], not_rule: str) -> list[str]:
    """Labels of one vocabulary asserted by a song's positive tags.

    With not_rule 'veto', a label is dropped when a NOT-Emotion tag of one of its tags is also
    positive: annotators disagreed, so the song says nothing clear about that label.
    """
    labels = []
    for label, tags in vocabulary.items():
        if not any(t in positive for t in tags):
            continue
        if not_rule == "veto" and any(NOT_PREFIX + t in positive for t in tags):
            continue
        labels.append(label)
    return sorted(labels)


def positive_tags(ann: Cal500Annotations, index: int, cfg: AcquireCal500Config) -> set[str]:
    row = ann.hard[index] > 0.5 if cfg.annotation == "hard" else ann.soft[index] >= cfg.soft_threshold
    return {tag for tag, on in zip(ann.vocab, row, strict=True) if on}


def meta_schema(cfg: AcquireCal500Config) -> pa.Schema:
    fields = [("artist", pa.string()), ("title", pa.string()), ("song_index", pa.int32()),
              ("tags_hard", pa.list_(pa.int8())), ("tags_soft", pa.list_(pa.float32()))]  # fmt: skip
    fields += [(f"labels_{name}", pa.list_(pa.string())) for name in sorted(cfg.vocabularies)]
    return pa.schema(fields)


def select_songs(ann: Cal500Annotations, cfg: AcquireCal500Config) -> tuple[dict[str, dict[str, Any]], list[Failure]]:
    """Songs kept by the spectrogram study's filter, with their metadata; bad names are failures."""
    kept, failures = {}, []
    for index, song in enumerate(ann.songs):
        if not SONG_NAME_RE.match(song) or ".." in song:
            failures.append(Failure(song, "songNames.txt", "parse", "bad_name",
                                    f"song name {song!r} (line {index + 1}) is not an artist-title name"))  # fmt: skip
            continue
        positive = positive_tags(ann, index, cfg)
        per_vocab = {name: song_labels(positive, tags, cfg.not_emotion_rule) for name, tags in cfg.vocabularies.items()}
        labels = per_vocab[cfg.filter_vocabulary]
        if not labels or (cfg.keep == "single" and len(labels) > 1):
            continue
        artist, _, title = song.partition("-")
        kept[song] = {
            "labels": labels,
            "artist": artist,
            "title": title,
            "song_index": index,
            "tags_hard": ann.hard[index].astype(np.int8).tolist(),
            "tags_soft": ann.soft[index].tolist(),
            **{f"labels_{name}": value for name, value in per_vocab.items()},
        }
    return kept, failures


def load_song(song: str, folder: Path, meta: dict[str, Any]) -> Clip:
    path = folder / "mp3" / f"{song}.mp3"
    if not path.is_file():
        raise AudioError("missing_file", f"{song}: mp3/{song}.mp3 is not in the archive")
    meta = dict(meta)
    return Clip(id=song, flac=file_to_flac(path), labels=meta.pop("labels"), source=f"mp3/{song}.mp3", meta=meta)


def acquire_cal500(cfg: AcquireCal500Config, root: Path) -> dict[str, Any]:
    """Download and parse CAL500, keep songs whose mood labels meet the training label set."""
    archive = fetch(cfg.download, root)
    extracted = extract(archive, root / cfg.download.cache_dir / f"cal500-{sha256_file(archive)[:16]}", cfg.extract)
    folder = find_dataset_root(extracted)
    ann = read_annotations(folder)
    kept, failures = select_songs(ann, cfg)
    log.info("cal500: %d songs annotated, %d kept by the %r filter", len(ann.songs), len(kept), cfg.filter_vocabulary)

    # labels and metadata follow every parameter but where the archive comes from and how shards are cut
    shaping = cfg.model_dump(mode="json", exclude={"download", "extract", "store"})
    store = RawStore(root / cfg.store.out_dir, "cal500", meta_schema(cfg), shard_stamp(shaping, __file__))
    store.write_failures("parse", failures)
    atomic_write_text("\n".join(ann.vocab) + "\n", store.root / "vocab.txt")
    write_json(cfg.vocabularies, store.root / "vocabularies.json")  # what each labels_<vocabulary> column means
    tally = Tally("acquire_cal500")
    tally.add("failed", len(failures), reason="bad_name" if failures else None)
    manifest, failed = fill_store(
        store,
        {song: f"mp3/{song}.mp3" for song in kept},
        lambda song, _src: load_song(song, folder, kept[song]),
        cfg.store.shard_rows,
        "acquire_cal500",
        tally,
    )
    metrics = store_metrics(manifest, failed, n_filtered=len(ann.songs) - len(kept) - len(failures))
    metrics["songs_annotated"] = len(ann.songs)
    write_json(metrics, root / cfg.store.metrics_file)
    log.info(tally.summary())
    check_failure_share(failed.num_rows, len(kept) + len(failures), cfg.store.max_failure_share, "acquire_cal500")
    return metrics
