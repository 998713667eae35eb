"""Scoring a test set whose raw store holds songs the features stage could not slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks.evaluate.scoring import score
from tasks.evaluate.testsets import TestSet, clips_without_slices
from tasks.features.dataset import FAILURES
from tasks.train.data import ClipData

CLASSES = ["happy", "sad"]


def clip_data(ids: list[str], rows_per_clip: int) -> ClipData:
    n = len(ids) * rows_per_clip
    row_clip = np.repeat(np.arange(len(ids)), rows_per_clip)
    return ClipData("slices", torch.zeros(n, 1, 2, 2), row_clip, np.ones(n), None, ids, np.zeros(len(ids), np.int64),
                    np.full(len(ids), -1), CLASSES, {}, [["happy"]] * len(ids), np.zeros(n, np.int64),
                    np.ones(n, np.int64))  # fmt: skip


def test_songs_without_slices_are_listed_with_the_features_reason(tmp_path: Path) -> None:
    raw, features = tmp_path / "raw", tmp_path / "features"
    (raw / "cal500").mkdir(parents=True)
    features.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "labels": [["happy"], ["sad"], ["calm"]]}),
                   raw / "cal500/manifest.parquet")  # fmt: skip
    pq.write_table(pa.table({"id": ["b"], "reason": ["too_short"], "message": ["0.2 s"]}), features / FAILURES)
    missing = clips_without_slices(raw, features, "cal500", "test", clip_data(["a"], 1))
    assert missing == [{"clip_id": "b", "tags": ["sad"], "reason": "too_short: 0.2 s"},
                       {"clip_id": "c", "tags": ["calm"], "reason": "no feature rows (nor a features failure)"}]


def test_songs_without_slices_count_as_wrong_and_unlabelled() -> None:
    # two voted songs, both right: song 0 unanimously (share 1), song 1 by 2 of 3 slices; one song has no slices
    data = clip_data(["s0", "s1"], 3)
    prob = np.array([[0.9, 0.1]] * 3 + [[0.8, 0.2], [0.7, 0.3], [0.2, 0.8]])
    truth = np.array([[True, False], [True, False]])
    test = TestSet("cal500_test", "cal500", "t", data, truth, np.full((2, 2), np.nan),
                   without_slices=[{"clip_id": "s2", "reason": "decode: bad"}])  # fmt: skip
    outcome = score(test, prob, data.row_clip, np.ones(6), CLASSES, threshold=0.9, curve_step=0.5, resamples=200,
                    seed=0)  # fmt: skip
    m = outcome.metrics
    assert m["songs"] == 3 and m["songs_without_slices"] == 1
    assert m["majority"]["accuracy"] == pytest.approx(2 / 3) and m["majority"]["correct"] == 2
    assert m["threshold"]["coverage"] == pytest.approx(1 / 3) and m["threshold"]["accuracy"] == 1.0
    # the curve's point at the threshold agrees with the rule: the same songs, the same denominator
    assert [(p["threshold"], p["coverage"], p["accuracy"]) for p in outcome.curve] == [
        (0.0, 2 / 3, 1.0), (0.5, 2 / 3, 1.0), (1.0, 1 / 3, 1.0)]
    assert m["chance"] == pytest.approx(2 * 0.5 / 3) and m["single_label"]["songs"] == 2
