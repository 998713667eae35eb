"""`python -m tasks predict PATH... [--model URI] [--voting RULE] [--out FILE]`: the mood of audio files.

PATH is an audio file (wav, flac, mp3, m4a, ogg, ...), a folder (its audio files, recursively), a URL, or
raw:<dataset>[/<clip id>] (clips of a raw clip store). Per file: the mood by the song-level vote, the vote
share, the class probabilities and every slice's; a table on the terminal, JSON or CSV with --out. Exit
status 0 when every file was predicted, 1 when some were not (each named on stderr), 2 for a bad command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tasks.config import DEFAULT_PARAMS, ConfigError, PredictConfig, load_params, section_config
from tasks.errors import PipelineError
from tasks.predict.inputs import Item, Limits, expand, loaders
from tasks.predict.predictor import Prediction, Predictor
from tasks.progress import Progress

log = logging.getLogger("tasks")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tasks predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio file, folder, URL or raw:<dataset>[/<id>]")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a models/<name> "
                                   "folder (default: predict.model)")  # fmt: skip
    p.add_argument("--voting", choices=["majority", "soft", "threshold"], help="default: predict.voting")
    p.add_argument("--threshold", type=float, help="threshold voting's least vote share (default: predict.threshold)")
    p.add_argument("--out", type=Path, help="write the predictions here: .json, or .csv (one row per slice)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="default: predict.device")
    p.add_argument("--params", type=Path, default=None, help="params file (default: <root>/params.yaml)")
    p.add_argument("--root", type=Path, default=Path.cwd(), help="workspace root (default: cwd)")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (predict.max_file_mb=50)")  # fmt: skip
    return p


def predict_config(args: argparse.Namespace) -> PredictConfig:
    """params.yaml's predict section, with -S overrides and the options given, validated as one."""
    params = load_params(args.params or args.root / DEFAULT_PARAMS, args.overrides)
    options = {k: v for k, v in (("model", args.model), ("voting", args.voting), ("threshold", args.threshold),
                                 ("device", args.device)) if v is not None}  # fmt: skip
    params["predict"] = {**(params.get("predict") or {}), **options}
    return section_config(params, "predict")  # type: ignore[return-value]


def make_predictor(cfg: PredictConfig, root: Path) -> Predictor:
    """The configured model (its tracking server first, for MLflow URIs) with the configured vote."""
    from tasks.evaluate.model import load_trained_model
    from tasks.train import tracking

    if cfg.model.startswith(("models:/", "runs:/")):
        tracking.connect(cfg.tracking_uri)
    model = load_trained_model(cfg.model, root)
    return Predictor(model, root, cfg.voting, cfg.threshold, cfg.min_seconds, cfg.device)


def run(predictor: Predictor, items: list[Item], cfg: PredictConfig, root: Path) -> list[Prediction]:
    """Every item's prediction, in order, with a progress bar (a log line per 10 s off a terminal)."""
    progress = Progress(len(items), "predict", "file")
    out = []
    for prediction in predictor.predict(loaders(items, Limits.of(cfg), root / cfg.raw_dir)):
        out.append(prediction)
        progress.update()
    progress.close()
    return out


def table(predictions: list[Prediction], classes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table("file", "mood", "vote", *classes, "slice votes", "seconds")
    for p in predictions:
        if p.error:
            t.add_row(p.file, "[red]error[/red]", "", *([""] * len(classes)), "", "", end_section=False)
            t.add_row("", f"[red]{p.reason}: {p.error}[/red]", "", *([""] * len(classes)), "", "")
            continue
        tops = Counter(max(classes, key=s.__getitem__) for s in p.slices)
        per_slice = ", ".join(f"{c} {n}" for c, n in tops.most_common())
        t.add_row(p.file, p.mood or "(abstains)", f"{p.vote_share:.0%}",
                  *(f"{p.probabilities[c]:.2f}" for c in classes), per_slice, f"{p.seconds:.1f}")  # fmt: skip
    # Off a terminal (a pipe, a log), a width that keeps paths on one line.
    Console(width=None if sys.stdout.isatty() else 200).print(t)


def write(predictions: list[Prediction], path: Path, classes: list[str], about: dict[str, Any]) -> None:
    import pandas as pd

    from tasks.storage import atomic_write_text

    if path.suffix.lower() == ".csv":
        rows = []
        for p in predictions:
            base = {"file": p.file, "mood": p.mood, "vote_share": p.vote_share, "error": p.error, "reason": p.reason,
                    **{f"song_{c}": p.probabilities.get(c) for c in classes}}  # fmt: skip
            rows += [{**base, "slice": k, **s} for k, s in enumerate(p.slices)] or [{**base, "slice": None}]
        atomic_write_text(pd.DataFrame(rows).to_csv(index=False), path)
    else:
        atomic_write_text(json.dumps({**about, "predictions": [p.to_dict() for p in predictions]}, indent=2), path)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    root = args.root.resolve()
    try:
        cfg = predict_config(args)
        items = expand(args.paths, root / cfg.raw_dir)
        predictor = make_predictor(cfg, root)
        print(f"model: {predictor.describe()}", file=sys.stderr)
        predictions = run(predictor, items, cfg, root)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: predict: {exc}", file=sys.stderr)
        return 1
    failed = [p for p in predictions if p.error]
    about = {"model": predictor.model.source, "registered_model": predictor.model.registered_model,
             "version": predictor.model.version, "voting": predictor.rule, "threshold": predictor.threshold,
             "random_vggish_weights": predictor.model.random_weights}  # fmt: skip
    if args.out:
        write(predictions, args.out, predictor.classes, about)
        print(f"wrote {len(predictions)} predictions to {args.out}", file=sys.stderr)
    else:
        table(predictions, predictor.classes)
    for p in failed:
        print(f"error: {p.error} ({p.reason})", file=sys.stderr)
    print(f"{len(predictions) - len(failed)} of {len(predictions)} files predicted", file=sys.stderr)
    return 1 if failed else 0
