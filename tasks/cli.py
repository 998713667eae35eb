"""`python -m tasks <stage> [--params FILE] [-S dotted.key=value ...]`: the one entry to every stage.

dvc.yaml runs this; Airflow tasks call `run_stage`, the same code path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import DEFAULT_PARAMS, ConfigError, load_params, section_config
from tasks.errors import PipelineError


@dataclass(frozen=True)
class Stage:
    section: str
    target: str  # "module:function", imported only when the stage runs
    help: str

    def function(self) -> Callable[..., dict[str, Any]]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


STAGES: dict[str, Stage] = {
    "acquire_ravdess": Stage("acquire_ravdess", "tasks.ravdess:acquire_ravdess",
                             "download the RAVDESS zip and store the song clips"),
    "acquire_cal500": Stage("acquire_cal500", "tasks.cal500:acquire_cal500",
                            "download CAL500, map its emotion tags, store the kept songs"),
    "select_audioset": Stage("select_audioset", "tasks.audioset.select:select_audioset",
                             "choose AudioSet mood segments from the ontology and segment lists"),
    "acquire_audioset": Stage("acquire_audioset", "tasks.audioset.download:acquire_audioset",
                              "download the selected AudioSet segments with yt-dlp"),
    "features_slices": Stage("features_slices", "tasks.features.slices:features_slices",
                             "square log-mel spectrogram slices of the stored clips and songs"),
    "features_vggish": Stage("features_vggish", "tasks.features.vggish:features_vggish",
                             "VGGish embeddings (128-d per 0.96 s) of the stored clips"),
    "train_spectrogram": Stage("train", "tasks.train.stage:train_spectrogram",
                               "train the spectrogram study's models (@NAME: one), log to MLflow, register"),
    "train_audioset": Stage("train", "tasks.train.stage:train_audioset",
                            "train the AudioSet study's models (@NAME: one), log to MLflow, register"),
    "evaluate_spectrogram": Stage("evaluate", "tasks.evaluate.stage:evaluate_spectrogram",
                                  "song-level voting, matrices and an HTML report of a spectrogram model (@NAME)"),
    "evaluate_audioset": Stage("evaluate", "tasks.evaluate.stage:evaluate_audioset",
                               "song-level voting, matrices and an HTML report of an AudioSet model (@NAME)"),
    "evaluate_registry": Stage("evaluate", "tasks.evaluate.stage:evaluate_registry",
                               "evaluate a registry version (@models:/NAME@ALIAS or @models:/NAME/VERSION)"),
    "evaluate_summary": Stage("evaluate", "tasks.evaluate.summary:evaluate_summary",
                              "the studies' tables and the cross-dataset matrix from every evaluation"),
}  # fmt: skip


def stage_config(name: str, root: Path, params_file: Path | None = None, overrides: list[str] | None = None) -> Any:
    """The validated params section of stage `name`, for tasks that run one step of a stage."""
    name = name.partition("@")[0]
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    params = load_params(params_file or root / DEFAULT_PARAMS, overrides)
    return section_config(params, STAGES[name].section)


def run_stage(name: str, root: Path, params_file: Path | None = None, overrides: list[str] | None = None) -> dict:
    """Validate the stage's params section and run it with `root` as the workspace.

    `stage@item` runs one item of a foreach stage, as dvc.yaml names it (train_spectrogram@cnn_ravdess).
    """
    cfg = stage_config(name, root, params_file, overrides)
    stage, _, item = name.partition("@")
    return STAGES[stage].function()(cfg, root, item) if item else STAGES[stage].function()(cfg, root)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks",
        description="Music mood pipeline stages. Each reads its own section of params.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {n:<18} {s.help}" for n, s in STAGES.items())
        + "\n\nand `python -m tasks predict PATH...`: the mood of audio files (python -m tasks predict -h)",
    )
    parser.add_argument("stage", help="stage to run")
    parser.add_argument("--params", type=Path, default=None, help="params file (default: <root>/params.yaml)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="workspace root (default: cwd)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, as `dvc exp run -S` (repeatable)")  # fmt: skip
    return parser


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    configure_logging()
    if argv[:1] == ["predict"]:  # not a stage: its own arguments (tasks.predict.cli)
        from tasks.predict.cli import main as predict

        return predict(argv[1:])
    args = _parser().parse_args(argv)
    try:
        result = run_stage(args.stage, args.root.resolve(), args.params, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: {args.stage}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
