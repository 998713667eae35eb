"""Square log-spectrogram slices of whole clips and songs: the spectrogram study's input.

A slice is n_bands frames of n_bands bands, covering slice_seconds of audio (the validator
makes slice_seconds * sample_rate = n_bands * hop_length). Frame f stands for the hop cell
[f * hop, (f + 1) * hop) of the clip: its window is centred on that cell and at least as long,
so consecutive frames see every sample. A slice starting at frame s covers the samples
[s * hop, (s + size) * hop). No audio is lost: slices start every step frames until the last
cell is covered. The tail shorter than a slice is handled by `tail`:
  pad        the last slice starts on the step grid and runs past the end over silence;
  align_end  the last slice ends at the last cell (overlapping its predecessor); a clip
             shorter than one slice is padded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tasks.audio import FlacBytes
from tasks.config import FeaturesSlicesConfig
from tasks.features.dataset import Block, FeatureStore, code_version
from tasks.features.frontend import Spectrogram, isolate_vocals, load_audio
from tasks.features.inputs import InputShard
from tasks.features.stage import build_features, resolve_device, torch_threads
from tasks.storage import params_hash

log = logging.getLogger("tasks")
STAGE = "features_slices"
# Clips handed to the writer at a time: ~2% of the stage's wall time (benchmarks/features.py), which its
# 0.5x-of-decode-only goal needs.
WRITE_CLIPS = 8


def slice_starts(n_cells: int, size: int, step: int, tail: str) -> list[int]:
    """First frame of each slice; together they cover frames [0, n_cells)."""
    if n_cells <= size:
        return [0]
    if tail == "pad":
        return list(range(0, n_cells - size + step, step))
    return [*range(0, n_cells - size, step), n_cells - size]


def slice_clip(samples: np.ndarray, cfg: FeaturesSlicesConfig, spectrogram: Spectrogram,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(slices k x bands x frames, first sample, end sample) of one mono clip at the front end's rate."""
    fe = cfg.frontend
    size, hop = fe.n_bands, fe.hop_length
    n_cells = max(1, -(-samples.size // hop))
    starts = np.asarray(slice_starts(n_cells, size, max(1, round(size * (1 - cfg.overlap))), cfg.tail))
    total = int(starts[-1]) + size
    # Shift by half the excess of window over hop so frame f's window is centred on cell f.
    lead = (fe.win_length - hop) // 2
    trail = (total - 1) * hop + fe.win_length - lead - samples.size
    frames = spectrogram(torch.from_numpy(samples).to(spectrogram.window.device), lead, trail)
    index = torch.from_numpy(starts)[:, None] + torch.arange(size)
    slices = frames[index.to(frames.device)].transpose(1, 2)
    tensors = slices.to("cpu", getattr(torch, cfg.dtype)).numpy()
    return tensors, starts * hop, np.minimum((starts + size) * hop, samples.size)


def features_slices(cfg: FeaturesSlicesConfig, root: Path) -> dict[str, Any]:
    """Every clip of the configured raw stores as square log-spectrogram slices."""
    device = resolve_device(cfg.device, STAGE)
    spectrogram = Spectrogram(cfg.frontend).to(device)
    params = cfg.model_dump(mode="json")
    metadata = {
        "stage": STAGE,
        "params_hash": params_hash(params),
        "code_version": code_version(__file__),
        "frontend": cfg.frontend.model_dump(mode="json"),
        "params": params,
        "layout": "bands x frames, lowest band first; frame f covers samples [f * hop, (f + 1) * hop)",
    }
    value_type = pa.float16() if cfg.dtype == "float16" else pa.float32()
    store = FeatureStore(root / cfg.store.out_dir, "spectrogram", value_type, [cfg.frontend.n_bands] * 2, metadata,
                         cfg.store.rows_per_file)  # fmt: skip

    def clip(shard: InputShard, i: int, blob: FlacBytes) -> Block:
        samples = load_audio(blob, cfg.frontend.sample_rate, cfg.checks)
        if cfg.vocal_isolation:
            samples = isolate_vocals(samples, cfg.frontend.sample_rate)
        tensors, start, end = slice_clip(samples, cfg, spectrogram)
        return Block(shard.ids[i], shard.splits[i], shard.labels[i], shard.actors[i], tensors, start, end)

    def finish(shard: InputShard, blocks: list[Block]) -> list[Block]:
        return blocks

    with torch_threads(1 if device.type == "cpu" else torch.get_num_threads()):
        return build_features(STAGE, cfg.store, cfg.datasets, cfg.default_splits, root, store, clip, finish,
                              WRITE_CLIPS)  # fmt: skip
