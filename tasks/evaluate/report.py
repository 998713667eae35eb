"""The evaluation's figures, audio excerpts and self-contained HTML (images and audio inlined, no network)."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.storage import MANIFEST, read_store
from tasks.train.report import confusion

STAGING = ".cache/evaluate"  # reports are built here, outside every DVC output and dependency, then renamed
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)  # fmt: skip


def fmt(value: Any, digits: int = 3) -> str:
    """One way to print a figure, in the HTML and in the console: the test compares them with the JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


TEMPLATES.filters["fmt"] = fmt


def confusion_figures(truth: np.ndarray, pred: np.ndarray, classes: list[str], folder: Path, stem: str,
                      title: str) -> dict[str, Path]:  # fmt: skip
    """Counts and row-normalised matrices, as PNG and CSV (rows: actual, columns: predicted)."""
    out = {}
    for kind in ("counts", "normalised"):
        out[kind] = folder / f"{stem}_{kind}.png"
        confusion(truth, pred, classes, out[kind], folder / f"{stem}_{kind}.csv", f"{title} ({kind})",
                  normalise=kind == "normalised")  # fmt: skip
    return out


def coverage_figure(curves: dict[str, list[dict[str, float]]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in curves.items():
        ax.plot([p["coverage"] for p in points], [p["accuracy"] for p in points], marker=".", label=key)
    ax.set_xlabel("coverage (share of songs labelled)")
    ax.set_ylabel("accuracy over labelled songs")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def excerpt(raw_store: Path, clip_id: str, start_s: float, seconds: float) -> tuple[str | None, str]:
    """A few seconds of a clip from the raw store as an MP3 data URI (pydub) and its time span, or None and why not."""
    from pydub import AudioSegment

    if not (raw_store / MANIFEST).exists():
        return None, f"no raw clip store at {raw_store}"
    with read_store(raw_store) as store:
        shards = store.manifest.filter(pc.field("id") == clip_id).column("shard").to_pylist()
        table = pq.read_table(store.shard_file(shards[0]), columns=["audio"], filters=pc.field("id") == clip_id) \
            if shards else None  # fmt: skip
    if table is None or table.num_rows == 0:
        return None, f"clip {clip_id} is not in {raw_store}"
    audio = AudioSegment.from_file(io.BytesIO(table.column("audio")[0].as_py()), format="flac")
    start_ms = max(0, min(int(start_s * 1000), len(audio) - int(seconds * 1000)))
    buffer = io.BytesIO()
    audio[start_ms : start_ms + int(seconds * 1000)].export(buffer, format="mp3", bitrate="64k")
    span = f"{start_ms / 1000:.1f}-{(start_ms + seconds * 1000) / 1000:.1f} s"
    return f"data:audio/mpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}", span


def render(template: str, path: Path, **context: Any) -> Path:
    path.write_text(TEMPLATES.get_template(template).render(**context), encoding="utf-8")
    return path
