"""The arithmetic of a full AudioSet mood pull, from measured figures (docker/SCALING.md quotes its output).

    .venv/bin/python benchmarks/scaling.py

It measures the selection itself: select_audioset with `quota: null` on the real segment lists in
../shared/data/audioset (the study's four moods, then all seven Music mood classes). The rates come from
the benchmarks' own results, so run them first, on the machine in question:
    benchmarks/audioset_download.py   clips per hour per session under the request budget (the mirror)
    benchmarks/features.py            features_slices and features_vggish throughput on CPU
    benchmarks/train.py               training samples/s per architecture (CPU; CUDA where torch sees one)
Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tasks.audioset.select import select_audioset  # noqa: E402
from tasks.config import apply_overrides, load_params, section_config  # noqa: E402

RESULTS = PROJECT / "benchmarks" / "results"
SHARED = PROJECT.parent / "shared" / "data" / "audioset"
STUDY = ["Happy music", "Sad music", "Angry music", "Scary music"]
ALL_MOODS = [*STUDY, "Funny music", "Tender music", "Exciting music"]
SESSIONS = (1, 4, 16)
EXAMPLE_SECONDS = 0.96  # one VGGish example
MOOD_SUBSET = "mood_subset_unbalanced_train_segments.csv"  # the mood rows of the official unbalanced list


def selection_size(classes: list[str]) -> dict[str, int]:
    """Segments select_audioset picks with no quota (single-mood segments, the default multi_label: drop)."""
    overrides = [f"select_audioset.ontology.url={SHARED / 'ontology.json'}",
                 f"select_audioset.segments.eval.url={SHARED / 'eval_segments.csv'}",
                 f"select_audioset.segments.balanced_train.url={SHARED / 'balanced_train_segments.csv'}",
                 f"select_audioset.segments.unbalanced_train.url={SHARED / MOOD_SUBSET}",
                 "select_audioset.quota.train=null", "select_audioset.quota.test=null",
                 f"select_audioset.classes={json.dumps(classes)}"]  # fmt: skip
    cfg = section_config(apply_overrides(load_params(PROJECT / "params.yaml"), overrides), "select_audioset")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = select_audioset(cfg, Path(tmp))
    return {"segments": metrics["selected"], **{split: sum(c.values()) for split, c in metrics["per_split"].items()}}


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run benchmarks/{name}.py first")
    return json.loads(path.read_text())


def main() -> int:
    if not SHARED.exists():
        sys.exit(f"the real AudioSet lists are not at {SHARED}")
    download, features, train = load("audioset_download"), load("features"), load("train")
    budget = load_params(PROJECT / "params.yaml")["acquire_audioset"]["max_requests_per_hour"]
    per_session = budget * download["budget"]["ratio_to_budget"]  # clips/h: one request per clip attempt
    slices = features["slices"]
    audio_s_per_s = features["corpus"]["audio_seconds"] * slices["clips_per_s"]["stage"] / features["corpus"]["clips"]
    vggish_audio_s_per_s = features["vggish"]["stage_cpu"]["examples_per_s"] * EXAMPLE_SECONDS
    cores = features["machine"]["stage_workers"]
    cpu_seconds = {"slices": round(3600 / audio_s_per_s * cores, 1),
                   "vggish": round(3600 / vggish_audio_s_per_s * cores, 1)}  # fmt: skip
    samples = {arch: round(row["samples_per_s"], 1) for arch, row in train["cpu"].items()}
    out = {"budget_per_hour": budget, "clips_per_hour_per_session": round(per_session, 1), "pulls": {},
           "features_cpu_seconds_per_audio_hour": cpu_seconds, "training_samples_per_s_cpu": samples}
    print(f"request budget {budget:.0f}/h x measured {download['budget']['ratio_to_budget']:.3f} = "
          f"{per_session:.0f} clips/h per session")  # fmt: skip
    for label, classes in (("study moods", STUDY), ("all seven moods", ALL_MOODS)):
        size = selection_size(classes)
        hours = {n: round(size["segments"] / (per_session * n), 1) for n in SESSIONS}
        audio_hours = round(size["segments"] * 10 / 3600, 1)  # AudioSet segments are 10 s
        out["pulls"][label] = {**size, "hours_by_sessions": hours, "audio_hours": audio_hours}
        print(f"{label}: {size['segments']} segments ({size.get('train', 0)} train, {size.get('test', 0)} test), "
              f"{audio_hours:.1f} h of audio; pull: "
              + ", ".join(f"{n} session{'s' if n > 1 else ''} {h:.1f} h" for n, h in hours.items()))  # fmt: skip
    f = out["features_cpu_seconds_per_audio_hour"]
    print(f"features per hour of audio on CPU: slices {f['slices']:.0f} CPU-s, VGGish {f['vggish']:.0f} CPU-s "
          f"({cores} cores measured)")  # fmt: skip
    print("training samples/s on CPU:", ", ".join(f"{arch} {n:g}" for arch, n in samples.items()))
    (RESULTS / "scaling.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {(RESULTS / 'scaling.json').relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
