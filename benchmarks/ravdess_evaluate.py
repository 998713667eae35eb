"""The evaluation stage on the real RAVDESS song clips: the default models, speaker-independent (not a test).

    .venv/bin/python benchmarks/ravdess_evaluate.py [--keep DIR]     # or: make bench-eval  (~3 min on 2 cores)

Reads ../shared/data/ravdess/song_flac16k (836 song clips of actors 01-20 but 18), runs the real stages in a
throwaway workspace with the default params (acquire_ravdess from a zip of those files, features_slices,
train_spectrogram@cnn_ravdess and @stats_ravdess on fold 0 of 5 folds by actor, evaluate_spectrogram for both,
evaluate_summary), logging to a local MLflow server it starts. Prints each model's held-out songs by majority,
soft and threshold voting with their bootstrap intervals, beside the most-common-label baseline and chance,
and the confusion matrix; writes benchmarks/results/ravdess_evaluate.json. --keep keeps the workspace (the
HTML reports are under reports/models/<name>/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from devtools.workspace import MlflowServer, make_workspace
from tasks.cli import configure_logging, run_stage

PROJECT = Path(__file__).resolve().parents[1]
SOURCE = PROJECT.parent / "shared/data/ravdess/song_flac16k"
MODELS = ("cnn_ravdess", "stats_ravdess")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="keep the workspace and MLflow store here")
    args = parser.parse_args()
    configure_logging()
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} is absent: this benchmark needs ../shared/data")
    root = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="ravdess-evaluate-"))
    started = time.monotonic()
    try:
        with MlflowServer(root / "mlflow") as mlflow:
            zipped = shutil.make_archive(str(root / "Audio_Song_Actors_01-24"), "zip", SOURCE)
            ws = make_workspace(root / "ws", [f"acquire_ravdess.download.url={zipped}",
                                              "features_slices.datasets=[ravdess]",
                                              f"train.common.tracking_uri={mlflow.url}",
                                              f"evaluate.tracking_uri={mlflow.url}"])  # fmt: skip
            for stage in ("acquire_ravdess", "features_slices", *(f"train_spectrogram@{m}" for m in MODELS),
                          *(f"evaluate_spectrogram@{m}" for m in MODELS), "evaluate_summary"):  # fmt: skip
                run_stage(stage, ws)
            results = {}
            for name in MODELS:
                metrics = json.loads((ws / f"metrics/evaluate_{name}.json").read_text())
                held = metrics["test_sets"]["ravdess_held_out"]
                card = json.loads((ws / f"models/{name}/model.json").read_text())
                matrix = pd.read_csv(ws / f"reports/models/{name}/confusion_ravdess_held_out_counts.csv", index_col=0)
                actors = sorted({int(c.split("-")[-1]) for c in card["val_clips"]})
                results[name] = {"held_out_actors": actors, **held, "confusion": matrix.to_dict("split")}
                print(f"\n{name} ({card['arch']}) on held-out singers {actors}: {held['songs']} clips; majority "
                      f"{held['majority']['accuracy']:.3f} [{held['majority']['ci95_low']:.3f}-"
                      f"{held['majority']['ci95_high']:.3f}], soft {held['soft']['accuracy']:.3f}, threshold "
                      f"{held['threshold']['threshold']} {held['threshold']['accuracy']:.3f} at coverage "
                      f"{held['threshold']['coverage']:.3f}; most-common-label baseline "
                      f"{held['baseline_accuracy']:.3f}, chance {held['chance']:.3f}")  # fmt: skip
                print(matrix.to_string())
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    out = PROJECT / "benchmarks/results/ravdess_evaluate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": round(time.monotonic() - started, 1), "models": results}, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
