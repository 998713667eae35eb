import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from devtools.mirror.package import load_cal500_vocab
from tasks.cal500 import acquire_cal500, read_annotations, song_labels
from tasks.config import apply_overrides, section_config
from tasks.storage import StageFailed

VOCAB = {"happy": ["Emotion-Happy"], "sad": ["Emotion-Sad"], "calm": ["Emotion-Calming_/_Soothing"]}


def cfg_for(params: dict, url: Path | str, *extra: str):
    return section_config(apply_overrides(params, [f"acquire_cal500.download.url={url}", *extra]), "acquire_cal500")


def test_song_labels_with_and_without_the_not_emotion_veto() -> None:
    tags = {"Emotion-Happy", "Emotion-Sad", "NOT-Emotion-Sad", "Genre-Rock"}
    assert song_labels(tags, VOCAB, "ignore") == ["happy", "sad"]
    assert song_labels(tags, VOCAB, "veto") == ["happy"]
    assert song_labels({"Genre-Rock"}, VOCAB, "veto") == []


def rewrite_archive(src: Path, dest: Path, edit) -> Path:
    """Copy a CAL500 tar.gz, letting `edit(name, data)` change (or drop, with None) each member."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read() if member.isfile() else None
            if data is not None:
                data = edit(member.name, data)
                if data is None:
                    continue
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def test_acquire_maps_tags_filters_and_stores(params: dict, cal500_archive: Path, tmp_path: Path) -> None:
    metrics = acquire_cal500(cfg_for(params, cal500_archive), tmp_path)
    out = tmp_path / "data/raw/cal500"
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    assert (out / "vocab.txt").read_text().split() == load_cal500_vocab()
    assert metrics["songs_annotated"] == 6 and metrics["failed"] == 0
    assert metrics["clips"] + metrics["filtered"] == 6 and metrics["clips"] == len(manifest)
    assert all(len(tags) == 174 for tags in manifest.tags_hard) and all(len(t) == 174 for t in manifest.tags_soft)
    vocab = load_cal500_vocab()
    for row in manifest.itertuples():  # labels agree with the song's own hard annotations
        positive = {t for t, on in zip(vocab, row.tags_hard, strict=True) if on}
        assert row.labels == song_labels(positive, params["acquire_cal500"]["vocabularies"]["ravdess"], "veto")
        assert list(row.labels_ravdess) == list(row.labels)
        assert row.labels  # the filter keeps only songs with a training label
    assert (manifest.duration_s > 2.5).all() and (manifest.duration_s < 5.5).all()


def test_single_label_rule_keeps_a_subset(params: dict, cal500_archive: Path, tmp_path: Path) -> None:
    any_ = acquire_cal500(cfg_for(params, cal500_archive), tmp_path / "any")
    single = acquire_cal500(cfg_for(params, cal500_archive, "acquire_cal500.keep=single"), tmp_path / "one")
    assert single["clips"] <= any_["clips"]
    manifest = pq.read_table(tmp_path / "one/data/raw/cal500/manifest.parquet").to_pandas()
    assert all(len(labels) == 1 for labels in manifest.labels)


def test_hostile_name_missing_and_corrupt_mp3_are_failures(params: dict, cal500_archive: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture):  # fmt: skip
    with tarfile.open(cal500_archive) as tf:
        songs = tf.extractfile("CAL500/songNames.txt").read().decode().split()
    victims = {"missing": songs[0], "corrupt": songs[1], "renamed": songs[2]}

    def edit(name: str, data: bytes) -> bytes | None:
        if name.endswith(f"/{victims['missing']}.mp3"):
            return None
        if name.endswith(f"/{victims['corrupt']}.mp3"):
            return data[: len(data) // 3]
        if name.endswith("songNames.txt"):
            return data.decode().replace(victims["renamed"], "../../etc/passwd").encode()
        return data

    hostile = rewrite_archive(cal500_archive, tmp_path / "hostile.tar.gz", edit)
    # Keep all songs so each victim is stored or failed, whatever its mood.
    everything = "acquire_cal500.vocabularies.ravdess.any=[" + ",".join(load_cal500_vocab()) + "]"
    cfg = cfg_for(params, hostile, everything, "acquire_cal500.store.max_failure_share=1.0",
                  "acquire_cal500.not_emotion_rule=ignore")  # fmt: skip
    metrics = acquire_cal500(cfg, tmp_path)
    failures = pq.read_table(tmp_path / "data/raw/cal500/failures.parquet").to_pandas().set_index("id")
    assert failures.loc[victims["missing"], "reason"] == "missing_file"
    assert failures.loc[victims["corrupt"], "reason"] == "decode"
    assert failures.loc["../../etc/passwd", "reason"] == "bad_name"
    assert metrics["clips"] == 3 and metrics["failed"] == 3
    assert not (tmp_path.parent / "etc").exists()
    # Each failure is one WARNING naming the stage, the clip and the reason, so a warning filter shows it.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for stage, clip, reason in [
        ("acquire_cal500", victims["missing"], "missing_file"),
        ("acquire_cal500", victims["corrupt"], "decode"),
        ("parse", "../../etc/passwd", "bad_name"),
    ]:
        assert [m for m in warnings if m.startswith(f"{stage}: clip {clip} failed: {reason}: ")], warnings


def test_inconsistent_annotation_files_stop_with_a_clear_message(params, cal500_archive: Path, tmp_path: Path):
    def drop_a_row(name: str, data: bytes) -> bytes:
        return b"\n".join(data.splitlines()[:-1]) + b"\n" if name.endswith("hardAnnotations.txt") else data

    bad = rewrite_archive(cal500_archive, tmp_path / "bad.tar.gz", drop_a_row)
    with pytest.raises(StageFailed, match=r"hardAnnotations.txt: 5 rows but songNames.txt lists 6 songs"):
        acquire_cal500(cfg_for(params, bad), tmp_path)


def test_read_annotations_parses_the_official_layout(cal500_archive: Path, tmp_path: Path) -> None:
    with tarfile.open(cal500_archive) as tf:
        tf.extractall(tmp_path, filter="data")
    ann = read_annotations(tmp_path / "CAL500")
    assert len(ann.songs) == 6 and ann.vocab == load_cal500_vocab()
    assert ann.hard.shape == ann.soft.shape == (6, 174)
    assert np.isin(ann.hard, (0, 1)).all() and ((ann.soft >= 0) & (ann.soft <= 1)).all()


def test_full_length_songs_are_stored_whole(params: dict, tmp_path: Path) -> None:
    """Real CAL500 songs run 3-5 minutes; they must go through decode and store intact."""
    from devtools.mirror.package import build_cal500_archive

    archive = build_cal500_archive(tmp_path / "long.tar.gz", n_songs=1, seed=3, min_seconds=200, max_seconds=200)
    everything = "acquire_cal500.vocabularies.ravdess.any=[" + ",".join(load_cal500_vocab()) + "]"
    metrics = acquire_cal500(cfg_for(params, archive, everything, "acquire_cal500.not_emotion_rule=ignore"), tmp_path)
    assert metrics["clips"] == 1
    manifest = pq.read_table(tmp_path / "data/raw/cal500/manifest.parquet").to_pylist()
    assert abs(manifest[0]["duration_s"] - 200) < 0.2


def test_a_changed_mapping_rewrites_stored_shards_in_place_as_a_fresh_run_would(
        params: dict, cal500_archive: Path, tmp_path: Path) -> None:  # fmt: skip
    """The Airflow path runs the stage where its outputs already are; a shard whose labels came from other
    params must be written again, so it stores what `dvc repro` (outputs removed first) stores."""
    acquire_cal500(cfg_for(params, cal500_archive), tmp_path / "in_place")
    before = pq.read_table(tmp_path / "in_place/data/raw/cal500/manifest.parquet").to_pandas()
    assert any("sad" in labels for labels in before.labels_audioset)
    change = "acquire_cal500.vocabularies.audioset.sad=[]"  # the training filter (ravdess) keeps the same songs
    acquire_cal500(cfg_for(params, cal500_archive, change), tmp_path / "in_place")
    acquire_cal500(cfg_for(params, cal500_archive, change), tmp_path / "fresh")
    in_place, fresh = (pq.read_table(tmp_path / d / "data/raw/cal500/manifest.parquet").to_pandas()
                       for d in ("in_place", "fresh"))  # fmt: skip
    assert list(in_place.id) == list(before.id)
    assert not any("sad" in labels for labels in in_place.labels_audioset)
    for column in ("id", "labels", "labels_audioset", "labels_ravdess", "sha256", "shard"):
        assert [list(v) if not isinstance(v, str) else v for v in in_place[column]] == \
            [list(v) if not isinstance(v, str) else v for v in fresh[column]], column  # fmt: skip
    stores = [tmp_path / d / "data/raw/cal500" for d in ("in_place", "fresh")]
    in_place_files, fresh_files = ({str(p.relative_to(s)): p.read_bytes() for p in s.rglob("*") if p.is_file()}
                                   for s in stores)  # fmt: skip
    assert in_place_files == fresh_files  # the rewritten shards replaced the old ones, byte for byte as afresh
