"""Raw clip stores of generated audio, for the feature stages' tests and benchmarks.

The acquisition stages fill stores from source archives; these helpers fill the same layout
(RawStore + fill_store) straight from `synthesize`, so a test can make any clip it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from devtools.mirror.package import file_rng
from devtools.mirror.synth import synthesize
from tasks.audio import encode_flac
from tasks.progress import Tally
from tasks.storage import Clip, RawStore, fill_store


def synth_clip(clip_id: str, mood: str, seconds: float, sample_rate: int, seed: int, channels: int = 1,
               voice: bool = False, meta: dict[str, Any] | None = None) -> Clip:  # fmt: skip
    """A seeded synthesized clip as the acquisition stages store it (16-bit FLAC at its own rate)."""
    rng = file_rng(seed, clip_id)
    mono = synthesize(mood, seconds, sample_rate, rng, voice=voice)
    samples = mono if channels == 1 else np.stack([mono * (1.0 - 0.1 * c) for c in range(channels)], axis=1)
    return Clip(clip_id, encode_flac(samples, sample_rate), [mood], f"synth/{clip_id}", dict(meta or {}))


def _meta_type(value: Any) -> pa.DataType:
    return pa.int8() if isinstance(value, int) else pa.string()


def write_store(root: Path, dataset: str, clips: list[Clip], shard_rows: int = 500) -> pa.Table:
    """A raw clip store of `clips` under root/dataset; returns its manifest."""
    meta_schema = pa.schema([(k, _meta_type(v)) for k, v in (clips[0].meta if clips else {}).items()])
    store = RawStore(root / dataset, dataset, meta_schema)
    by_id = {c.id: c for c in clips}
    manifest, _ = fill_store(store, {c.id: c.source for c in clips}, lambda i, _src: by_id[i], shard_rows,
                             f"synth_{dataset}", Tally(f"synth_{dataset}"))  # fmt: skip
    return manifest
