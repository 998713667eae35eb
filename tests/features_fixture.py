"""Feature datasets for training and evaluation tests: small ones written with the feature stages' own
writer, and whole workspaces whose features the real stages computed from a generated corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from devtools.mirror.cli import CorpusSpec, build_corpus, mirror_overrides
from devtools.mirror.server import MirrorServer
from devtools.workspace import make_workspace
from tasks.cli import run_stage
from tasks.features.dataset import Block, FeatureStore, ShardWriter
from tasks.features.inputs import InputShard

FEATURE_STAGES = ("acquire_ravdess", "acquire_cal500", "select_audioset", "acquire_audioset", "features_slices",
                  "features_vggish")  # fmt: skip
HOP = 500
SIZE = 16  # bands = frames of the test slices (the stage's are 128)


def write_slices(root: Path, clips: list[tuple[str, str, int]], seed: int = 0, dataset: str = "ravdess",
                 slices_per_clip: int = 2, size: int = SIZE) -> Path:  # fmt: skip
    """A slices dataset: (clip id, label, actor) each with `slices_per_clip` slices, the last one 30% real."""
    rng = np.random.default_rng(seed)
    labels = sorted({label for _, label, _ in clips})
    metadata = {"stage": "features_slices", "params_hash": "test", "code_version": "test",
                "frontend": {"hop_length": HOP}, "params": {}}  # fmt: skip
    store = FeatureStore(root, "spectrogram", pa.float16(), [size, size], metadata, 2000)
    shard = InputShard(dataset, "part-00000", root / "none", [c for c, _, _ in clips], [[lb] for _, lb, _ in clips],
                       [a for _, _, a in clips], ["train"] * len(clips), ["x"] * len(clips))  # fmt: skip
    writer = ShardWriter(store, shard)
    blocks = []
    for clip_id, label, actor in clips:
        level = labels.index(label) if label in labels else 0
        tensors = rng.normal(level, 1.0, (slices_per_clip, size, size)).astype(np.float16)
        start = np.arange(slices_per_clip) * size * HOP
        end = start + size * HOP
        end[-1] = start[-1] + int(0.3 * size * HOP)
        blocks.append(Block(clip_id, "train", [label], actor, tensors, start, end))
    writer.add(blocks)
    writer.commit([])
    store.finalize([shard])
    return root


def corpus_workspace(root: Path, spec: CorpusSpec, overrides: list[str]) -> Path:
    """A workspace (root/ws) whose raw stores and features the real stages made from `spec`'s corpus, served
    from a loopback mirror while they ran."""
    files = build_corpus(root / "mirror", spec)
    with MirrorServer(root / "mirror") as mirror:
        ws = make_workspace(root / "ws", [*mirror_overrides(mirror.url, files), *overrides])
        for stage in FEATURE_STAGES:
            run_stage(stage, ws)
    return ws
