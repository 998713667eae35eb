"""An AudioSet-style tree for the offline mirror: ontology, segment CSVs and one media file per video.

    audioset/ontology.json                      the Music mood subtree (real ids and names) + a few others
    audioset/{eval,balanced_train,unbalanced_train}_segments.csv   the official format
    youtube/<ytid>.m4a                          what the URL template `<mirror>/youtube/{ytid}.m4a` serves

Besides single-mood clips it lists what real lists hold: segments with two mood labels, other
moods, non-music classes, and videos that fail: gone (no media: HTTP 404), shorter than their
segment, and silent.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devtools.mirror.package import AUDIOSET_SAMPLE_RATE, MEDIA_FORMATS, _encode, build_audioset_media, file_rng

ONTOLOGY = "audioset/ontology.json"
SEGMENT_FILES = {
    "eval": "audioset/eval_segments.csv",
    "balanced_train": "audioset/balanced_train_segments.csv",
    "unbalanced_train": "audioset/unbalanced_train_segments.csv",
}
MEDIA_DIR = "youtube"
MEDIA_EXT = "m4a"
URL_TEMPLATE = MEDIA_DIR + "/{ytid}." + MEDIA_EXT

MUSIC, MUSIC_MOOD = "/m/04rlf", "/t/dd00030"
MOOD_CLASSES = {
    "/t/dd00031": "Happy music", "/t/dd00032": "Funny music", "/t/dd00033": "Sad music",
    "/t/dd00034": "Tender music", "/t/dd00035": "Exciting music", "/t/dd00036": "Angry music",
    "/t/dd00037": "Scary music",
}  # fmt: skip
STUDY_MOODS = ["/t/dd00031", "/t/dd00033", "/t/dd00036", "/t/dd00037"]  # Happy, Sad, Angry, Scary
SPEECH, DOG = "/m/09x0r", "/m/0bt9lr"
YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class Row:
    file: str  # key of SEGMENT_FILES
    ytid: str
    start: float
    end: float
    labels: tuple[str, ...]
    media: str  # "mood" (generated music), "none" (404), "short", "silent"


def ontology_entries() -> list[dict[str, object]]:
    def entry(cid: str, name: str, desc: str, children: list[str], abstract: bool = False) -> dict[str, object]:
        return {"id": cid, "name": name, "description": desc, "citation_uri": "", "positive_examples": [],
                "child_ids": children, "restrictions": ["abstract"] if abstract else []}  # fmt: skip

    moods = [entry(cid, name, f"Music that evokes or conveys {name.split()[0].lower()} feelings.", [])
             for cid, name in MOOD_CLASSES.items()]  # fmt: skip
    return [
        entry(MUSIC, "Music", "Generated stand-in of the AudioSet Music class.", [MUSIC_MOOD]),
        entry(MUSIC_MOOD, "Music mood", "Music categories that indicate the emotional affect of music.",
              list(MOOD_CLASSES), abstract=True),
        *moods,
        entry(SPEECH, "Speech", "Generated stand-in of the AudioSet Speech class.", []),
        entry(DOG, "Dog", "Generated stand-in of the AudioSet Dog class.", []),
    ]


def plan_rows(seed: int, per_class: tuple[int, int], missing: int, segment_s: float, media_s: float) -> list[Row]:
    """Every listed segment, deterministic in the seed."""
    rng = file_rng(seed, "audioset/plan")
    used: set[str] = set()

    def ytid() -> str:
        while True:
            value = "".join(YTID_ALPHABET[i] for i in rng.integers(len(YTID_ALPHABET), size=11))
            if value not in used:
                used.add(value)
                return value

    def start() -> float:
        return float(rng.integers(0, int(media_s - segment_s) + 1))

    rows: list[Row] = []
    n_train, n_test = per_class
    for cid in STUDY_MOODS:
        for i in range(n_train):
            s = start()
            rows.append(Row("balanced_train" if i == 0 else "unbalanced_train", ytid(), s, s + segment_s,
                            (MUSIC, cid), "mood"))  # fmt: skip
        for _ in range(n_test):
            s = start()
            rows.append(Row("eval", ytid(), s, s + segment_s, (MUSIC, cid), "mood"))
    for index in rng.permutation(len(rows))[:missing]:
        rows[index] = Row(**{**rows[index].__dict__, "media": "none"})
    extras = [
        ("eval", (MUSIC, "/t/dd00033", "/t/dd00037"), "mood"),  # two moods: dropped by default
        ("unbalanced_train", (MUSIC, "/t/dd00031", "/t/dd00036"), "mood"),
        ("unbalanced_train", (MUSIC, "/t/dd00034"), "mood"),  # moods outside the study's four
        ("eval", (MUSIC, "/t/dd00035"), "mood"),
        ("unbalanced_train", (SPEECH,), "none"),  # not music at all
        ("eval", (DOG,), "none"),
        ("unbalanced_train", (MUSIC, "/t/dd00031"), "short"),  # the video ends inside the segment
        ("unbalanced_train", (MUSIC, "/t/dd00033"), "silent"),
    ]
    for file, labels, media in extras:
        s = start()
        rows.append(Row(file, ytid(), s, s + segment_s, labels, media))
    return rows


def _csv(rows: list[Row]) -> str:
    labels = {label for r in rows for label in r.labels}
    head = ("# Segments csv created by the mood pipeline's offline mirror\n"
            f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(labels)}, "
            f"num_positive_labels={sum(len(r.labels) for r in rows)}\n"
            "# YTID, start_seconds, end_seconds, positive_labels\n")  # fmt: skip
    body = "".join(f'{r.ytid}, {r.start:.3f}, {r.end:.3f}, "{",".join(r.labels)}"\n'
                   for r in sorted(rows, key=lambda r: r.ytid))  # fmt: skip
    return head + body


def _mood(labels: tuple[str, ...]) -> str:
    return MOOD_CLASSES[next(c for c in labels if c in MOOD_CLASSES)]


def build_audioset_tree(out: Path, seed: int, per_class: tuple[int, int], missing: int, segment_s: float,
                        media_s: float) -> list[str]:  # fmt: skip
    """Write the tree under `out`; returns the relative paths written."""
    rows = plan_rows(seed, per_class, missing, segment_s, media_s)
    (out / "audioset").mkdir(parents=True, exist_ok=True)
    media_dir = out / MEDIA_DIR
    shutil.rmtree(media_dir, ignore_errors=True)  # videos of an earlier spec must not linger
    media_dir.mkdir(parents=True, exist_ok=True)
    (out / ONTOLOGY).write_text(json.dumps(ontology_entries(), indent=2) + "\n")
    for name, rel in SEGMENT_FILES.items():
        (out / rel).write_text(_csv([r for r in rows if r.file == name]))
    music = [(r.ytid, _mood(r.labels), r.start, r.end) for r in rows if r.media == "mood"]
    build_audioset_media(media_dir, music, seed, media_s, MEDIA_EXT)
    for r in rows:
        if r.media == "short":  # the video stops halfway through the segment
            half = (r.start + r.end) / 2
            build_audioset_media(media_dir, [(r.ytid, _mood(r.labels), r.start, half)], seed, half, MEDIA_EXT)
        elif r.media == "silent":
            muxer, codec = MEDIA_FORMATS[MEDIA_EXT]
            silence = np.zeros(round(media_s * AUDIOSET_SAMPLE_RATE), dtype=np.float32)
            _encode(silence, AUDIOSET_SAMPLE_RATE, media_dir / f"{r.ytid}.{MEDIA_EXT}", muxer, codec, channels=2)
    media = sorted(f"{MEDIA_DIR}/{p.name}" for p in media_dir.iterdir() if p.suffix == f".{MEDIA_EXT}")
    return [ONTOLOGY, *SEGMENT_FILES.values(), *media]
