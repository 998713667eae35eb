"""Random (or TPE) search over hyperparameters with Optuna: each set a nested MLflow run under the model's run.

Ranges come from train.common.search.space: two numbers are a range (log-uniform for lr and
weight_decay; integers when both are), anything else a list of choices. The study samples with a
seeded sampler, so the same seed draws the same sets; a finished trial is remembered on disk, so a
retried task replays it instead of training it again, and the unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tasks.config import ArchConfig
from tasks.storage import atomic_write_text, params_hash
from tasks.train.loop import Checkpoint, FitResult

if TYPE_CHECKING:
    from tasks.train.data import ClipData, Split
    from tasks.train.stage import Job

log = logging.getLogger("tasks")
LOG_SCALE = {"lr", "weight_decay"}


def suggest(trial: Any, name: str, spec: list[Any]) -> Any:
    numeric = len(spec) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in spec)
    if not numeric:
        return trial.suggest_categorical(name, spec)
    low, high = spec
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(name, low, high, log=name in LOG_SCALE)
    return trial.suggest_float(name, float(low), float(high), log=name in LOG_SCALE)


def search(job: Job, data: ClipData, split: Split, device: torch.device, stamp: str,
           fit_model: Callable[..., FitResult]) -> FitResult:  # fmt: skip
    """`trials` parameter sets, each trained in a nested run; the best by validation clip accuracy
    (then lower validation loss) is returned, its parameters and score reported on the parent run."""
    import optuna

    import mlflow

    cfg = job.cfg.common.search
    unknown = set(cfg.space) - set(ArchConfig.model_fields)
    if unknown:
        raise ValueError(f"train.common.search.space: unknown hyperparameters {sorted(unknown)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.RandomSampler(seed=cfg.seed) if cfg.sampler == "random"
               else optuna.samplers.TPESampler(seed=cfg.seed))  # fmt: skip
    study = optuna.create_study(direction="maximize", sampler=sampler)
    done_file = job.checkpoint_dir / "trials.json"
    done: dict[str, dict[str, Any]] = json.loads(done_file.read_text()) if done_file.exists() else {}
    best: tuple[float, float, int, FitResult | None] = (-1.0, 0.0, -1, None)
    for number in range(cfg.trials):
        trial = study.ask()
        params = {name: suggest(trial, name, spec) for name, spec in cfg.space.items()}
        key = str(number)
        record = done.get(key)
        same = record is not None and record.get("stamp") == stamp and record["params"] == params
        if same and "score" in record and trial_file(job, number).exists():
            study.tell(trial, record["score"])
            log.info("trial %d: done before (%s): clip accuracy %.3f", number, params, record["score"])
            if (record["score"], -record["loss"]) > best[:2]:
                best = (record["score"], -record["loss"], number, None)
            continue
        arch = ArchConfig.model_validate({**job.arch.model_dump(), **params})
        trial_stamp = params_hash({"stamp": stamp, "params": params})
        run_id = record.get("run_id") if same else None  # an unfinished trial: resume its run and checkpoint
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{job.name}-trial-{number}",
                              nested=True) as child:  # fmt: skip
            done[key] = {"params": params, "stamp": stamp, "run_id": child.info.run_id}
            atomic_write_text(json.dumps(done), done_file)
            if run_id is None:
                mlflow.log_params({**{f"trial.{k}": v for k, v in params.items()}, "trial.number": number})
            result = fit_model(job, arch, data, split, device,
                               Checkpoint(job.checkpoint_dir / f"trial-{number}.pt", trial_stamp))  # fmt: skip
        assert result.monitor_scores is not None  # chosen on the inner clips where the split has them
        score, loss = result.monitor_scores.clip_accuracy, result.monitor_scores.loss
        study.tell(trial, score)
        torch.save(result, trial_file(job, number))  # before the score: a scored trial always has its result
        done[key].update(score=score, loss=loss)
        atomic_write_text(json.dumps(done), done_file)
        log.info("trial %d/%d %s: choosing clip accuracy %.3f, loss %.4f", number + 1, cfg.trials, params, score,
                 loss)  # fmt: skip
        if (score, -loss) > best[:2]:
            best = (score, -loss, number, result)
    number = best[2]
    result = best[3] or torch.load(trial_file(job, number), weights_only=False)
    mlflow.log_params({f"best.{k}": v for k, v in done[str(number)]["params"].items()})
    mlflow.set_tag("search", f"{cfg.trials} {cfg.sampler} trials (seed {cfg.seed}); best: trial {number}")
    log.info("search: best trial %d %s", number, done[str(number)]["params"])
    return result


def trial_file(job: Job, number: int) -> Path:
    return job.checkpoint_dir / f"trial-{number}-result.pt"
