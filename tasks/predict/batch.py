"""The batch DAG's steps (dags/predict_batch.py): plan a run's files in chunks, predict one chunk into a Parquet
part, collect the parts into <predict.out_dir>/<run>/predictions.parquet with a summary.

The model reference is resolved once, at plan time (an alias becomes its version), so every chunk of a run
uses the same model even if `champion` moves meanwhile; the version is in every output row.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import PredictConfig
from tasks.errors import PipelineError
from tasks.predict.inputs import RAW_PREFIX, Item, Limits, expand, loaders
from tasks.predict.predictor import Prediction
from tasks.storage import MANIFEST, atomic_write_table, write_json

log = logging.getLogger("tasks")
FILES = "files.json"
OUTPUT = "predictions.parquet"


def run_folder(cfg: PredictConfig, root: Path, run_id: str) -> Path:
    """<out_dir>/<run id as a plain name>: dots never lead, so no run id (`..`) leaves out_dir."""
    return root / cfg.out_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id).lstrip(".").rjust(1, "_")


def part_path(folder: Path, chunk: int) -> Path:
    return folder / f"part-{chunk:05d}.parquet"


def resolve_model(cfg: PredictConfig, root: Path, ref: str) -> str:
    """The reference with an alias replaced by the version it names now. Making the predictor here fails clearly
    on a model that does not resolve or lacks feature settings, before any chunk runs."""
    from tasks.evaluate.model import parse_model_uri
    from tasks.predict.cli import make_predictor

    model = make_predictor(cfg.model_copy(update={"model": ref, "device": "cpu"}), root).model
    if ref.startswith("models:/"):
        return f"models:/{parse_model_uri(ref)[0]}/{model.version}"
    return ref


def plan_batch(cfg: PredictConfig, root: Path, run_id: str, source: str, model: str, voting: str) -> list[dict]:
    """The run's files (a folder, or `raw:<dataset>` / a raw dataset name) in chunks of cfg.chunk_files, written
    to the run's folder; one job per chunk for the mapped task."""
    source = source.strip()
    if not source:
        raise PipelineError("predict_batch: set `input`: a folder of audio files or a raw clip store's dataset")
    raw_dir = root / cfg.raw_dir
    if not source.startswith(RAW_PREFIX) and (raw_dir / source / MANIFEST).exists():
        source = f"{RAW_PREFIX}{source}"
    elif not source.startswith(RAW_PREFIX) and not Path(source).is_absolute():
        source = str(root / source)
    items = expand([source], raw_dir)
    ref = resolve_model(cfg, root, model or cfg.model)
    folder = run_folder(cfg, root, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("part-*.parquet"), folder / OUTPUT]:  # a cleared run planned again starts afresh
        stale.unlink(missing_ok=True)
    n = -(-len(items) // cfg.chunk_files)
    write_json({"source": source, "model": ref, "voting": voting, "chunks": n, "files": [i.name for i in items]},
               folder / FILES)  # fmt: skip
    log.info("predict_batch: %d files from %s in %d chunks of up to %d, model %s, %s vote", len(items), source, n,
             cfg.chunk_files, ref, voting)  # fmt: skip
    return [{"folder": str(folder), "chunk": k} for k in range(n)]


def predict_chunk(cfg: PredictConfig, root: Path, folder: Path, chunk: int) -> dict[str, Any]:
    """Predict one chunk into part-<chunk>.parquet; failed files are rows with their error, the chunk goes on."""
    from tasks.predict.cli import make_predictor

    plan = json.loads((folder / FILES).read_text())
    names = plan["files"][chunk * cfg.chunk_files : (chunk + 1) * cfg.chunk_files]
    predictor = make_predictor(cfg.model_copy(update={"model": plan["model"], "voting": plan["voting"]}), root)
    predictions = list(predictor.predict(loaders([Item(n) for n in names], Limits.of(cfg), root / cfg.raw_dir)))
    model = predictor.model
    table = predictions_table(predictions, predictor.classes, model.registered_model or model.source, model.version,
                              predictor.rule)  # fmt: skip
    atomic_write_table(table, part_path(folder, chunk))
    failed = [p for p in predictions if p.error]
    for p in failed:
        log.warning("predict_batch: %s (%s)", p.error, p.reason)
    return {"chunk": chunk, "files": len(predictions), "failed": len(failed)}


def predictions_table(predictions: list[Prediction], classes: list[str], model: str, version: str | None,
                      rule: str) -> pa.Table:  # fmt: skip
    columns: dict[str, list[Any]] = {
        "file": [p.file for p in predictions],
        "mood": [p.mood for p in predictions],
        "vote_share": [p.vote_share for p in predictions],
        **{f"prob_{c}": [p.probabilities.get(c) for p in predictions] for c in classes},
        "seconds": [p.seconds for p in predictions],
        "slices": [json.dumps(p.slices) for p in predictions],
        "error": [p.error for p in predictions],
        "reason": [p.reason for p in predictions],
        "model": [model] * len(predictions),
        "model_version": [version] * len(predictions),
        "voting": [rule] * len(predictions),
    }
    schema = pa.schema([("file", pa.string()), ("mood", pa.string()), ("vote_share", pa.float64()),
                        *((f"prob_{c}", pa.float64()) for c in classes), ("seconds", pa.float64()),
                        ("slices", pa.string()), ("error", pa.string()), ("reason", pa.string()),
                        ("model", pa.string()), ("model_version", pa.string()), ("voting", pa.string())])  # fmt: skip
    return pa.table(columns, schema=schema)


def collect(folder: Path) -> dict[str, Any]:
    """The parts as one predictions.parquet, and the run's summary (moods, failures by reason)."""
    plan = json.loads((folder / FILES).read_text())
    parts = [part_path(folder, k) for k in range(plan["chunks"]) if part_path(folder, k).exists()]
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None
    if table is None or table.num_rows == 0:
        raise PipelineError(f"predict_batch: no chunk wrote predictions in {folder}")
    atomic_write_table(table, folder / OUTPUT)
    moods = Counter(m for m in table.column("mood").to_pylist() if m is not None)
    reasons = Counter(r for r in table.column("reason").to_pylist() if r is not None)
    summary = {"output": str(folder / OUTPUT), "files": len(plan["files"]),
               "predicted": table.num_rows - sum(reasons.values()), "failed": dict(reasons),
               "moods": dict(moods.most_common()), "missing": len(plan["files"]) - table.num_rows,
               "model": plan["model"], "voting": plan["voting"]}  # fmt: skip
    write_json(summary, folder / "summary.json")
    log.info("predict_batch: %d of %d files predicted (%s); moods %s; failed %s; missing (a chunk failed) %d; "
             "model %s; %s", summary["predicted"], summary["files"], plan["voting"], summary["moods"],
             summary["failed"] or "none", summary["missing"], plan["model"], summary["output"])  # fmt: skip
    return summary
