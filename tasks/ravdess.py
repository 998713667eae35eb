"""Acquire RAVDESS (Livingstone & Russo 2018): the official zip into the raw clip store."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.archive import extract
from tasks.audio import file_to_flac
from tasks.config import AcquireRavdessConfig
from tasks.fetch import fetch, sha256_file
from tasks.progress import Tally
from tasks.storage import (
    Clip,
    Failure,
    RawStore,
    check_failure_share,
    fill_store,
    shard_stamp,
    store_metrics,
    write_json,
)

log = logging.getLogger("tasks")

MODALITIES = {"01": "audio-video", "02": "video", "03": "audio"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}  # fmt: skip
SONG_EMOTIONS = {"01", "02", "03", "04", "05", "06"}
INTENSITIES = {"01": "normal", "02": "strong"}
NAME_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")

META_SCHEMA = pa.schema(
    [
        ("modality", pa.string()),
        ("vocal_channel", pa.string()),
        ("emotion", pa.string()),
        ("intensity", pa.string()),
        ("statement", pa.int8()),
        ("repetition", pa.int8()),
        ("actor", pa.int8()),
        ("gender", pa.string()),
    ]
)


class RavdessNameError(ValueError):
    """A file name that is not a valid RAVDESS identifier."""


@dataclass(frozen=True)
class RavdessName:
    modality: str
    vocal_channel: str
    emotion: str
    intensity: str
    statement: int
    repetition: int
    actor: int
    gender: str


def _field(table: dict[str, str], code: str, what: str, stem: str) -> str:
    if code not in table:
        raise RavdessNameError(f"{stem}: {what} code {code} is not one of {sorted(table)}")
    return table[code]


def parse_name(stem: str) -> RavdessName:
    """Parse `MM-VV-EE-II-SS-RR-AA` strictly; every field is checked against the official codes."""
    match = NAME_RE.match(stem)
    if not match:
        raise RavdessNameError(f"{stem}: not of the form MM-VV-EE-II-SS-RR-AA (seven two-digit fields)")
    mod, voc, emo, inten, stmt, rep, actor = match.groups()
    vocal = _field(VOCAL_CHANNELS, voc, "vocal channel", stem)
    if vocal == "song" and emo not in SONG_EMOTIONS:
        raise RavdessNameError(f"{stem}: emotion code {emo} does not exist for song")
    if emo == "01" and inten == "02":
        raise RavdessNameError(f"{stem}: neutral has no strong intensity")
    for code, what in ((stmt, "statement"), (rep, "repetition")):
        if code not in ("01", "02"):
            raise RavdessNameError(f"{stem}: {what} code {code} is not 01 or 02")
    if not 1 <= int(actor) <= 24:
        raise RavdessNameError(f"{stem}: actor {actor} is outside 01-24")
    return RavdessName(
        modality=_field(MODALITIES, mod, "modality", stem),
        vocal_channel=vocal,
        emotion=_field(EMOTIONS, emo, "emotion", stem),
        intensity=_field(INTENSITIES, inten, "intensity", stem),
        statement=int(stmt),
        repetition=int(rep),
        actor=int(actor),
        gender="male" if int(actor) % 2 else "female",
    )


def scan_files(root: Path) -> tuple[dict[str, Path], dict[str, RavdessName], list[Failure]]:
    """Every audio file under root, parsed; files whose names do not parse become failures."""
    paths, names, failures = {}, {}, []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".wav", ".flac"):
            continue
        rel = path.relative_to(root).as_posix()
        try:
            name = parse_name(path.stem)
            folder = re.fullmatch(r"Actor_(\d\d)", path.parent.name)
            if folder and int(folder.group(1)) != name.actor:
                raise RavdessNameError(f"{path.stem}: actor {name.actor:02d} filed under {path.parent.name}")
            if path.stem in names:
                raise RavdessNameError(f"{path.stem}: duplicate of {paths[path.stem].relative_to(root)}")
        except RavdessNameError as exc:
            failures.append(Failure(rel, rel, "parse", "bad_name", str(exc)))
            continue
        paths[path.stem], names[path.stem] = path, name
    return paths, names, failures


def load_clip(stem: str, path: Path, name: RavdessName) -> Clip:
    return Clip(id=stem, flac=file_to_flac(path), labels=[name.emotion], source=path.name, meta=asdict(name))


def acquire_ravdess(cfg: AcquireRavdessConfig, root: Path) -> dict[str, Any]:
    """Download, extract, parse and store the configured RAVDESS emotions."""
    archive = fetch(cfg.download, root)
    extracted = extract(archive, (root / cfg.download.cache_dir / f"ravdess-{sha256_file(archive)[:16]}"), cfg.extract)
    paths, names, failures = scan_files(extracted)
    wanted = {s for s, n in names.items() if n.vocal_channel == cfg.vocal_channel and n.emotion in cfg.emotions}
    log.info("ravdess: %d files parsed, %d kept, %d unparseable", len(names), len(wanted), len(failures))

    shaping = cfg.model_dump(mode="json", exclude={"download", "extract", "store"})
    store = RawStore(root / cfg.store.out_dir, "ravdess", META_SCHEMA, shard_stamp(shaping, __file__))
    store.write_failures("parse", failures)
    tally = Tally("acquire_ravdess")
    tally.add("failed", len(failures), reason="bad_name" if failures else None)
    manifest, failed = fill_store(
        store,
        {s: paths[s].relative_to(extracted).as_posix() for s in wanted},
        lambda s, _src: load_clip(s, paths[s], names[s]),
        cfg.store.shard_rows,
        "acquire_ravdess",
        tally,
    )
    metrics = store_metrics(manifest, failed, n_filtered=len(names) - len(wanted))
    metrics["actors"] = len(set(manifest.column("actor").to_pylist()))
    write_json(metrics, root / cfg.store.metrics_file)
    log.info(tally.summary())
    check_failure_share(failed.num_rows, len(wanted) + len(failures), cfg.store.max_failure_share, "acquire_ravdess")
    return metrics
