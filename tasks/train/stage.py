"""The train stages: one cell of a study's model matrix (train_<study>@<name>) from features to registered model.

Story: load the clips and check their labels, split them by group, claim a GPU (or the CPU),
train with a checkpoint per epoch into one MLflow run (resumed after a retry), score the
validation side by clip-level vote beside a majority baseline, log curves, confusion matrix and
the model, register it and move `champion` only to a better one, and write the DVC outputs:
models/<name>/ and metrics/train_<name>.json, plots/curves/train_<name>.csv.

A retried task finds its checkpoint, its MLflow run and, past registration, its registered
version under .cache/train/<name>/, so it neither retrains finished epochs nor registers twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.config import STUDIES, ArchConfig, ConfigError, ModelEntry, TrainConfig
from tasks.features.stage import resolve_device
from tasks.storage import atomic_write_text, params_hash, write_json
from tasks.train import report, tracking
from tasks.train.data import ClipData, Split, clip_statistics, load_clips, split_clips
from tasks.train.gpu import claim_gpu, pinned, visible_gpus
from tasks.train.loop import Checkpoint, FitResult, Scores, fit
from tasks.train.models import MoodNet, build_net, load_pretrained
from tasks.train.search import search

log = logging.getLogger("tasks")
# Shipped with each pickled torch model, so it loads where this project is not installed.
PACKAGE = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    """Everything one model's training needs, resolved from params."""

    study: str
    name: str
    entry: ModelEntry
    arch: ArchConfig
    cfg: TrainConfig
    root: Path

    @property
    def what(self) -> str:
        return f"train.models.{self.study}.{self.name}"

    @property
    def features(self) -> str:
        return STUDIES[self.study][0]

    @property
    def features_dir(self) -> str:
        return self.cfg.common.features[self.features]

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / self.cfg.common.checkpoint_dir / self.name


def train(cfg: TrainConfig, root: Path, study: str, item: str | None = None) -> dict[str, Any]:
    """Train one model of the study's matrix (`item`), or every one in turn."""
    entries = cfg.models.get(study, {})
    names = [item] if item else list(entries)
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise ConfigError(f"train.models.{study} has no entry {unknown[0]!r}; entries: {sorted(entries)}")
    return {n: train_model(Job(study, n, entries[n], cfg.arch_config(entries[n]), cfg, root)) for n in names}


def train_spectrogram(cfg: TrainConfig, root: Path, item: str | None = None) -> dict[str, Any]:
    return train(cfg, root, "spectrogram", item)


def train_audioset(cfg: TrainConfig, root: Path, item: str | None = None) -> dict[str, Any]:
    return train(cfg, root, "audioset", item)


def training_stamp(job: Job, data: ClipData, split: Split) -> str:
    """What a checkpoint or a finished registration is valid for: everything that shapes the weights."""
    common = job.cfg.common
    shaping = {"vocabulary": common.vocabularies[job.entry.dataset], "min_real_share": common.min_real_share,
               "vote_weighting": common.vote_weighting, "sequence_length": common.sequence_length,
               "augment": common.augment.model_dump(mode="json"),
               "search": common.search.model_dump(mode="json")}  # fmt: skip
    return params_hash({"entry": job.entry.model_dump(mode="json"), "arch": job.arch.model_dump(mode="json"),
                        "common": shaping, "code": code_version(), "features": data.metadata.get("params_hash"),
                        "val": split.signature, "train": [data.clip_ids[i] for i in split.learn]})  # fmt: skip


def code_version() -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))).hexdigest()[:16]


def train_model(job: Job) -> dict[str, Any]:
    import mlflow

    common = job.cfg.common
    classes = common.vocabularies[job.entry.dataset]
    data = load_clips(job.root / job.features_dir, job.features, job.entry.dataset, classes, common.sequence_length)
    split = split_clips(data, job.entry.split, job.what)
    log.info("%s: %s on %s/%s: %s (%d classes)", job.what, job.entry.arch, job.features_dir, job.entry.dataset,
             split.describe(), len(classes))  # fmt: skip
    tracking.connect(common.tracking_uri)
    stamp = training_stamp(job, data, split)
    run_file = job.checkpoint_dir / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    if previous.get("stamp") != stamp:
        previous = {}
    run_id = previous.get("run_id")
    with claim_gpu(job.root / common.gpu_lock_dir, visible_gpus() if common.device != "cpu" else []) as gpu, \
            pinned(gpu):  # fmt: skip
        device = resolve_device(common.device, "train.common")
        experiment = tracking.experiment_id(f"mood-{job.study}")
        warning = tracking.random_weights_warning(data.metadata)
        description = f"{job.entry.arch} on {job.entry.dataset} ({split.describe()}). {warning}".strip()
        mlflow.set_system_metrics_sampling_interval(1)
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else job.name,
                              experiment_id=experiment, log_system_metrics=True,
                              description=None if run_id else description) as run:  # fmt: skip
            # Keep what a failed attempt recorded past training (its registration): a retry must not register twice.
            atomic_write_text(json.dumps({**previous, "stamp": stamp, "run_id": run.info.run_id}), run_file)
            if run_id is None:
                log_run_inputs(job, data, split, device)
            else:
                log.info("%s: resuming MLflow run %s", job.what, run_id)
            if job.cfg.common.search.trials:
                result = search(job, data, split, device, stamp, fit_model)
            else:
                result = fit_model(job, job.arch, data, split, device, Checkpoint(job.checkpoint_dir / "checkpoint.pt",
                                                                                  stamp))  # fmt: skip
            metrics = score(job, data, split, result)
            # The best epoch's scores; keys the epochs also log get a prefix, so the curves keep one point per epoch.
            mlflow.log_metrics({(f"final_{k}" if k in result.history[0] else k): v for k, v in metrics.items()
                                if isinstance(v, int | float)})  # fmt: skip
            log_figures(job, data, split, result)
            registry = previous.get("registry")
            if registry is None:
                unregistered = model_card(job, data, split, result, metrics, UNREGISTERED, run.info.run_id)
                registry = log_model(job, data, result, metrics, split, unregistered)
                atomic_write_text(json.dumps({"stamp": stamp, "run_id": run.info.run_id, "registry": registry}),
                                  run_file)  # fmt: skip
            else:
                log.info("%s: already registered as %s v%s before the retry", job.what, registry["registered_model"],
                         registry["version"])  # fmt: skip
            mlflow.set_tag("weights", result.extra["weights"])
            card = model_card(job, data, split, result, metrics, registry, run.info.run_id)
            mlflow.log_dict(card, "model.json")
    summary = write_outputs(job, result, card)
    shutil.rmtree(job.checkpoint_dir, ignore_errors=True)  # checkpoints, trials and the run id: a retry starts anew
    return summary


def log_run_inputs(job: Job, data: ClipData, split: Split, device: torch.device) -> None:
    import pandas as pd

    import mlflow

    params = {**tracking.flatten("arch", job.arch.model_dump(mode="json")),
              **tracking.flatten("model", job.entry.model_dump(mode="json")),
              **tracking.flatten("common", job.cfg.common.model_dump(mode="json", exclude={"vocabularies"})),
              "classes": json.dumps(data.classes), "device": str(device)}  # fmt: skip
    mlflow.log_params(params)
    mlflow.set_tags({"model_name": job.name, "arch": job.entry.arch, "study": job.study,
                     "dataset": job.entry.dataset, "git_commit": tracking.git_commit(job.root),
                     "val_split": split.signature,
                     **tracking.feature_tags(job.root, job.features_dir, data.metadata)})  # fmt: skip
    side = np.full(data.n_clips, "train", dtype=object)
    side[split.val] = "validation"
    frame = pd.DataFrame({"clip_id": data.clip_ids, "label": [data.classes[i] for i in data.clip_label],
                          "actor": data.clip_actor.astype(str), "side": side})  # fmt: skip
    dataset = mlflow.data.from_pandas(frame, source=str(job.root / job.features_dir),
                                      name=f"{job.features_dir}:{job.entry.dataset}", targets="label")  # fmt: skip
    mlflow.log_input(dataset, context="training")


def fit_model(job: Job, arch: ArchConfig, data: ClipData, split: Split, device: torch.device,
              checkpoint: Checkpoint) -> FitResult:  # fmt: skip
    """One training with the given hyperparameters, its curves logged to the active MLflow run."""
    if job.entry.arch == "logreg_stats":
        return fit_statistics(job, arch, data, split)
    return fit_net(job, arch, data, split, device, checkpoint)


def fit_net(job: Job, arch: ArchConfig, data: ClipData, split: Split, device: torch.device,
            checkpoint: Checkpoint) -> FitResult:  # fmt: skip
    import mlflow

    common = job.cfg.common
    torch.manual_seed(job.entry.seed)
    net = build_net(job.entry.arch, len(data.classes), arch, common.sequence_length)
    weights = load_pretrained(net, arch, job.root)
    train_rows = data.rows_of(split.train)
    sample = data.inputs[torch.from_numpy(train_rows)].float()
    if data.lengths is not None:  # statistics over real steps only
        sample = sample[sample.ne(0).any(-1)]
    model = MoodNet(net, float(sample.mean()), float(sample.std()) or 1.0, sequence=data.lengths is not None)
    augment = common.augment

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        mlflow.log_metrics(row, step=epoch)

    result = fit(model, data, split, arch, augment, job.entry.seed, device, checkpoint, common.min_real_share,
                 common.vote_weighting, on_epoch)  # fmt: skip
    result.model.drop_auxiliary_heads()
    result.extra["weights"] = weights
    return result


def fit_statistics(job: Job, arch: ArchConfig, data: ClipData, split: Split) -> FitResult:
    """Logistic regression on per-clip band statistics: the baseline that keeps the nets honest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import mlflow

    # Nothing to choose (no epochs): the inner clips are training clips here.
    x_train, x_val = clip_statistics(data, split.learn), clip_statistics(data, split.val)
    y_train, y_val = data.clip_label[split.learn], data.clip_label[split.val]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=arch.C, max_iter=5000, class_weight="balanced",
                                                               random_state=job.entry.seed))  # fmt: skip
    model.fit(x_train, y_train)
    labels = np.arange(len(data.classes))
    prob_train = np.zeros((len(y_train), len(labels)))
    prob_train[:, model.classes_] = model.predict_proba(x_train)
    prob_val = np.zeros((len(y_val), len(labels)))
    prob_val[:, model.classes_] = model.predict_proba(x_val)
    pred = prob_val.argmax(1)
    row = {"train_loss": log_loss(y_train, prob_train, labels=labels),
           "train_accuracy": float((prob_train.argmax(1) == y_train).mean()),
           "val_loss": log_loss(y_val, prob_val, labels=labels), "val_accuracy": float((pred == y_val).mean()),
           "val_clip_accuracy": float((pred == y_val).mean())}  # fmt: skip
    mlflow.log_metrics(row, step=0)
    scores = Scores(row["val_loss"], row["val_accuracy"], row["val_clip_accuracy"], pred)
    return FitResult(model, [row], best_epoch=0, scores=scores, monitor_scores=scores,  # type: ignore[arg-type]
                     extra={"weights": "none (closed form)", "example": x_val[:2]})


def score(job: Job, data: ClipData, split: Split, result: FitResult) -> dict[str, Any]:
    assert result.scores is not None
    y_val = data.clip_label[split.val]
    correct = int((result.scores.clip_pred == y_val).sum())
    low, high = report.accuracy_interval(correct, len(y_val))
    return {
        "val_clip_accuracy": result.scores.clip_accuracy,
        "val_clip_accuracy_ci95_low": low,
        "val_clip_accuracy_ci95_high": high,
        "val_slice_accuracy": result.scores.row_accuracy,
        "val_loss": result.scores.loss,
        "majority_baseline": report.majority_baseline(data.clip_label[split.learn], y_val),
        "chance": 1.0 / len(data.classes),
        "train_clips": len(split.learn),
        "chosen_on": "inner" if len(split.inner) and job.entry.arch != "logreg_stats" else "validation",
        "val_clips": len(split.val),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "random_vggish_weights": bool(data.metadata.get("random_weights", False)),
    }


def log_figures(job: Job, data: ClipData, split: Split, result: FitResult) -> None:
    import tempfile

    import mlflow

    assert result.scores is not None
    note = " (random VGGish weights)" if data.metadata.get("random_weights") else ""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report.learning_curves(result.history, folder / "learning_curves.png", f"{job.name}{note}")
        report.confusion(data.clip_label[split.val], result.scores.clip_pred, data.classes,
                         folder / "confusion_val.png", folder / "confusion_val.csv",
                         f"{job.name}: validation clips{note}")  # fmt: skip
        (folder / "labels.json").write_text(json.dumps(data.classes))
        mlflow.log_artifacts(str(folder))


UNREGISTERED = {"registered_model": None, "version": None, "champion_version": None, "decision": "not registered",
                "audio_model": None, "audio_version": None}  # fmt: skip


def log_model(job: Job, data: ClipData, result: FitResult, metrics: dict[str, Any], split: Split,
              card: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Log the model and, beside a torch model, its audio model (tasks.predict.pyfunc); then register both, move
    `champion` only to a better torch model, and point the audio model's `champion` at the champion's audio model.
    Both are logged before either is registered, so a failure while logging leaves no version behind."""
    from mlflow.models import infer_signature

    import mlflow
    from tasks.predict.pyfunc import audio_model_name, log_audio_model

    if job.entry.arch == "logreg_stats":
        example = result.extra["example"].astype(np.float32)
        info = mlflow.sklearn.log_model(result.model, name="model", input_example=example,
                                        signature=infer_signature(example, result.model.predict_proba(example)),
                                        pip_requirements=tracking.PIP_REQUIREMENTS)  # fmt: skip
        audio = None
    else:
        model = result.model.cpu().eval()
        example = data.inputs[:2].float().numpy()
        with torch.no_grad():
            output = torch.softmax(model(torch.from_numpy(example)), 1).numpy()
        # Pickled (not torch.export) so the registered model is this class, GoogLeNet and LSTMs included.
        info = mlflow.pytorch.log_model(model, name="model", input_example=example, code_paths=[str(PACKAGE)],
                                        signature=infer_signature(example, output), serialization_format="pickle",
                                        pip_requirements=tracking.PIP_REQUIREMENTS)  # fmt: skip
        audio = log_audio_model(card, mlflow.active_run().info.run_id, job.root)
    if not job.cfg.common.register_models:
        return UNREGISTERED
    name = tracking.registered_name(job.cfg.common.registry_prefix, job.study, job.entry.arch)
    version = str(mlflow.register_model(info.model_uri, name).version)
    audio_version = str(mlflow.register_model(audio.model_uri, audio_model_name(name)).version) if audio else None
    registry = tracking.promote_if_better(name, version, metrics["val_clip_accuracy"], split.signature)
    if audio_version is not None:
        tracking.pair_audio_model(name, version, audio_model_name(name), audio_version)
    return {**registry, "audio_model": audio_model_name(name) if audio else None, "audio_version": audio_version}


def model_card(job: Job, data: ClipData, split: Split, result: FitResult, metrics: dict[str, Any],
               registry: dict[str, Any], run_id: str) -> dict[str, Any]:  # fmt: skip
    """What evaluation and prediction need beside the weights: the net, the vocabulary, the features it
    learned from and the validation clips. Written as models/<name>/model.json and logged with the run."""
    return {
        "name": job.name, "arch": job.entry.arch, "study": job.study, "dataset": job.entry.dataset,
        "classes": data.classes, "mlflow_run_id": run_id, **registry,
        "metrics": metrics, "split": {**job.entry.split.model_dump(mode="json"), "signature": split.signature},
        "val_clips": [data.clip_ids[i] for i in split.val],
        "arch_config": job.arch.model_dump(mode="json"),
        "sequence_length": job.cfg.common.sequence_length,
        "vote_weighting": job.cfg.common.vote_weighting,
        # The features stage's own params, as its dataset recorded them: prediction makes its inputs from these.
        "features": {"dir": job.features_dir, "stage": data.metadata.get("stage"),
                     "params_hash": data.metadata.get("params_hash"),
                     "code_version": data.metadata.get("code_version"), "frontend": data.metadata.get("frontend"),
                     "params": data.metadata.get("params"), "weights": data.metadata.get("weights"),
                     "random_vggish_weights": metrics["random_vggish_weights"]},
        "weights": result.extra["weights"],
    }  # fmt: skip


def write_outputs(job: Job, result: FitResult, card: dict[str, Any]) -> dict[str, Any]:
    """models/<name>/ (weights + model.json), metrics/train_<name>.json, plots/curves/train_<name>.csv."""
    import joblib
    import pandas as pd

    common = job.cfg.common
    metrics = card["metrics"]
    out = job.root / common.models_dir / job.name
    shutil.rmtree(out, ignore_errors=True)  # another architecture's weights file must not linger
    out.mkdir(parents=True)
    if job.entry.arch == "logreg_stats":
        joblib.dump(result.model, out / "model.joblib")
    else:
        torch.save(result.model.state_dict(), out / "model.pt")
    write_json(card, out / "model.json")
    write_json({**metrics, "registered_model": card["registered_model"], "version": card["version"]},
               job.root / common.metrics_dir / f"train_{job.name}.json")  # fmt: skip
    plots = job.root / common.plots_dir / f"train_{job.name}.csv"
    plots.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(result.history).drop(columns="epoch_seconds", errors="ignore")  # timings only in MLflow
    frame.insert(0, "epoch", range(len(frame)))
    atomic_write_text(frame.to_csv(index=False), plots)
    note = " [random VGGish weights]" if metrics["random_vggish_weights"] else ""
    log.info("%s: validation clip accuracy %.3f (95%% CI %.3f-%.3f; majority baseline %.3f, chance %.3f) over %d "
             "clips; %s v%s, champion v%s%s", job.what, metrics["val_clip_accuracy"],
             metrics["val_clip_accuracy_ci95_low"], metrics["val_clip_accuracy_ci95_high"],
             metrics["majority_baseline"], metrics["chance"], metrics["val_clips"], card["registered_model"],
             card["version"], card["champion_version"], note)  # fmt: skip
    registry = {k: card[k] for k in ("registered_model", "version", "champion_version", "decision")}
    return {"model": job.name, "mlflow_run_id": card["mlflow_run_id"], **registry, **metrics}
