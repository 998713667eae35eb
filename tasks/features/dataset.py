"""Feature datasets on disk, and their writer: Parquet partitioned by dataset and split, tensors in
fixed_shape_tensor columns. The inputs come from tasks.features.inputs; training reads the rows with
tasks.features.reader.

Layout of one feature dataset (a DVC output):
    dataset=<name>/split=<split>/<shard>-CCC.parquet  rows of input shard <shard>, chunk CCC
    _shards/<name>-<shard>.parquet                    failures of that input shard; written
                                                      last, it marks the shard done
    _failures.parquet                                 every failure
    _dataset.json                                     metadata and counts

<shard> is the stem of the raw shard file, part-SSSSS-<digest>: the raw store names a shard after its
contents, so a shard an acquire run left as it was keeps its outputs, and finalize drops the outputs
of shard files the manifest no longer names.
pyarrow.dataset ignores names starting with '_', so only the feature rows are read as data.
Every Parquet file carries the same metadata (parameters hash, code version, front-end
settings, weights) under the `mood_pipeline` schema key. An input shard is done when its
marker names the current parameters, code and input digest and every file it lists is
there with the listed row count; a rerun skips it, and a killed run loses at most one shard.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tasks.errors import PipelineError
from tasks.features.inputs import InputShard
from tasks.storage import (
    FAILURE_SCHEMA,
    STAMP_KEY,
    Failure,
    atomic_write_table,
    code_digest,
    failures_table,
    read_stamp,
    stamped,
    temp_path,
    write_json,
)

log = logging.getLogger("tasks")

META_KEY = STAMP_KEY
SHARDS = "_shards"
FAILURES = "_failures.parquet"
METADATA = "_dataset.json"
# Tensor bytes per row group: small enough that a shard's rows go out while its later clips are
# computed (64 slices of 128 x 128 float16, 16384 VGGish embeddings), large enough for a reader.
ROW_GROUP_BYTES = 2 << 20
_HERE = Path(__file__).resolve().parent
# The code every feature stage runs; with the stage's own module, what its dvc.yaml deps list.
SHARED_CODE = [_HERE / "frontend.py", _HERE / "inputs.py", _HERE / "dataset.py", _HERE / "stage.py",
               _HERE.parent / "audio.py", _HERE.parent / "storage.py"]  # fmt: skip


def code_version(stage_module: str) -> str:
    return code_digest(Path(stage_module).resolve(), *SHARED_CODE)


@dataclass
class Block:
    """The feature rows of one clip: k tensors and where each lies in the clip."""

    clip_id: str
    split: str
    labels: list[str]
    actor: int | None
    tensors: np.ndarray  # k x shape
    start_sample: np.ndarray  # k, at the front end's rate
    end_sample: np.ndarray

    def __len__(self) -> int:
        return len(self.tensors)


class FeatureStore:
    """Writer of one feature dataset (see the module docstring for the layout)."""

    def __init__(self, root: Path, column: str, value_type: pa.DataType, shape: Sequence[int],
                 metadata: dict[str, Any], rows_per_file: int) -> None:  # fmt: skip
        self.root = root
        self.column = column
        self.shape = list(shape)
        self.metadata = metadata
        self.rows_per_file = rows_per_file
        self.tensor_type = pa.fixed_shape_tensor(value_type, self.shape)
        self.schema = pa.schema(
            [
                ("clip_id", pa.string()),
                ("labels", pa.list_(pa.string())),
                ("actor", pa.int8()),
                ("index", pa.int32()),
                ("start_sample", pa.int64()),
                ("end_sample", pa.int64()),
                (column, self.tensor_type),
            ],
            metadata={META_KEY: json.dumps(metadata, sort_keys=True).encode()},
        )

    @property
    def row_group_rows(self) -> int:
        return max(1, ROW_GROUP_BYTES // (math.prod(self.shape) * self.tensor_type.value_type.byte_width))

    @property
    def write_options(self) -> dict[str, Any]:
        """Dictionaries only for the text columns, statistics only for the scalar ones.

        A dictionary over tensor values (float16 has only 65536 of them) never spills, so every
        value was dictionary-coded: writes 2x and reads 4x slower for no gain in size. Min/max of
        spectrogram values filter nothing and cost 15% of a write. Float tensors are
        byte-stream-split, which zstd then packs tighter (measured on slices: 2.09 -> 1.74 MB).
        """
        scalars = [name for name in self.schema.names if name != self.column]
        options: dict[str, Any] = {"use_dictionary": ["clip_id", "labels.list.element"],
                                   "write_statistics": scalars}  # fmt: skip
        if pa.types.is_floating(self.tensor_type.value_type):
            options["column_encoding"] = {f"{self.column}.list.element": "BYTE_STREAM_SPLIT"}
        return options

    def marker_path(self, shard: InputShard) -> Path:
        return self.root / SHARDS / f"{shard.dataset}-{shard.name}.parquet"

    def stamp(self, shard: InputShard) -> dict[str, Any]:
        return {"params": self.metadata["params_hash"], "code": self.metadata["code_version"], "input": shard.digest}

    def remove_partial_files(self) -> None:
        for path in self.root.rglob(".*.tmp-*"):
            path.unlink(missing_ok=True)

    def shard_done(self, shard: InputShard) -> bool:
        marker = self.marker_path(shard)
        if not marker.exists():
            return False
        try:
            stamp = read_stamp(marker)
            if stamp is None:
                return False
            for rel, rows in stamp["files"].items():
                if pq.read_metadata(self.root / rel).num_rows != rows:
                    return False
        except (OSError, KeyError, ValueError, pa.ArrowInvalid) as exc:
            log.warning("%s: marker or output unreadable (%s); redoing the shard", marker.name, exc)
            return False
        return {k: stamp.get(k) for k in ("params", "code", "input")} == self.stamp(shard)

    def outputs(self, shard: InputShard) -> list[Path]:
        return sorted(self.root.glob(f"dataset={shard.dataset}/split=*/{shard.name}-*.parquet"))

    def table(self, blocks: Sequence[Block]) -> pa.Table:
        def per_row(values: list[Any]) -> list[Any]:
            return [v for b, v in zip(blocks, values, strict=True) for _ in range(len(b))]

        def joined(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(arrays) if arrays else np.empty(0, np.int64)

        dtype = self.tensor_type.value_type.to_pandas_dtype()
        tensors = np.concatenate([b.tensors for b in blocks]) if blocks else np.empty((0, *self.shape), dtype)
        columns = {
            "clip_id": per_row([b.clip_id for b in blocks]),
            "labels": per_row([b.labels for b in blocks]),
            "actor": per_row([b.actor for b in blocks]),
            "index": joined([np.arange(len(b)) for b in blocks]),
            "start_sample": joined([b.start_sample for b in blocks]),
            "end_sample": joined([b.end_sample for b in blocks]),
            self.column: pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(tensors, dtype)),
        }
        return pa.Table.from_pydict(columns, schema=self.schema)

    def finalize(self, shards: Sequence[InputShard]) -> tuple[dict[str, Any], pa.Table]:
        """Drop outputs of shards outside the plan, write the failures table and the metadata file."""
        planned = {self.marker_path(s) for s in shards}
        planned_files = {p for s in shards for p in self.outputs(s)}
        for path in self.root.glob(f"{SHARDS}/*.parquet"):
            if path not in planned:
                path.unlink()
        for path in self.root.glob("dataset=*/split=*/*.parquet"):
            if path not in planned_files:
                path.unlink()
        for folder in sorted(self.root.glob("dataset=*/split=*"), reverse=True) + sorted(self.root.glob("dataset=*")):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        parts = [pq.read_table(self.marker_path(s)) for s in shards]
        failed = pa.concat_tables(parts).replace_schema_metadata(None) if parts else FAILURE_SCHEMA.empty_table()
        atomic_write_table(failed, self.root / FAILURES)
        rows: dict[tuple[str, str], int] = {}
        clips: dict[tuple[str, str], set[str]] = {}
        for path in sorted(planned_files):
            key = tuple(part.split("=", 1)[1] for part in path.relative_to(self.root).parts[:2])
            ids = pq.read_table(path, columns=["clip_id"]).column("clip_id").to_pylist()
            rows[key] = rows.get(key, 0) + len(ids)
            clips.setdefault(key, set()).update(ids)  # a clip's rows may span two chunk files
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for (dataset, split), n in sorted(rows.items()):
            counts.setdefault(dataset, {})[split] = {"clips": len(clips[dataset, split]), "rows": n}
        summary = {**self.metadata, "column": self.column, "shape": self.shape,
                   "value_type": str(self.tensor_type.value_type), "counts": counts}  # fmt: skip
        write_json(summary, self.root / METADATA)
        return summary, failed

    def size_mb(self) -> float:
        return round(sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) / 1e6, 3)


class ShardWriter:
    """The feature files of one input shard, written while its later clips are still computed.

    Rows go out as they come, per split, in row groups of about ROW_GROUP_BYTES of tensors, into
    files of at most rows_per_file rows under temporary names. `commit` renames them into place
    and then writes the shard's marker, so a killed run leaves no marker and the shard is redone.
    Writing as the rows come keeps a shard's features out of memory and leaves only the last row
    group to write once the last clip is done.
    """

    def __init__(self, store: FeatureStore, shard: InputShard) -> None:
        self.store, self.shard = store, shard
        store.marker_path(shard).unlink(missing_ok=True)
        for path in store.outputs(shard):
            path.unlink()
        self.files: dict[str, int] = {}  # relative path -> rows written
        self.pending: dict[str, pa.Table] = {}  # split -> rows not yet in a row group
        self.writers: dict[str, tuple[str, pq.ParquetWriter]] = {}  # split -> its open file

    def add(self, blocks: Sequence[Block]) -> None:
        for split in sorted({b.split for b in blocks}):
            rows = self.store.table([b for b in blocks if b.split == split])
            before = self.pending.get(split)
            self.pending[split] = rows if before is None else pa.concat_tables([before, rows])
            self._write(split, final=False)

    def _write(self, split: str, final: bool) -> None:
        """Whole row groups of the split's pending rows, and with `final` the rest too."""
        table, done, group = self.pending[split], 0, self.store.row_group_rows
        while table.num_rows - done >= group or (final and done < table.num_rows):
            if split not in self.writers:
                folder = f"dataset={self.shard.dataset}/split={split}/"
                chunk = sum(rel.startswith(folder) for rel in self.files)
                rel = f"{folder}{self.shard.name}-{chunk:03d}.parquet"
                path = temp_path(self.store.root / rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                self.writers[split] = rel, pq.ParquetWriter(path, self.store.schema, compression="zstd",
                                                            **self.store.write_options)  # fmt: skip
                self.files[rel] = 0
            rel, writer = self.writers[split]
            n = min(group, self.store.rows_per_file - self.files[rel], table.num_rows - done)
            writer.write_table(table.slice(done, n))
            self.files[rel] += n
            done += n
            if self.files[rel] == self.store.rows_per_file:
                writer.close()
                del self.writers[split]
        self.pending[split] = table.slice(done)

    def commit(self, failures: Sequence[Failure]) -> None:
        for split in self.pending:
            self._write(split, final=True)
        for _, writer in self.writers.values():
            writer.close()
        for rel in self.files:
            os.replace(temp_path(self.store.root / rel), self.store.root / rel)
        stamp = {**self.store.stamp(self.shard), "files": self.files}
        atomic_write_table(stamped(failures_table(failures), stamp), self.store.marker_path(self.shard))


def read_metadata(root: Path) -> dict[str, Any]:
    path = Path(root) / METADATA
    if not path.exists():
        raise PipelineError(f"{root} is not a feature dataset: {METADATA} is missing")
    return json.loads(path.read_text())


def open_table(root: Path, dataset: str | None = None, split: str | None = None,
               columns: list[str] | None = None) -> pa.Table:  # fmt: skip
    """Rows of a feature dataset, optionally one dataset and/or split, in a stable order."""
    data = pads.dataset(Path(root), format="parquet", partitioning="hive")
    expr = None
    for key, value in (("dataset", dataset), ("split", split)):
        if value is not None:
            term = pads.field(key) == value
            expr = term if expr is None else expr & term
    table = data.to_table(columns=columns, filter=expr)
    order = [(k, "ascending") for k in ("dataset", "split", "clip_id", "index") if k in table.column_names]
    return table.sort_by(order) if order else table


