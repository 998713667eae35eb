"""Reading a feature dataset for training: its rows as tensors, and batches of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from tasks.features.dataset import open_table, read_metadata


def tensor_column(table: pa.Table, column: str) -> torch.Tensor:
    """A fixed_shape_tensor column as one tensor: one bulk copy out of Arrow, no per-row work."""
    chunks = table.column(column).chunks
    if not chunks:
        value_type = table.schema.field(column).type
        return torch.from_numpy(np.empty((0, *value_type.shape), dtype=value_type.value_type.to_pandas_dtype()))
    return torch.from_numpy(np.concatenate([c.to_numpy_ndarray() for c in chunks]))


class FeatureDataset(torch.utils.data.Dataset):
    """A feature dataset in memory as tensors; indexing with a list of rows gathers a batch at once.

    `classes` turns the labels into multi-hot targets (rows x classes); labels outside it are ignored.
    """

    def __init__(self, root: Path, column: str, dataset: str | None = None, split: str | None = None,
                 classes: Sequence[str] | None = None) -> None:  # fmt: skip
        table = open_table(root, dataset, split)
        self.metadata = read_metadata(root)
        self.features = tensor_column(table, column)
        self.rows = table.drop_columns([column])
        self.classes = list(classes or [])
        self.targets = torch.zeros(len(self.features), len(self.classes))
        if self.classes:
            position = {c: i for i, c in enumerate(self.classes)}
            for row, labels in enumerate(self.rows.column("labels").to_pylist()):
                for label in labels:
                    if label in position:
                        self.targets[row, position[label]] = 1.0

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int | Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(index, dtype=torch.long)
        return {"features": self.features[rows], "targets": self.targets[rows], "row": rows}


def loader(data: FeatureDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
           drop_last: bool = False) -> torch.utils.data.DataLoader:  # fmt: skip
    """Batches gathered by tensor indexing (a BatchSampler feeds whole index lists), seeded shuffling."""
    generator = torch.Generator().manual_seed(seed)
    order = (torch.utils.data.RandomSampler(data, generator=generator) if shuffle
             else torch.utils.data.SequentialSampler(data))  # fmt: skip
    batches = torch.utils.data.BatchSampler(order, batch_size, drop_last)
    return torch.utils.data.DataLoader(data, sampler=batches, batch_size=None)
