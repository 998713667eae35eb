"""Prediction throughput against the features stage, in one run on the same songs (not a test).

    .venv/bin/python benchmarks/predict.py [--songs 6] [--seconds 180] [--format mp3] [--repeats 3]

The goal (the prediction issue): prediction should cost little more than features. Synthesized songs
(--seconds long, 44.1 kHz stereo, as CAL500 stores them) are written as audio files (mp3 by ffmpeg, wav or
flac) in a folder and, the same clips, as a raw clip store. Prints, side by side:
  (a) the work of `python -m tasks predict <folder>` on the CPU with a small_cnn (tasks.predict: expand the
      folder, decode each file, the card's slices, the net, the vote), files/s and seconds of audio per second;
  (b) the features_slices stage (read shard + decode + resample + log-mel + slices + write Parquet) over
      the store, files/s;
  (c) prediction / features as a ratio, best of each and repeat by repeat (median, min-max), and the
      prediction split into its parts, each on one thread (decode, features, net + vote), to say where the
      time goes;
  (d) with a GPU only: the same prediction with a study net (resnet50) on CUDA.
The nets have seeded, UNTRAINED weights: their moods mean nothing, the figures are speed only. Each figure
is the best of --repeats interleaved runs. Writes benchmarks/results/predict.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

import tasks.features.slices as slices_module
from devtools.mirror.store import synth_clip, write_store
from tasks.config import ArchConfig, PredictConfig, apply_overrides, load_params, section_config
from tasks.evaluate.model import build_model, load_dvc_model
from tasks.features.dataset import code_version
from tasks.features.slices import features_slices
from tasks.features.stage import WORKERS, torch_threads
from tasks.predict.inputs import Item, Limits, expand, load, loaders
from tasks.predict.predictor import BATCH_FILES, Prediction, Predictor
from tasks.storage import Clip, params_hash

PROJECT = Path(__file__).resolve().parents[1]
MOODS = ["neutral", "calm", "happy", "sad", "angry", "fearful"]
UNTRAINED = "untrained weights: speed only"
GOAL = "prediction should cost little more than features"
DATASET = "cal500"  # a store without a split column: features_slices' default_splits make its songs `test`


def build_songs(root: Path, songs: int, seconds: float, seed: int, fmt: str) -> list[Clip]:
    """CAL500-like songs (44.1 kHz stereo) as a raw clip store and, the same clips, as audio files in root/songs."""
    clips = [synth_clip(f"artist_{i}-song_{i}", MOODS[i % 6], seconds, 44100, seed, channels=2)
             for i in range(songs)]  # fmt: skip
    write_store(root / "raw", DATASET, clips, shard_rows=16)
    folder = root / "songs"
    folder.mkdir()
    for clip in clips:
        target = folder / f"{clip.id}.{fmt}"
        if fmt == "flac":
            target.write_bytes(clip.flac.data)
        elif fmt == "wav":
            samples, rate = sf.read(io.BytesIO(clip.flac.data), dtype="int16")
            sf.write(target, samples, rate, subtype="PCM_16")
        else:  # mp3, as most songs come: ffmpeg's LAME at 192 kbit/s
            source = root / "tmp.flac"
            source.write_bytes(clip.flac.data)
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), "-c:a", "libmp3lame",
                            "-b:a", "192k", str(target)], check=True)  # fmt: skip
            source.unlink()
    return clips


def slices_params(params: dict[str, Any], root: Path, out: str) -> Any:
    return section_config(apply_overrides(params, [f"features_slices.store.out_dir={root / out}"]), "features_slices")


def model_card(params: dict[str, Any], arch: str, features_params: dict[str, Any]) -> dict[str, Any]:
    """The card tasks/train/stage.py model_card writes, for a net nobody trained."""
    train = params["train"]
    common = train["common"]
    split = train["models"]["spectrogram"]["cnn_ravdess"]["split"]
    return {
        "name": f"bench_{arch}", "arch": arch, "study": "spectrogram", "dataset": "ravdess",
        "classes": common["vocabularies"]["ravdess"], "mlflow_run_id": None, "registered_model": None,
        "version": None, "champion_version": None, "decision": None, "metrics": {"note": UNTRAINED},
        "split": {**split, "signature": None}, "val_clips": [],
        "arch_config": ArchConfig.model_validate(train["architectures"][arch]).model_dump(mode="json"),
        "sequence_length": 10, "vote_weighting": "real_share",
        "features": {"dir": None, "stage": "features_slices", "params_hash": params_hash(features_params),
                     "code_version": code_version(slices_module.__file__),
                     "frontend": features_params["frontend"], "params": features_params, "weights": None,
                     "random_vggish_weights": False},
        "weights": UNTRAINED,
    }  # fmt: skip


def save_model(folder: Path, card: dict[str, Any], seed: int) -> Path:
    """models/<name>/ as the train stage writes it: model.pt (a state dict) beside model.json."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    torch.save(build_model(card).state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps(card, indent=2))
    return folder


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def predict_folder(predictor: Predictor, items: list[Item], cfg: PredictConfig, root: Path) -> list[Prediction]:
    """What tasks/predict/cli.py `run` does, less the progress bar: decode -> rows -> net -> vote."""
    out = list(predictor.predict(loaders(items, Limits.of(cfg), root / cfg.raw_dir)))
    failed = [p for p in out if p.error]
    if failed:
        raise SystemExit(f"prediction failed: {[(p.file, p.reason, p.error) for p in failed]}")
    return out


def predict_parts(predictor: Predictor, items: list[Item], cfg: PredictConfig, root: Path) -> dict[str, float]:
    """The same work as predict_folder, part by part on one thread: seconds to decode, for the card's features,
    for net + vote."""
    with torch_threads(1):
        start = time.perf_counter()
        audio = [load(item, Limits.of(cfg), root / cfg.raw_dir) for item in items]
        decoded = time.perf_counter()
        rows = [predictor.recipe.rows(*a) for a in audio]
        featured = time.perf_counter()
        pending = [(item.name, r) for item, r in zip(items, rows, strict=True)]
        for at in range(0, len(pending), BATCH_FILES):
            predictor.flush(pending[at : at + BATCH_FILES], predictor.rule, predictor.threshold)
        done = time.perf_counter()
    return {"decode": decoded - start, "features": featured - decoded, "model": done - featured}


def per_repeat(runs: dict[str, list[float]], side: str, baseline: str) -> dict[str, float]:
    """side's rate over baseline's rate, repeat by repeat: median, min, max."""
    ratios = sorted(b / s for s, b in zip(runs[side], runs[baseline], strict=True))
    return {"median": round(float(np.median(ratios)), 3), "min": round(ratios[0], 3), "max": round(ratios[-1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=6, help="songs (44.1 kHz stereo)")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of each song")
    parser.add_argument("--format", choices=["mp3", "wav", "flac"], default="mp3", help="the songs' files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each counts")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks/results/predict.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        print(f"generating {args.songs} songs of {args.seconds:g} s ({args.format}) ...", flush=True)
        build_songs(root, args.songs, args.seconds, args.seed, args.format)
        file_bytes = sum(p.stat().st_size for p in (root / "songs").iterdir())
        params = apply_overrides(load_params(PROJECT / "params.yaml"), [
            f"features_slices.store.raw_dir={root / 'raw'}", f"features_slices.store.metrics_file={root / 'm.json'}",
            f"features_slices.datasets=[{DATASET}]"])  # fmt: skip
        warm_cfg = slices_params(params, root, "warm")
        features_dump = warm_cfg.model_dump(mode="json")
        card = model_card(params, "small_cnn", features_dump)
        model = load_dvc_model(save_model(root / "models" / "bench", card, args.seed))
        pcfg: PredictConfig = section_config(params, "predict")  # type: ignore[assignment]
        predictor = Predictor(model, root, pcfg.voting, pcfg.threshold, pcfg.min_seconds, "cpu")
        items = expand([str(root / "songs")])
        n, audio_s = len(items), args.songs * args.seconds
        print(f"model: {predictor.describe()} [{UNTRAINED}]", flush=True)

        # Each side once before timing: allocators grow to their steady size, torch picks its kernels.
        print("warming up ...", flush=True)
        metrics = features_slices(warm_cfg, root)
        predictions = predict_folder(predictor, items, pcfg, root)
        rows = sum(len(p.slices) for p in predictions)
        if metrics.get("rows") not in (None, rows):
            print(f"note: the stage made {metrics['rows']} slices, prediction {rows}")

        # Interleaved repeats, best of each: other load on a shared machine only ever adds time.
        runs: dict[str, list[float]] = {"predict": [], "stage": []}
        parts: dict[str, list[float]] = {"decode": [], "features": [], "model": []}
        for repeat in range(args.repeats):
            cfg = slices_params(params, root, f"stage-{repeat}")
            runs["stage"].append(timed(lambda cfg=cfg: features_slices(cfg, root)))
            runs["predict"].append(timed(lambda: predict_folder(predictor, items, pcfg, root)))
            for part, seconds in predict_parts(predictor, items, pcfg, root).items():
                parts[part].append(seconds)
        best = {k: min(v) for k, v in runs.items()}
        median = {k: float(np.median(v)) for k, v in runs.items()}
        best_parts = {k: min(v) for k, v in parts.items()}

        cuda: dict[str, Any] = {"skipped": "no GPU"}
        if torch.cuda.is_available():
            r50 = model_card(params, "resnet50", features_dump)
            big = load_dvc_model(save_model(root / "models" / "bench_r50", r50, args.seed))
            gpu = Predictor(big, root, pcfg.voting, pcfg.threshold, pcfg.min_seconds, "cuda")
            predict_folder(gpu, items, pcfg, root)  # warm-up: cuDNN picks its kernels
            gpu_runs = [timed(lambda: predict_folder(gpu, items, pcfg, root)) for _ in range(args.repeats)]
            gpu_parts = [predict_parts(gpu, items, pcfg, root) for _ in range(args.repeats)]
            cuda = {"device": torch.cuda.get_device_name(), "arch": "resnet50", "weights": UNTRAINED,
                    "files_per_s": round(n / min(gpu_runs), 3), "audio_s_per_s": round(audio_s / min(gpu_runs), 1),
                    "predict_vs_stage": round(best["stage"] / min(gpu_runs), 3),
                    "seconds_per_repeat": gpu_runs,
                    "parts_seconds": {k: round(min(p[k] for p in gpu_parts), 3) for k in gpu_parts[0]}}  # fmt: skip

    rate = {k: n / t for k, t in best.items()}
    results = {
        "goal": GOAL,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "workers": WORKERS, "cores": os.cpu_count()},
        "corpus": {"songs": args.songs, "seconds": args.seconds, "format": args.format, "sample_rate": 44100,
                   "channels": 2, "audio_seconds": audio_s, "file_mb": round(file_bytes / 1e6, 2), "slices": rows},
        "model": {"arch": "small_cnn", "device": "cpu", "weights": UNTRAINED, "batch_files": BATCH_FILES,
                  "voting": pcfg.voting},
        "files_per_s": {k: round(v, 3) for k, v in rate.items()},
        "files_per_s_median": {k: round(n / t, 3) for k, t in median.items()},
        "audio_s_per_s": {k: round(audio_s / t, 1) for k, t in best.items()},
        # Prediction's rate over the stage's, best of each: the "little more than features" is near 1.
        "predict_vs_stage": round(rate["predict"] / rate["stage"], 3),
        # Each repeat's own ratio: its runs were seconds apart, so drift on a shared machine cancels.
        "predict_vs_stage_per_repeat": per_repeat(runs, "predict", "stage"),
        "seconds_per_repeat": runs,
        # The same prediction part by part on one thread (decode, the card's features, net + vote), best of each.
        "parts_seconds": {k: round(v, 3) for k, v in best_parts.items()},
        "parts_seconds_per_repeat": parts,
        "cuda": cuda,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{args.songs} songs of {args.seconds:g} s (44.1 kHz stereo, {args.format}, {file_bytes / 1e6:.1f} MB), "
          f"{rows} slices; best of {args.repeats} interleaved runs, {WORKERS} threads on {os.cpu_count()} cores")
    print(f"small_cnn on cpu, {UNTRAINED}; goal: {GOAL}")
    print(f"{'':36}{'files/s':>9}{'median':>9}{'audio s/s':>11}")
    for label, key in (("predict (python -m tasks predict)", "predict"), ("features_slices stage", "stage")):
        print(f"{label:36}{rate[key]:>9.3f}{n / median[key]:>9.3f}{audio_s / best[key]:>11.1f}")
    v = results["predict_vs_stage_per_repeat"]
    print(f"prediction / features: {results['predict_vs_stage']:.3f}x best of each; per repeat median "
          f"{v['median']:.3f}x, {v['min']:.3f}-{v['max']:.3f}x")  # fmt: skip
    p = best_parts
    print(f"prediction's parts on one thread (s): decode {p['decode']:.2f}, features {p['features']:.2f}, "
          f"net + vote {p['model']:.2f}; whole run on {WORKERS} threads {best['predict']:.2f}")  # fmt: skip
    if "skipped" in cuda:
        print("(no GPU: resnet50 on CUDA not measured)")
    else:
        print(f"resnet50 on {cuda['device']} ({UNTRAINED}): {cuda['files_per_s']:.3f} files/s, "
              f"{cuda['audio_s_per_s']:.1f} audio s/s, {cuda['predict_vs_stage']:.3f}x the stage; parts "
              f"{cuda['parts_seconds']}")  # fmt: skip
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
