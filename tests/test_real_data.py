"""Real RAVDESS and CAL500 files from ../shared/data (skipped with a reason when absent)."""

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.cal500 import song_labels
from tasks.config import apply_overrides, section_config
from tasks.ravdess import acquire_ravdess, scan_files

from .conftest import shared

pytestmark = pytest.mark.realdata


def test_real_48k_wavs_parse_and_store(params: dict, tmp_path: Path) -> None:
    src = shared("ravdess", "song_wav48k")
    archive = Path(shutil.make_archive(str(tmp_path / "Audio_Song_Actors_01-24"), "zip", src))
    cfg = section_config(apply_overrides(params, [f"acquire_ravdess.download.url={archive}"]), "acquire_ravdess")
    metrics = acquire_ravdess(cfg, tmp_path)
    assert metrics["clips"] == 72 and metrics["failed"] == 0 and metrics["actors"] == 6
    assert metrics["per_label"] == dict.fromkeys(["angry", "calm", "fearful", "happy", "neutral", "sad"], 12)
    manifest = pq.read_table(tmp_path / "data/raw/ravdess/manifest.parquet").to_pandas()
    assert sorted(manifest.actor.unique()) == [1, 2, 5, 6, 11, 12]
    assert (manifest.sample_rate == 48000).all() and (manifest.channels == 1).all()
    assert manifest.duration_s.between(3.7, 6.2).all()
    assert set(manifest.gender[manifest.actor % 2 == 1]) == {"male"}


def test_real_flac_set_of_actors_01_to_20_parses_into_full_actors() -> None:
    _, names, failures = scan_files(shared("ravdess", "song_flac16k"))
    assert failures == [] and len(names) == 836
    per_actor = Counter(n.actor for n in names.values())
    assert sorted(per_actor) == [a for a in range(1, 21) if a != 18]  # actor 18 recorded no songs
    assert set(per_actor.values()) == {44}
    by_emotion = Counter(n.emotion for n in names.values())
    assert by_emotion == {"neutral": 76, "calm": 152, "happy": 152, "sad": 152, "angry": 152, "fearful": 152}
    assert all(n.intensity == "normal" for n in names.values() if n.emotion == "neutral")
    assert {n.vocal_channel for n in names.values()} == {"song"} and {n.modality for n in names.values()} == {"audio"}
    per_actor_emotion = Counter((n.actor, n.emotion, n.intensity) for n in names.values())
    assert set(per_actor_emotion.values()) == {4}  # 2 statements x 2 repetitions of every take


def test_real_cal500_annotations_map_to_stated_label_counts(params: dict) -> None:
    tags = defaultdict(set)
    for line in shared("cal500", "sness_cal500_ground_truth.txt").read_text().splitlines():
        song, tag = line.split("\t")
        tags[song].add(tag)
    assert len(tags) == 491
    cfg = section_config(params, "acquire_cal500")
    labels = {song: song_labels(t, cfg.vocabularies["ravdess"], cfg.not_emotion_rule) for song, t in tags.items()}
    per_label = Counter(label for ls in labels.values() for label in ls)
    assert per_label == {"calm": 145, "happy": 134, "sad": 58, "angry": 48}  # no fear tag in CAL500
    kept = [ls for ls in labels.values() if ls]
    single = [ls for ls in kept if len(ls) == 1]
    assert len(kept) == 318 and len(single) == 251
    assert Counter(ls[0] for ls in single) == {"calm": 84, "happy": 100, "sad": 25, "angry": 42}
    audioset = Counter(
        label for t in tags.values() for label in song_labels(t, cfg.vocabularies["audioset"], cfg.not_emotion_rule)
    )
    assert audioset == {"happy": 134, "sad": 58, "angry": 48}


@pytest.mark.slow
def test_real_ravdess_baseline_on_held_out_singers(tmp_path: Path, mlflow_server: str) -> None:
    """The log-mel statistics baseline on real sung emotions of singers it never heard (actor folds)."""
    from devtools.workspace import make_workspace
    from tasks.cli import run_stage

    archive = shutil.make_archive(str(tmp_path / "Audio_Song_Actors_01-24"), "zip", shared("ravdess", "song_flac16k"))
    ws = make_workspace(tmp_path / "ws", [f"acquire_ravdess.download.url={archive}",
                                          "features_slices.datasets=[ravdess]",
                                          f"train.common.tracking_uri={mlflow_server}",
                                          "train.common.registry_prefix=realdata"])  # fmt: skip
    run_stage("acquire_ravdess", ws)
    run_stage("features_slices", ws)
    result = run_stage("train_spectrogram@stats_ravdess", ws)["stats_ravdess"]
    # Fold 0 of 5 by actor holds out 4 of the 19 singers (176 clips); chance is 1/6, the study reports 74%.
    assert result["val_clips"] == 176 and result["train_clips"] == 660
    assert result["val_clip_accuracy"] >= 2 * result["chance"] and result["majority_baseline"] < 0.25
