"""The clips a model is tested on, with their truth in the model's own vocabulary.

A model is tested on every partition (dataset x split) of the feature dataset it learned from:
- its own training partition gives only its validation clips (held out: for the actor splits, singers
  it never heard);
- other partitions (CAL500 songs, AudioSet eval) give every clip, their labels mapped into the model's
  vocabulary: CAL500 through its store's labels per training vocabulary, other datasets through
  evaluate.label_map. A clip with no label the model knows is set aside and counted.
Clips of the raw store that the features stage could not slice are "songs without slices": reported
with the features stage's reason, never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from tasks.config import EvaluateConfig
from tasks.evaluate.model import EvaluationError, TrainedModel
from tasks.features.dataset import FAILURES, read_metadata
from tasks.storage import MANIFEST, read_store
from tasks.train.data import ClipData, read_partition

HELD_OUT = "held_out"


@dataclass
class TestSet:
    __test__ = False  # not a pytest class

    key: str  # <dataset>_<split>, or <dataset>_held_out
    dataset: str
    title: str
    data: ClipData  # the clips that have rows; clip_tags as stored
    truth: np.ndarray  # clips x model classes: the clip carries that label
    strength: np.ndarray  # clips x model classes: annotated strength in [0, 1]; NaN where none is annotated
    without_slices: list[dict[str, str]] = field(default_factory=list)  # clip ids and why they have no rows
    without_shared_label: list[str] = field(default_factory=list)  # clips none of whose labels the model knows


def partitions(features_dir: Path) -> list[tuple[str, str]]:
    """(dataset, split) of every partition of a feature dataset."""
    found = []
    for folder in sorted(features_dir.glob("dataset=*/split=*")):
        if any(folder.glob("*.parquet")):
            found.append((folder.parent.name.removeprefix("dataset="), folder.name.removeprefix("split=")))
    return found


def build_test_sets(model: TrainedModel, cfg: EvaluateConfig, root: Path, features: str,
                    ) -> tuple[list[TestSet], dict[str, str], str]:  # fmt: skip
    """The model's test sets, the partitions skipped with the reason, and a note when the features changed."""
    features_dir = root / cfg.features[features]  # type: ignore[index]
    note = check_features(model, features_dir)
    card = model.card
    sets, skipped = [], {}
    for dataset, split in partitions(features_dir):
        own = dataset == card["dataset"]
        if own and split == "train":
            key, title = f"{dataset}_{HELD_OUT}", f"{dataset}: the model's held-out validation clips"
        else:
            key, title = f"{dataset}_{split}", f"{dataset} {split} clips"
        data = read_partition(features_dir, features, dataset, split, card["sequence_length"])
        data.classes = model.classes  # the test set speaks the model's vocabulary (its truth columns)
        if own and split == "train":
            data = held_out(data, card["val_clips"], str(features_dir))
        truth, strength, unknown = map_labels(model, data.clip_ids, data.clip_tags, dataset, cfg, root)
        if own and unknown:
            bad = sorted({t for c in unknown for t in data.clip_tags[data.clip_ids.index(c)]} - set(model.classes))
            raise EvaluationError(f"{model.source}: the {dataset} clips carry labels {bad} that the model's vocabulary "
                                  f"{model.classes} lacks (e.g. clip {unknown[0]}): the model was trained on another "
                                  "vocabulary; train it again or evaluate the model that matches")  # fmt: skip
        if not truth.any():
            skipped[key] = (f"no shared labels: the {dataset} labels {sorted({t for c in data.clip_tags for t in c})} "
                            f"map to none of {model.classes}")  # fmt: skip
            continue
        keep = truth.any(1)
        test = TestSet(key, dataset, title, take_clips(data, np.flatnonzero(keep)), truth[keep], strength[keep],
                       without_shared_label=[data.clip_ids[i] for i in np.flatnonzero(~keep)])  # fmt: skip
        if not (own and split == "train"):
            missing = clips_without_slices(root / cfg.raw_dir, features_dir, dataset, split, data)
            shared = map_labels(model, [m["clip_id"] for m in missing], [m.pop("tags") for m in missing], dataset,
                                cfg, root)[0].any(1)  # fmt: skip
            test.without_slices = [m for m, keep in zip(missing, shared, strict=True) if keep]
            test.without_shared_label += [m["clip_id"] for m, keep in zip(missing, shared, strict=True) if not keep]
        sets.append(test)
    if not sets:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or f"{features_dir} has no partitions"
        raise EvaluationError(f"{model.source}: no test set to evaluate on ({why})")
    return sets, skipped, note


def check_features(model: TrainedModel, features_dir: Path) -> str:
    """The features must come from the front end the model learned from; other changes (more datasets, another
    slicing) are noted, since the held-out clips are checked one by one."""
    try:
        metadata = read_metadata(features_dir)
    except Exception as exc:
        raise EvaluationError(f"{model.source}: {exc}") from None
    learned = model.card["features"].get("frontend")
    if learned and metadata.get("frontend") != learned:
        raise EvaluationError(f"{model.source} learned from features with front end {learned}, but {features_dir} "
                              f"holds {metadata.get('frontend')}: rerun the features or train again")  # fmt: skip
    learned_hash = model.card["features"].get("params_hash")
    if learned_hash and metadata.get("params_hash") != learned_hash:
        return (
            f"the features' parameters changed since training (params hash {learned_hash} then, "
            f"{metadata.get('params_hash')} now): same front end, but datasets or slicing may differ"
        )
    return ""


def held_out(data: ClipData, val_clips: list[str], where: str) -> ClipData:
    position = {c: i for i, c in enumerate(data.clip_ids)}
    missing = [c for c in val_clips if c not in position]
    if missing:
        raise EvaluationError(f"the model's validation clips {missing[:5]} ({len(missing)} of {len(val_clips)}) are "
                              f"not in {where}: the features changed since training; train again")  # fmt: skip
    if not val_clips:
        raise EvaluationError(f"the model's card lists no validation clips (empty test set) in {where}")
    return take_clips(data, np.asarray(sorted(position[c] for c in val_clips)))


def take_clips(data: ClipData, clips: np.ndarray) -> ClipData:
    """The given clips (indices) and their rows, renumbered."""
    rows = data.rows_of(clips)
    renumber = np.full(data.n_clips, -1, np.int64)
    renumber[clips] = np.arange(len(clips))
    index = torch.from_numpy(rows) if data.lengths is None else torch.from_numpy(clips)
    return ClipData(data.features, data.inputs[index], renumber[data.row_clip[rows]], data.real_share[rows],
                    None if data.lengths is None else data.lengths[clips], [data.clip_ids[i] for i in clips],
                    data.clip_label[clips], data.clip_actor[clips], data.classes, data.metadata,
                    [data.clip_tags[i] for i in clips], data.row_start[rows], data.row_end[rows])  # fmt: skip


def map_labels(model: TrainedModel, clip_ids: list[str], clip_tags: list[list[str]], dataset: str,
               cfg: EvaluateConfig, root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """Truth and strength (clips x model classes), and the clips carrying a label the model does not know."""
    classes, vocabulary = model.classes, model.card["dataset"]
    n = len(clip_ids)
    strength = np.full((n, len(classes)), np.nan)
    if dataset == "cal500":
        tags, strength = cal500_labels(root / cfg.raw_dir / "cal500", clip_ids, vocabulary, classes)
    else:
        mapping = cfg.label_map.get(dataset, {}).get(vocabulary, {}) if dataset != vocabulary else {}
        tags = [[mapping.get(t, t) for t in clip] for clip in clip_tags]
    position = {c: i for i, c in enumerate(classes)}
    truth = np.zeros((n, len(classes)), bool)
    unknown = []
    for c, labels in enumerate(tags):
        for label in labels:
            if label in position:
                truth[c, position[label]] = True
            elif clip_ids[c] not in unknown:
                unknown.append(clip_ids[c])
    return truth, strength, unknown


def cal500_labels(store: Path, clip_ids: list[str], vocabulary: str, classes: list[str],
                  ) -> tuple[list[list[str]], np.ndarray]:  # fmt: skip
    """CAL500 songs' labels in a training vocabulary, and each label's soft annotation (the strongest of the
    tags that assert it): the rank-aware score's strength. A label no CAL500 tag asserts (RAVDESS neutral,
    fearful) has strength 0: a song can never carry it."""
    manifest_path, mapping_path = store / MANIFEST, store / "vocabularies.json"
    for path in (manifest_path, mapping_path, store / "vocab.txt"):
        if not path.exists():
            raise EvaluationError(f"CAL500 test songs need the raw store's {path} (rerun acquire_cal500)")
    mapping = json.loads(mapping_path.read_text())
    column = f"labels_{vocabulary}"
    with read_store(store) as held:
        manifest = held.manifest
    if column not in manifest.column_names or vocabulary not in mapping:
        raise EvaluationError(f"{manifest_path} has no {column} column: add a {vocabulary!r} entry to "
                              "acquire_cal500.vocabularies and rerun acquire_cal500")  # fmt: skip
    rows = {clip: i for i, clip in enumerate(manifest.column("id").to_pylist())}
    labels, soft = manifest.column(column).to_pylist(), manifest.column("tags_soft").to_pylist()
    tag_index = {t: i for i, t in enumerate((store / "vocab.txt").read_text().split())}
    tags, strength = [], np.full((len(clip_ids), len(classes)), np.nan)
    for c, clip in enumerate(clip_ids):
        if clip not in rows:
            raise EvaluationError(f"CAL500 song {clip} has features but no row in {manifest_path}: rerun the features")
        r = rows[clip]
        tags.append(list(labels[r]))
        for k, label in enumerate(classes):
            asserting = [tag_index[t] for t in mapping[vocabulary].get(label, []) if t in tag_index]
            strength[c, k] = max((soft[r][i] for i in asserting), default=0.0)
    return tags, strength


def clips_without_slices(raw_dir: Path, features_dir: Path, dataset: str, split: str,
                         data: ClipData) -> list[dict[str, Any]]:  # fmt: skip
    """Clips of the raw store's partition that have no feature rows: id, the features stage's reason, and the
    labels the store gives them (`tags`)."""
    if not (raw_dir / dataset / MANIFEST).exists():
        return []
    with read_store(raw_dir / dataset) as store:
        manifest = store.manifest
    ids, labels = manifest.column("id").to_pylist(), manifest.column("labels").to_pylist()
    splits = manifest.column("split").to_pylist() if "split" in manifest.column_names else [split] * len(ids)
    present = set(data.clip_ids)
    reasons: dict[str, str] = {}
    failures_path = features_dir / FAILURES
    if failures_path.exists():
        failures = pq.read_table(failures_path).to_pylist()
        reasons = {f["id"]: f"{f['reason']}: {f['message']}" for f in failures}
    return [
        {"clip_id": i, "tags": list(tags), "reason": reasons.get(i, "no feature rows (nor a features failure)")}
        for i, tags, s in zip(ids, labels, splits, strict=True)
        if s == split and i not in present
    ]
