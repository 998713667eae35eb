"""AudioSet lists and the selection stage, on the mirror's generated AudioSet tree."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from devtools.mirror.audioset import ONTOLOGY, SEGMENT_FILES, plan_rows
from devtools.mirror.cli import audioset_overrides
from tasks.audioset.lists import InvalidId, check_ytid, label_name, read_clip_list, read_ontology, read_segments
from tasks.audioset.select import select_audioset
from tasks.config import ConfigError, apply_overrides, section_config

from .conftest import SMALL

MOODS = {"/t/dd00031": "happy", "/t/dd00033": "sad", "/t/dd00036": "angry", "/t/dd00037": "scary"}


def select_cfg(params: dict, corpus: tuple[Path, dict[str, str]], *extra: str):
    root, files = corpus
    return section_config(apply_overrides(params, [*audioset_overrides(root.as_uri(), files), *extra]),
                          "select_audioset")  # fmt: skip


def expected_rows() -> list:
    return plan_rows(SMALL.seed, SMALL.audioset_per_class, SMALL.audioset_missing, SMALL.audioset_segment_seconds,
                     SMALL.audioset_media_seconds)  # fmt: skip


@pytest.mark.parametrize("ytid", ["../etc/passw", "short", "abc/def/ghi", "-JvB5AL59f\n", "-JvB5AL59f ", 12345678901])
def test_bad_ytids_are_refused(ytid: object) -> None:
    with pytest.raises(InvalidId, match="11 characters"):
        check_ytid(ytid)
    assert check_ytid("-JvB5AL59fM") == "-JvB5AL59fM"


def test_official_csv_format_with_comments_quotes_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "eval_segments.csv"
    path.write_text(
        "# Segments csv created Sun Mar  5 10:54:25 2017\n"
        "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_,/t/dd00033"\n'
        '-0SdAVK79lg, 30.000, 40.000, "/t/dd00031"\n'
        '../../etc/x, 0.000, 10.000, "/t/dd00031"\n'
        'abcdefghijk, 20.000, 10.000, "/t/dd00031"\n'
    )
    segments, bad = read_segments(path, "eval")
    assert [(s.ytid, s.start, s.end, s.labels) for s in segments] == [
        ("--4gqARaEJE", 0.0, 10.0, ("/m/068hy", "/m/07q6cd_", "/t/dd00033")),
        ("-0SdAVK79lg", 30.0, 40.0, ("/t/dd00031",)),
    ]
    assert [(b.line, "YouTube id" in b.reason or "start < end" in b.reason) for b in bad] == [(6, True), (7, True)]


def test_ontology_of_the_mirror_has_the_real_mood_ids(corpus: tuple[Path, dict[str, str]]) -> None:
    ontology = read_ontology(corpus[0] / ONTOLOGY)
    moods = {c.id: c.name for c in ontology.children("/t/dd00030")}
    assert moods == {"/t/dd00031": "Happy music", "/t/dd00032": "Funny music", "/t/dd00033": "Sad music",
                     "/t/dd00034": "Tender music", "/t/dd00035": "Exciting music", "/t/dd00036": "Angry music",
                     "/t/dd00037": "Scary music"}  # fmt: skip
    assert label_name("Scary music") == "scary" and ontology.find("happy MUSIC").id == "/t/dd00031"


def test_selection_counts_match_the_generated_lists(params: dict, corpus, tmp_path: Path) -> None:
    metrics = select_audioset(select_cfg(params, corpus), tmp_path)
    # Independently from the plan of the generated lists: single study-mood segments per split.
    rows = expected_rows()
    single = [r for r in rows if len([c for c in r.labels if c in MOODS]) == 1 and set(r.labels) & set(MOODS)]
    want = {split: Counter(MOODS[c] for r in single if (r.file == "eval") == (split == "test")
                           for c in r.labels if c in MOODS) for split in ("test", "train")}  # fmt: skip
    assert metrics["per_split"] == {k: dict(sorted(v.items())) for k, v in want.items()}
    assert metrics["dropped_multi_label"] == {"test": 1, "train": 1}
    assert metrics["selected"] == len(single) == 14
    table = pq.read_table(tmp_path / "data/audioset/selection.parquet").to_pandas()
    assert list(table.columns) == ["id", "ytid", "start_s", "end_s", "split", "labels", "class_ids", "source"]
    assert (table.id == table.ytid + "_" + table.start_s.map("{:.3f}".format)).all()
    assert (table.end_s - table.start_s == SMALL.audioset_segment_seconds).all()
    assert not set(table.ytid[table.split == "train"]) & set(table.ytid[table.split == "test"])


def test_keep_policy_keeps_two_mood_segments_with_both_labels(params: dict, corpus, tmp_path: Path) -> None:
    metrics = select_audioset(select_cfg(params, corpus, "select_audioset.multi_label=keep"), tmp_path)
    table = pq.read_table(tmp_path / "data/audioset/selection.parquet").to_pylist()
    two = sorted(tuple(r["labels"]) for r in table if len(r["labels"]) > 1)
    assert two == [("angry", "happy"), ("sad", "scary")]
    assert metrics["selected"] == 16 and metrics["dropped_multi_label"] == {"test": 0, "train": 0}


def test_quota_draw_is_seeded_and_deterministic(params: dict, corpus, tmp_path: Path) -> None:
    out = tmp_path / "data/audioset/selection.parquet"
    chosen = []
    for seed, run in ((0, "a"), (0, "b"), (1, "c"), (2, "d"), (3, "e")):
        cfg = select_cfg(params, corpus, "select_audioset.quota.train=1", f"select_audioset.seed={seed}")
        metrics = select_audioset(cfg, tmp_path)
        assert set(metrics["per_split"]["train"].values()) == {1}
        chosen.append((run, out.read_bytes()))
    assert chosen[0][1] == chosen[1][1]  # same inputs and seed: same bytes
    assert len({data for _, data in chosen}) > 1  # the seed changes the draw


def test_disjoint_by_video_when_a_train_list_repeats_a_test_video(params: dict, corpus, tmp_path: Path) -> None:
    root = corpus[0]
    eval_rows = (root / SEGMENT_FILES["eval"]).read_text().splitlines()
    first = next(line for line in eval_rows if not line.startswith("#") and "/t/dd00031" in line)
    ytid = first.split(",")[0]
    train = tmp_path / "extra_train.csv"
    train.write_text(f'# a\n# b\n# c\n{ytid}, 100.000, 110.000, "/t/dd00031"\n')
    cfg = select_cfg(params, corpus, f"select_audioset.segments.extra.url={train}",
                     "select_audioset.train_from=[unbalanced_train, extra]")  # fmt: skip
    metrics = select_audioset(cfg, tmp_path)
    assert metrics["dropped_overlap"] == 1
    table = pq.read_table(tmp_path / "data/audioset/selection.parquet").to_pandas()
    assert (table.ytid == ytid).sum() == 1 and table.split[table.ytid == ytid].item() == "test"


def test_unknown_class_names_the_choices(params: dict, corpus, tmp_path: Path) -> None:
    cfg = select_cfg(params, corpus, "select_audioset.classes=[Happy music, Gloomy music]")
    with pytest.raises(ConfigError, match=r"\['Gloomy music'\] not in the ontology.*Tender music"):
        select_audioset(cfg, tmp_path)


def test_any_of_the_seven_moods_by_configuration(params: dict, corpus, tmp_path: Path) -> None:
    cfg = select_cfg(params, corpus, "select_audioset.classes=[Tender music, Exciting music]")
    metrics = select_audioset(cfg, tmp_path)
    assert metrics["per_split"] == {"test": {"exciting": 1}, "train": {"tender": 1}}


def test_clip_lists_in_the_study_format(params: dict, corpus, tmp_path: Path) -> None:
    lists = {}
    for split, moods in (("train", ["Happy music", "Sad music"]), ("test", ["Scary music", "Scary music"])):
        lines = [f"AAAAAAAAA{i}{split[1]} {10 * i}.000 {10 * i + 10}.000 AAAAAAAAA{i}{split[1]}_{10 * i}.000 \"{m}\""
                 for i, m in enumerate(moods)]  # fmt: skip
        lists[split] = tmp_path / f"moods_{split}.csv"
        lists[split].write_text("\n".join(lines) + "\n")
    ontology = read_ontology(corpus[0] / ONTOLOGY)
    segments, bad = read_clip_list(lists["train"], "moods_train.csv", ontology)
    assert not bad
    assert [(s.ytid, s.start, s.end, s.labels) for s in segments] == [
        ("AAAAAAAAA0r", 0.0, 10.0, ("/t/dd00031",)), ("AAAAAAAAA1r", 10.0, 20.0, ("/t/dd00033",))]
    cfg = select_cfg(params, corpus, "select_audioset.source=clip_lists",
                     f"select_audioset.clip_lists={{train: {{url: {lists['train']}}}, test: {{url: {lists['test']}}}}}")
    metrics = select_audioset(cfg, tmp_path)
    assert metrics["per_split"] == {"test": {"scary": 2}, "train": {"happy": 1, "sad": 1}}
