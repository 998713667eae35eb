"""Stage `select_audioset`: which AudioSet segments to download, as one deterministic Parquet table.

Classes are chosen by display name through the ontology. Test clips come first (from eval),
then training clips from the train lists minus every YouTube id already in the test set, so
the splits are disjoint by video. Per class and split a seeded draw fills the quota.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.audioset.lists import (
    MUSIC_MOOD,
    BadRow,
    Ontology,
    Segment,
    label_name,
    read_clip_list,
    read_ontology,
    read_segments,
    segment_id,
)
from tasks.config import ConfigError, SelectAudiosetConfig
from tasks.fetch import fetch
from tasks.storage import atomic_write_table, write_json

log = logging.getLogger("tasks")

SPLITS = ("test", "train")  # test first: training clips must avoid its videos
SELECTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("ytid", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("split", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("class_ids", pa.list_(pa.string())),
        ("source", pa.string()),
    ]
)


@dataclass(frozen=True)
class Candidate:
    id: str
    ytid: str
    start: float
    end: float
    class_ids: tuple[str, ...]  # selected classes only, sorted
    sources: tuple[str, ...]


def resolve_classes(ontology: Ontology, names: list[str]) -> dict[str, str]:
    """{class id: label name} for the configured display names; unknown names stop with the choices."""
    wanted, unknown = {}, []
    for name in names:
        cls = ontology.find(name)
        if cls is None:
            unknown.append(name)
        else:
            wanted[cls.id] = label_name(cls.name)
    if unknown:
        moods = ", ".join(c.name for c in ontology.children(MUSIC_MOOD)) or "none found"
        raise ConfigError(f"select_audioset.classes: {unknown} not in the ontology; its Music mood classes: {moods}")
    return wanted


def candidates(
    segments: list[Segment], wanted: dict[str, str], policy: str
) -> tuple[dict[str, Candidate], int]:  # fmt: skip
    """Segments carrying a wanted class, merged per segment (a list may repeat one with another label).

    Returns the candidates by id and how many segments the multi-label policy dropped.
    """
    merged: dict[str, tuple[Segment, set[str], set[str]]] = {}
    for seg in segments:
        sid = segment_id(seg.ytid, seg.start)
        _, classes, sources = merged.setdefault(sid, (seg, set(), set()))
        classes.update(c for c in seg.labels if c in wanted)
        sources.add(seg.source)
    out, dropped = {}, 0
    for sid, (seg, classes, sources) in merged.items():
        if not classes:
            continue
        if len(classes) > 1 and policy == "drop":
            dropped += 1
            continue
        out[sid] = Candidate(sid, seg.ytid, seg.start, seg.end, tuple(sorted(classes)), tuple(sorted(sources)))
    return out, dropped


def _rng(seed: int, split: str, class_id: str) -> np.random.Generator:
    """One generator per (split, class), so changing one quota leaves the other draws as they were."""
    key = int.from_bytes(hashlib.sha256(f"{split}\0{class_id}".encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def draw(pool: dict[str, Candidate], quota: int | None, seed: int, split: str, wanted: dict[str, str]) -> list[str]:
    """Up to `quota` ids per class, a seeded draw from the sorted candidates; sorted ids."""
    chosen: set[str] = set()
    for class_id in sorted(wanted):
        ids = sorted(i for i, c in pool.items() if class_id in c.class_ids)
        if quota is not None and len(ids) > quota:
            order = _rng(seed, split, class_id).permutation(len(ids))[:quota]
            ids = [ids[i] for i in sorted(order)]
        chosen.update(ids)
    return sorted(chosen)


def _load(cfg: SelectAudiosetConfig, root: Path, ontology: Ontology) -> tuple[dict[str, list[Segment]], list[BadRow]]:
    per_split: dict[str, list[Segment]] = {}
    bad: list[BadRow] = []
    for split in SPLITS:
        segments: list[Segment] = []
        if cfg.source == "clip_lists":
            url = cfg.clip_lists[split].url
            found, wrong = read_clip_list(fetch(cfg.clip_lists[split], root), Path(url).name, ontology)
            segments += found
            bad += wrong
        else:
            for name in cfg.train_from if split == "train" else cfg.test_from:
                found, wrong = read_segments(fetch(cfg.segments[name], root), name)
                segments += found
                bad += wrong
        per_split[split] = segments
    return per_split, bad


def select(cfg: SelectAudiosetConfig, root: Path) -> tuple[pa.Table, dict[str, Any]]:
    ontology = read_ontology(fetch(cfg.ontology, root))
    wanted = resolve_classes(ontology, cfg.classes)
    per_split, bad = _load(cfg, root, ontology)
    for row in bad[:10]:
        log.warning("select_audioset: %s line %d skipped: %s", row.source, row.line, row.reason)
    rows: list[dict[str, Any]] = []
    test_videos: set[str] = set()
    stats: dict[str, Any] = {"candidates": {}, "dropped_multi_label": {}, "dropped_overlap": 0}
    for split in SPLITS:
        pool, dropped = candidates(per_split[split], wanted, cfg.multi_label)
        if split == "train":
            overlap = {i for i, c in pool.items() if c.ytid in test_videos}
            stats["dropped_overlap"] = len(overlap)
            pool = {i: c for i, c in pool.items() if i not in overlap}
        stats["candidates"][split] = _per_label(pool.values(), wanted)
        stats["dropped_multi_label"][split] = dropped
        for sid in draw(pool, cfg.quota.get(split), cfg.seed, split, wanted):
            c = pool[sid]
            if split == "test":
                test_videos.add(c.ytid)
            rows.append({"id": sid, "ytid": c.ytid, "start_s": c.start, "end_s": c.end, "split": split,
                         "labels": sorted(wanted[k] for k in c.class_ids), "class_ids": list(c.class_ids),
                         "source": ",".join(c.sources)})  # fmt: skip
    rows.sort(key=lambda r: (r["split"], r["id"]))
    table = pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA)
    per_split_labels = {
        split: dict(sorted(Counter(label for r in rows if r["split"] == split for label in r["labels"]).items()))
        for split in sorted(SPLITS)
    }
    bad_rows = Counter(b.source for b in bad)
    metrics = {"selected": len(rows), "per_split": per_split_labels, "classes": dict(sorted(wanted.items())),
               "bad_rows": dict(sorted(bad_rows.items())), **stats}  # fmt: skip
    return table, metrics


def _per_label(pool: Any, wanted: dict[str, str]) -> dict[str, int]:
    counts: defaultdict[str, int] = defaultdict(int)
    for c in pool:
        for class_id in c.class_ids:
            counts[wanted[class_id]] += 1
    return dict(sorted(counts.items()))


def select_audioset(cfg: SelectAudiosetConfig, root: Path) -> dict[str, Any]:
    """Write the selection table and its counts per split and class."""
    table, metrics = select(cfg, root)
    atomic_write_table(table, root / cfg.out)
    write_json(metrics, root / cfg.metrics_file)
    summary = "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for s, c in metrics["per_split"].items())
    log.info("select_audioset: %d segments selected (%s); dropped %s multi-label, %d overlapping test videos",
             metrics["selected"], summary, metrics["dropped_multi_label"], metrics["dropped_overlap"])  # fmt: skip
    return metrics


def read_selection(path: Path) -> pa.Table:
    if not path.exists():
        raise ConfigError(f"selection {path} does not exist; run the select_audioset stage first")
    return pq.read_table(path)
