"""Training data: a feature dataset grouped by clip, checked against the label vocabulary, split by group.

A clip's slices (and a singer's clips, for the actor splits) are always on one side of a split:
the split is drawn over clips or actors, and rows follow their clip.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import GroupKFold, StratifiedKFold, train_test_split

from tasks.config import SplitConfig
from tasks.errors import PipelineError
from tasks.features.dataset import open_table, read_metadata
from tasks.features.reader import tensor_column

COLUMNS = {"slices": "spectrogram", "vggish": "embedding"}


class TrainDataError(PipelineError):
    """The training data cannot give a meaningful model; the message names the item and the fix."""


@dataclass
class ClipData:
    """One dataset partition of a feature dataset as model inputs, grouped by clip.

    slices: one input row per slice (1 x bands x frames), `row_clip` maps rows to clips;
    vggish: one input row per clip (sequence_length x 128, zero-padded), `lengths` its real examples.
    `clip_label` indexes `classes` (load_clips checks it); `clip_tags` are the labels as stored.
    """

    features: str
    inputs: torch.Tensor
    row_clip: np.ndarray  # clip index of each input row
    real_share: np.ndarray  # share of each row that is real audio, not padding
    lengths: np.ndarray | None  # vggish: real examples per clip
    clip_ids: list[str]
    clip_label: np.ndarray  # class index of each clip (-1 until load_clips checks the labels)
    clip_actor: np.ndarray  # actor of each clip, -1 where unknown
    classes: list[str]
    metadata: dict[str, Any]
    clip_tags: list[list[str]]  # each clip's labels as the feature dataset holds them
    row_start: np.ndarray  # first sample of each row in its clip (slices; 0 for sequences)
    row_end: np.ndarray  # end sample of each row's real audio

    @property
    def n_clips(self) -> int:
        return len(self.clip_ids)

    def rows_of(self, clips: np.ndarray) -> np.ndarray:
        """Input rows of the given clips, in row order."""
        return np.flatnonzero(np.isin(self.row_clip, clips))


def read_partition(root: Path, features: str, dataset: str, split: str, sequence_length: int) -> ClipData:
    """Every row of one partition (dataset x split) of the feature dataset at `root`, whatever its labels."""
    if not (root / "_dataset.json").exists():
        raise TrainDataError(f"no feature dataset at {root}: run the features_{features} stage first")
    metadata = read_metadata(root)
    column = COLUMNS[features]
    table = open_table(root, dataset, split) if (root / f"dataset={dataset}").exists() else None
    if table is None or table.num_rows == 0:
        raise TrainDataError(f"{root} holds no rows for dataset={dataset} split={split}: check that "
                             f"features_{features}.datasets includes {dataset!r} and its clips were acquired")
    clip_ids, row_clip = np.unique(np.asarray(table.column("clip_id").to_pylist()), return_inverse=True)
    first = np.unique(row_clip, return_index=True)[1]
    labels = table.column("labels").to_pylist()
    actors = table.column("actor").to_pylist()
    clip_tags = [list(labels[r]) for r in first]
    clip_actor = np.asarray([-1 if actors[r] is None else actors[r] for r in first], np.int64)
    no_label = np.full(len(clip_ids), -1, np.int64)
    tensors = tensor_column(table, column)
    if features == "slices":
        hop = metadata["frontend"]["hop_length"]
        span = tensors.shape[-1] * hop
        start = table.column("start_sample").to_numpy()
        end = table.column("end_sample").to_numpy()
        return ClipData(features, tensors.unsqueeze(1), row_clip, (end - start) / span, None, list(clip_ids),
                        no_label, clip_actor, [], metadata, clip_tags, start, end)  # fmt: skip
    embeddings = dequantize(tensors, metadata)
    sequences = torch.zeros(len(clip_ids), sequence_length, embeddings.shape[-1])
    lengths = np.zeros(len(clip_ids), np.int64)
    index = table.column("index").to_numpy()
    keep = index < sequence_length
    sequences[row_clip[keep], index[keep]] = embeddings[torch.from_numpy(keep)]
    np.add.at(lengths, row_clip[keep], 1)
    clip_end = np.zeros(len(clip_ids), np.int64)
    np.maximum.at(clip_end, row_clip[keep], table.column("end_sample").to_numpy()[keep])
    return ClipData(features, sequences, np.arange(len(clip_ids)), np.minimum(lengths / sequence_length, 1.0),
                    lengths, list(clip_ids), no_label, clip_actor, [], metadata, clip_tags,
                    np.zeros(len(clip_ids), np.int64), clip_end)  # fmt: skip


def load_clips(root: Path, features: str, dataset: str, classes: list[str], sequence_length: int,
               split: str = "train") -> ClipData:  # fmt: skip
    """Rows of `dataset` (its `split` partition), each clip with exactly one label of `classes`."""
    data = read_partition(root, features, dataset, split, sequence_length)
    position = {c: i for i, c in enumerate(classes)}
    for c, clip_labels in enumerate(data.clip_tags):
        if len(clip_labels) != 1:
            raise TrainDataError(f"clip {data.clip_ids[c]} has labels {clip_labels}: training takes one label per "
                                 "clip (for AudioSet, select_audioset.multi_label: drop)")  # fmt: skip
        if clip_labels[0] not in position:
            raise TrainDataError(f"clip {data.clip_ids[c]} has label {clip_labels[0]!r}, which is not in "
                                 f"train.common.vocabularies.{dataset} {classes}")  # fmt: skip
        data.clip_label[c] = position[clip_labels[0]]
    data.classes = classes
    return data


def dequantize(embeddings: torch.Tensor, metadata: dict[str, Any]) -> torch.Tensor:
    """8-bit VGGish embeddings back to their clipped range, as the released features are used."""
    params = metadata["params"]
    if embeddings.dtype != torch.uint8:
        return embeddings.float()
    low, high = params["clip_range"]
    return embeddings.float() * ((high - low) / 255.0) + low


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # clip indices the model learns from
    val: np.ndarray  # held out: reported
    inner: np.ndarray  # held out of the training side: chooses the epoch and the search's set (may be empty)
    signature: str  # hash of the validation clips: models are compared only on the same one

    @property
    def monitor(self) -> np.ndarray:
        """The clips that choose: the inner ones, or the validation side when there are none."""
        return self.inner if len(self.inner) else self.val

    @property
    def learn(self) -> np.ndarray:
        """Every clip outside the validation side (for models that choose nothing)."""
        return np.sort(np.concatenate([self.train, self.inner]))

    def describe(self) -> str:
        inner = f" ({len(self.inner)} of them choose the epoch)" if len(self.inner) else ""
        return f"{len(self.train) + len(self.inner)} train{inner} / {len(self.val)} validation clips"


def random_clips(clips: np.ndarray, labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded share of the clips, stratified by label where every class can give one to each side."""
    counts = np.bincount(labels)
    n_held = max(1, round(share * len(clips)))
    stratify = labels if counts[counts > 0].min() >= 2 and n_held >= (counts > 0).sum() else None
    return train_test_split(clips, test_size=n_held, random_state=seed, stratify=stratify)


def split_clips(data: ClipData, cfg: SplitConfig, what: str) -> Split:
    """Train, inner and validation clips; every option keeps a clip (and for actor splits a singer) on one side."""
    clips = np.arange(data.n_clips)
    seed = cfg.seed
    if cfg.kind == "random":
        train, val = random_clips(clips, data.clip_label, cfg.val_share, seed)
    elif cfg.kind == "actors":
        known = set(data.clip_actor.tolist())
        missing = sorted(set(cfg.test_actors) - known)
        if missing:
            raise TrainDataError(f"{what}.split.test_actors: actors {missing} have no clips "
                                 f"(actors present: {sorted(a for a in known if a >= 0)})")  # fmt: skip
        held = np.isin(data.clip_actor, cfg.test_actors)
        train, val = clips[~held], clips[held]
    elif cfg.kind == "actor_folds":
        if (data.clip_actor < 0).any():
            raise TrainDataError(f"{what}.split: actor_folds needs an actor for every clip; this dataset has none")
        n_actors = len(np.unique(data.clip_actor))
        if n_actors < cfg.k:
            raise TrainDataError(f"{what}.split.k: {cfg.k} folds by actor need at least {cfg.k} actors, "
                                 f"the data has {n_actors}")  # fmt: skip
        folds = list(GroupKFold(n_splits=cfg.k).split(clips, groups=data.clip_actor))
        train, val = folds[cfg.fold]
    else:
        counts = np.bincount(data.clip_label)
        if counts[counts > 0].min() < cfg.k:
            raise TrainDataError(f"{what}.split.k: {cfg.k} stratified folds need {cfg.k} clips of every class; "
                                 f"counts {dict(zip(data.classes, counts.tolist(), strict=False))}")  # fmt: skip
        folds = list(StratifiedKFold(n_splits=cfg.k, shuffle=True, random_state=seed).split(clips, data.clip_label))
        train, val = folds[cfg.fold]
    train, val = np.sort(train), np.sort(val)
    check_split(data, train, val, what)
    inner = np.empty(0, np.int64)
    if cfg.inner_share:
        train, inner = (np.sort(side) for side in random_clips(train, data.clip_label[train], cfg.inner_share, seed))
        check_split(data, train, inner, f"{what} (split.inner_share {cfg.inner_share}: set 0 for small data)")
    ids = "\n".join(data.clip_ids[i] for i in val)
    return Split(train, val, inner, hashlib.sha256(ids.encode()).hexdigest()[:16])


def check_split(data: ClipData, train: np.ndarray, val: np.ndarray, what: str) -> None:
    for side, clips in (("training", train), ("validation", val)):
        if len(clips) == 0:
            raise TrainDataError(f"{what}: the {side} side of the split is empty ({data.n_clips} clips in all)")
    present = sorted({data.classes[i] for i in data.clip_label[train]})
    if len(present) < 2:
        raise TrainDataError(f"{what}: the training side holds one class only ({present}); a classifier needs two")
    if set(train) & set(val):
        raise TrainDataError(f"{what}: a clip is on both sides of the split")


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Balanced weights n / (k * count) for the classes present; absent classes weigh 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def clip_statistics(data: ClipData, clips: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of each band over a clip's real frames (the logistic baseline's input)."""
    slice_frames = data.inputs.shape[-1]
    out = np.zeros((len(clips), 2 * data.inputs.shape[-2]), np.float64)
    for n, clip in enumerate(clips):
        rows = np.flatnonzero(data.row_clip == clip)
        frames = []
        for row in rows:
            real = max(1, round(data.real_share[row] * slice_frames))
            frames.append(data.inputs[row, 0, :, :real].double().numpy())
        joined = np.concatenate(frames, axis=1)
        out[n] = np.concatenate([joined.mean(axis=1), joined.std(axis=1)])
    return out
