"""The selection on the real AudioSet lists in ../shared/data/audioset (skipped with a reason when absent).

Expected numbers were counted independently with pandas on the same files (rows whose labels hold
exactly one of Happy /t/dd00031, Sad /t/dd00033, Angry /t/dd00036, Scary /t/dd00037 music):
  eval_segments.csv:        angry 60, happy 60, sad 59, scary 59; 1 segment with two (VeuetUsa9d0, Sad+Scary)
  balanced_train + mood subset of unbalanced_train: angry 1044, happy 1398, sad 1707, scary 1674;
                            4 segments with two; no video shared with eval
  study lists: moods_unbalanced_100each.csv 400 rows (100 each), moods_eval.csv 223 rows
                            (Angry 58, Happy 57, Sad 55, Scary 53) on 222 segments
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.audioset.lists import label_name, read_clip_list, read_ontology
from tasks.audioset.select import select_audioset
from tasks.config import apply_overrides, section_config

from .conftest import shared

pytestmark = pytest.mark.realdata

STUDY_TEST = {"angry": 58, "happy": 57, "sad": 55, "scary": 53}


def real_cfg(params: dict, *extra: str):
    folder = shared("audioset")
    subset = folder / "mood_subset_unbalanced_train_segments.csv"  # the mood rows of the official list
    overrides = [f"select_audioset.ontology.url={folder / 'ontology.json'}",
                 f"select_audioset.segments.eval.url={folder / 'eval_segments.csv'}",
                 f"select_audioset.segments.balanced_train.url={folder / 'balanced_train_segments.csv'}",
                 f"select_audioset.segments.unbalanced_train.url={subset}",
                 *extra]  # fmt: skip
    return section_config(apply_overrides(params, overrides), "select_audioset")


def selection(root: Path):
    return pq.read_table(root / "data/audioset/selection.parquet").to_pandas()


def test_per_class_counts_from_the_real_lists(params: dict, tmp_path: Path) -> None:
    metrics = select_audioset(real_cfg(params, "select_audioset.quota.train=null"), tmp_path)
    assert metrics["per_split"] == {
        "test": {"angry": 60, "happy": 60, "sad": 59, "scary": 59},
        "train": {"angry": 1044, "happy": 1398, "sad": 1707, "scary": 1674},
    }
    assert metrics["dropped_multi_label"] == {"test": 1, "train": 4} and metrics["dropped_overlap"] == 0
    assert metrics["selected"] == 238 + 5823
    table = selection(tmp_path)
    assert "VeuetUsa9d0" not in set(table.ytid)


def test_quota_disjointness_and_determinism(params: dict, tmp_path: Path) -> None:
    cfg = real_cfg(params)  # default quota: 100 per class for train, all of eval for test
    metrics = select_audioset(cfg, tmp_path / "a")
    select_audioset(cfg, tmp_path / "b")
    first, second = (p / "data/audioset/selection.parquet" for p in (tmp_path / "a", tmp_path / "b"))
    assert first.read_bytes() == second.read_bytes()
    assert metrics["per_split"]["train"] == dict.fromkeys(["angry", "happy", "sad", "scary"], 100)
    table = selection(tmp_path / "a")
    assert not set(table.ytid[table.split == "train"]) & set(table.ytid[table.split == "test"])
    assert table.id.is_unique
    other = select_audioset(real_cfg(params, "select_audioset.seed=1"), tmp_path / "c")
    assert other["per_split"] == metrics["per_split"]
    assert set(selection(tmp_path / "c").id) != set(table.id)


def test_the_studys_lists_give_400_and_223_clips(params: dict, tmp_path: Path) -> None:
    folder = shared("audioset", "seed_uw_mood_sets")
    ontology = read_ontology(shared("audioset", "ontology.json"))
    names = {c.id: label_name(c.name) for c in ontology.classes.values()}
    train, bad_train = read_clip_list(folder / "moods_unbalanced_100each.csv", "train", ontology)
    test, bad_test = read_clip_list(folder / "moods_eval.csv", "test", ontology)
    assert not bad_train and not bad_test
    assert len(train) == 400 and len(test) == 223
    assert Counter(names[s.labels[0]] for s in train) == dict.fromkeys(["angry", "happy", "sad", "scary"], 100)
    assert Counter(names[s.labels[0]] for s in test) == STUDY_TEST

    lists = (f"select_audioset.clip_lists={{train: {{url: {folder / 'moods_unbalanced_100each.csv'}}}, "
             f"test: {{url: {folder / 'moods_eval.csv'}}}}}")  # fmt: skip
    cfg = real_cfg(params, "select_audioset.source=clip_lists", lists, "select_audioset.multi_label=keep",
                   "select_audioset.quota.train=null")  # fmt: skip
    metrics = select_audioset(cfg, tmp_path)
    # The one segment listed twice (Sad and Scary) is one clip with both labels: downloaded once.
    assert metrics["per_split"] == {"test": STUDY_TEST, "train": dict.fromkeys(["angry", "happy", "sad", "scary"], 100)}
    table = selection(tmp_path)
    assert (table.split == "train").sum() == 400 and (table.split == "test").sum() == 222
    assert list(table.labels[table.ytid == "VeuetUsa9d0"].item()) == ["sad", "scary"]
    assert not set(table.ytid[table.split == "train"]) & set(table.ytid[table.split == "test"])
