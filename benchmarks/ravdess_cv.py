"""Speaker-independent 5-fold cross-validation by actor on the real RAVDESS song clips (not a test).

    .venv/bin/python benchmarks/ravdess_cv.py [--archs logreg_stats,small_cnn] [--folds 5] [--out NAME]
                                              [-S features_slices.tail=align_end -S train.common.min_real_share=0 ...]

Reads ../shared/data/ravdess/song_flac16k (every song clip of actors 01-20 but 18, 836 clips), runs the
real stages in a throwaway workspace (acquire_ravdess from a zip of those files, features_slices,
then train_spectrogram@<arch>_fold<k> for each fold, logging to a local MLflow server it starts), and pools the
folds: clip-level accuracy by majority vote over all 836 held-out predictions with its 95% Wilson
interval, beside the majority-class baseline and the published 74% (speaker-independent, same song set).
Writes benchmarks/results/<out>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from devtools.workspace import MlflowServer, make_workspace
from tasks.cli import configure_logging, run_stage
from tasks.train.report import accuracy_interval

PROJECT = Path(__file__).resolve().parents[1]
SOURCE = PROJECT.parent / "shared/data/ravdess/song_flac16k"
PUBLISHED = 0.74


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="logreg_stats,small_cnn")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of the run (features_slices.tail, train.common.min_real_share, ...)")
    parser.add_argument("--out", default="ravdess_cv")
    args = parser.parse_args()
    configure_logging()
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} is absent: this benchmark needs ../shared/data")
    archs = args.archs.split(",")
    with tempfile.TemporaryDirectory() as tmp, MlflowServer(Path(tmp) / "mlflow") as mlflow:
        zipped = shutil.make_archive(str(Path(tmp) / "Audio_Song_Actors_01-24"), "zip", SOURCE)
        models = {f"{arch}_fold{k}": {"arch": arch, "dataset": "ravdess", "seed": args.seed,
                                      "split": {"kind": "actor_folds", "k": args.folds, "fold": k}}
                  for arch in archs for k in range(args.folds)}  # fmt: skip
        overrides = [f"acquire_ravdess.download.url={zipped}", "features_slices.datasets=[ravdess]",
                     f"train.common.tracking_uri={mlflow.url}", f"train.models={json.dumps({'spectrogram': models})}",
                     "train.common.registry_prefix=cv", *args.overrides]  # fmt: skip
        ws = make_workspace(Path(tmp) / "ws", overrides)
        for stage in ("acquire_ravdess", "features_slices"):
            run_stage(stage, ws)
        results: dict[str, dict] = {}
        for arch in archs:
            folds = []
            for k in range(args.folds):
                started = time.monotonic()
                r = run_stage(f"train_spectrogram@{arch}_fold{k}", ws)[f"{arch}_fold{k}"]
                folds.append({"fold": k, "val_clips": r["val_clips"], "accuracy": r["val_clip_accuracy"],
                              "correct": round(r["val_clip_accuracy"] * r["val_clips"]),
                              "majority_baseline": r["majority_baseline"], "epochs_run": r["epochs_run"],
                              "best_epoch": r["best_epoch"], "seconds": round(time.monotonic() - started, 1)})
            n = sum(f["val_clips"] for f in folds)
            correct = sum(f["correct"] for f in folds)
            low, high = accuracy_interval(correct, n)
            baseline = sum(f["majority_baseline"] * f["val_clips"] for f in folds) / n
            results[arch] = {"accuracy": correct / n, "ci95": [low, high], "clips": n, "folds": folds,
                             "majority_baseline": baseline, "published": PUBLISHED}
    settings = {"folds": args.folds, "seed": args.seed, "overrides": args.overrides}
    print(f"\nRAVDESS song, actors 01-20, {args.folds}-fold CV by actor, clip accuracy by vote ({settings})")
    print(f"{'model':<14} {'accuracy':>8} {'95% CI':>15} {'majority':>9} {'published':>9} {'ratio':>6} per fold")
    for arch, r in results.items():
        per_fold = " ".join(f"{f['accuracy']:.3f}" for f in r["folds"])
        low, high = r["ci95"]
        print(f"{arch:<14} {r['accuracy']:>8.3f} {low:>7.3f}-{high:.3f} {r['majority_baseline']:>9.3f} "
              f"{PUBLISHED:>9.2f} {r['accuracy'] / PUBLISHED:>5.2f}x {per_fold}")
    out = PROJECT / "benchmarks/results" / f"{args.out}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "results": results, "machine": platform.platform(),
                               "torch_threads": torch.get_num_threads()}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
