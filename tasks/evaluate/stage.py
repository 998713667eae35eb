"""The evaluate stages: one trained model (evaluate_<study>@<name>) from its test sets to a report.

Story: load the model (models/<name>/ for `dvc repro` and the Airflow run, or a registry URI for an
ad hoc run), build its test sets, predict every slice, decide each song by majority, threshold and
soft voting, score them, and write everything into a temporary folder: report.html (self-contained),
the slice predictions and song decisions as Parquet, the confusion matrices, metrics.json. An MLflow
run (linked to the model version by tags and by its input datasets) gets the same files. Only then is
the folder renamed into place, so a failure leaves no half-written report.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import STUDIES, EvaluateConfig
from tasks.evaluate import report, voting
from tasks.evaluate.model import EvaluationError, TrainedModel, load_dvc_model, load_registry_model, predict
from tasks.evaluate.scoring import Outcome, predictions_frame, score, songs_frame
from tasks.evaluate.testsets import build_test_sets
from tasks.features.stage import resolve_device
from tasks.storage import atomic_write_text, replace_dir, write_json
from tasks.train import tracking

log = logging.getLogger("tasks")
# The study's own test set, where the report's headline figure comes from.
PRIMARY = {"spectrogram": "cal500_test", "audioset": "audioset_test"}
PACKAGES = ("torch", "torchvision", "scikit-learn", "mlflow", "dvc", "apache-airflow", "numpy", "pandas")


def evaluate_study(cfg: EvaluateConfig, root: Path, study: str, item: str | None = None) -> dict[str, Any]:
    """Evaluate one trained model of the study (models/<item>), or every one under models_dir."""
    models_dir = root / cfg.models_dir
    if item:
        names = [item]
    else:
        names = [p.parent.name for p in sorted(models_dir.glob("*/model.json"))
                 if json.loads(p.read_text()).get("study") == study]  # fmt: skip
        if not names:
            raise EvaluationError(f"no trained {study} model under {models_dir}: run the train_{study} stages first")
    results = {}
    for name in names:
        model = load_dvc_model(models_dir / name)
        if model.card["study"] != study:
            raise EvaluationError(f"{models_dir / name} is a {model.card['study']} model, not a {study} one: "
                                  f"evaluate it with evaluate_{model.card['study']}@{name}")  # fmt: skip
        results[name] = evaluate_model(cfg, root, model, name, f"dvc repro evaluate_{study}@{name}   "
                                       f"# or: python -m tasks evaluate_{study}@{name}")  # fmt: skip
    return results


def evaluate_spectrogram(cfg: EvaluateConfig, root: Path, item: str | None = None) -> dict[str, Any]:
    return evaluate_study(cfg, root, "spectrogram", item)


def evaluate_audioset(cfg: EvaluateConfig, root: Path, item: str | None = None) -> dict[str, Any]:
    return evaluate_study(cfg, root, "audioset", item)


def evaluate_registry(cfg: EvaluateConfig, root: Path, item: str | None = None) -> dict[str, Any]:
    """An ad hoc evaluation of a registry version (models:/NAME@ALIAS or models:/NAME/VERSION), outside DVC:
    its report goes to adhoc/<name>-v<version>/ beside reports_dir, and to MLflow."""
    if not item:
        raise EvaluationError("evaluate_registry needs a model URI: python -m tasks "
                              "evaluate_registry@models:/mood-spectrogram-small-cnn@champion")  # fmt: skip
    tracking.connect(cfg.tracking_uri)
    model = load_registry_model(item)
    name = f"{model.registered_model}-v{model.version}"
    reports = root / Path(cfg.reports_dir).parent / "adhoc"
    return {name: evaluate_model(cfg, root, model, name, f"python -m tasks evaluate_registry@{item}", reports,
                                 dvc_outputs=False)}  # fmt: skip


def evaluate_model(cfg: EvaluateConfig, root: Path, model: TrainedModel, name: str, command: str,
                   reports: Path | None = None, dvc_outputs: bool = True) -> dict[str, Any]:  # fmt: skip
    import mlflow

    uri = tracking.connect(cfg.tracking_uri)
    study = model.card["study"]
    features = STUDIES[study][0]
    tests, skipped, features_note = build_test_sets(model, cfg, root, features)
    if features_note:
        log.warning("evaluate %s: %s", name, features_note)
    device = resolve_device(cfg.device, "evaluate")
    weighting = model.card.get("vote_weighting", "real_share")
    outcomes = []
    for test in tests:
        prob, row_clip = predict(model, test.data, device)
        weights = voting.row_weights(weighting, test.data.real_share, len(prob))
        outcomes.append(score(test, prob, row_clip, weights, model.classes, cfg.threshold, cfg.curve_step,
                              cfg.bootstrap.resamples, cfg.bootstrap.seed))  # fmt: skip
        m = outcomes[-1].metrics
        log.info("evaluate %s on %s: majority %.3f (95%% CI %.3f-%.3f) over %d songs; soft %.3f; threshold %.2f: "
                 "%.3f at coverage %.2f; most-common-label baseline %.3f", name, test.key,
                 m["majority"]["accuracy"], m["majority"]["ci95_low"], m["majority"]["ci95_high"], m["songs"],
                 m["soft"]["accuracy"], cfg.threshold, m["threshold"]["accuracy"], m["threshold"]["coverage"],
                 m["baseline_accuracy"])  # fmt: skip
    primary = PRIMARY[study] if PRIMARY[study] in {o.test.key for o in outcomes} else outcomes[0].test.key
    metrics = {"model": model.card["name"], "arch": model.arch, "study": study, "dataset": model.card["dataset"],
               "registered_model": model.registered_model, "version": model.version,
               "random_vggish_weights": model.random_weights, "primary": primary, "skipped": skipped,
               "features_note": features_note,
               "test_sets": {o.test.key: o.metrics for o in outcomes}}  # fmt: skip
    final = (reports or root / cfg.reports_dir) / name
    staging = root / report.STAGING
    staging.mkdir(parents=True, exist_ok=True)
    experiment = tracking.experiment_id(cfg.experiment)
    with tempfile.TemporaryDirectory(dir=staging, prefix=f"{final.name}-") as tmp:
        folder = Path(tmp)
        with mlflow.start_run(experiment_id=experiment, run_name=f"evaluate {name}") as run:
            metrics["mlflow_run_id"] = run.info.run_id
            songs = {o.test.key: songs_frame(o, model.classes) for o in outcomes}
            log_inputs(model, songs, root, cfg, features)
            write_report(folder, model, outcomes, songs, metrics, cfg, root, command, uri)
            mlflow.log_metrics(flat_metrics(metrics))
            mlflow.log_artifacts(str(folder))
            link_model_version(model, run.info.run_id, uri, experiment)
        replace_dir(folder, final)
    if dvc_outputs:
        write_json(metrics, root / cfg.metrics_dir / f"evaluate_{name}.json")
        plot = root / cfg.plots_dir / f"{name}.csv"
        plot.parent.mkdir(parents=True, exist_ok=True)
        songs = next(o for o in outcomes if o.test.key == primary)
        rows = ["actual,predicted"] + [f"{model.classes[t]},{model.classes[p]}"
                                       for t, p in zip(songs.truth, songs.decisions["majority"], strict=True)]
        atomic_write_text("\n".join(rows) + "\n", plot)
    log.info("evaluate %s: report %s; MLflow run %s", name, final / "report.html", metrics["mlflow_run_id"])
    return {"model": name, "report": str(final / "report.html"), "mlflow_run_id": metrics["mlflow_run_id"],
            "primary": primary, "accuracy": metrics["test_sets"][primary]["majority"]["accuracy"]}  # fmt: skip


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, values in metrics["test_sets"].items():
        for name, value in tracking.flatten(key, values).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
                out[name] = float(value)
    return out


def log_inputs(model: TrainedModel, songs: dict[str, pd.DataFrame], root: Path, cfg: EvaluateConfig,
               features: str) -> None:  # fmt: skip
    import mlflow

    mlflow.set_tags({"model_name": model.card["name"], "arch": model.arch, "study": model.card["study"],
                     "model_source": model.source, "registered_model": model.registered_model or "",
                     "model_version": model.version or "", "training_run_id": model.card.get("mlflow_run_id", ""),
                     "git_commit": tracking.git_commit(root),
                     "features.dvc_hash": tracking.dvc_hash(root, cfg.features[features]),  # type: ignore[index]
                     "vggish_weights": "random" if model.random_weights else "n/a or published"})  # fmt: skip
    if model.random_weights:
        mlflow.set_tag("mlflow.note.content", tracking.random_weights_warning({"random_weights": True}))
    for key, frame in songs.items():
        frame = pd.DataFrame({"clip_id": frame["clip_id"], "labels": frame["labels"].map("|".join)})
        dataset = mlflow.data.from_pandas(frame, source=str(root / cfg.features[features]),  # type: ignore[index]
                                          name=f"{cfg.features[features]}:{key}", targets="labels")  # type: ignore[index]
        mlflow.log_input(dataset, context="evaluation")


def link_model_version(model: TrainedModel, run_id: str, uri: str, experiment: str) -> None:
    """Tags on the registered version: its latest evaluation run and the report inside it."""
    if not model.registered_model or not model.version:
        return
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(model.registered_model, model.version, "evaluation_run_id", run_id)
    client.set_model_version_tag(model.registered_model, model.version, "evaluation_report",
                                 f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}/artifacts/report.html")


def write_report(folder: Path, model: TrainedModel, outcomes: list[Outcome], songs: dict[str, pd.DataFrame],
                 metrics: dict[str, Any], cfg: EvaluateConfig, root: Path, command: str, uri: str) -> None:  # fmt: skip
    classes = model.classes
    note = " (random VGGish weights)" if model.random_weights else ""
    sections = []
    sample_rate = int(outcomes[0].test.data.metadata["frontend"]["sample_rate"])
    for o in outcomes:
        images = report.confusion_figures(o.truth, o.decisions["majority"], classes, folder,
                                          f"confusion_{o.test.key}", f"{model.card['name']} on {o.test.key}{note}")
        sections.append({"key": o.test.key, "title": o.test.title, "m": o.metrics,
                         "confusion": {k: report.data_uri(v, "image/png") for k, v in images.items()},
                         "per_class": o.per_class.to_dict("records"),
                         "worst": worst_songs(o, classes, cfg, root, sample_rate),
                         "without_slices": o.test.without_slices,
                         "without_shared_label": o.test.without_shared_label})  # fmt: skip
    curve = report.coverage_figure({o.test.key: o.curve for o in outcomes}, folder / "coverage.png",
                                   f"threshold voting: {model.card['name']}{note}")  # fmt: skip
    pd.concat([predictions_frame(o, classes, sample_rate) for o in outcomes]).to_parquet(folder / "predictions.parquet")
    pd.concat(songs.values()).to_parquet(folder / "songs.parquet")
    pd.DataFrame([{"test_set": o.test.key, **p} for o in outcomes for p in o.curve]).to_csv(folder / "coverage.csv",
                                                                                            index=False)
    write_json(metrics, folder / "metrics.json")
    report.render("report.html.j2", folder / "report.html", model=model, card=model.card, metrics=metrics,
                  sections=sections, coverage=report.data_uri(curve, "image/png"), cfg=cfg, note=note,
                  provenance=provenance(model, metrics, cfg, root, command, uri))  # fmt: skip


def worst_songs(o: Outcome, classes: list[str], cfg: EvaluateConfig, root: Path, sample_rate: int,
                ) -> list[dict[str, Any]]:  # fmt: skip
    """The most confidently wrong songs (largest vote share for a wrong label), their votes and an excerpt."""
    pred = o.decisions["majority"]
    wrong = np.flatnonzero((pred != voting.ABSTAIN) & ~voting.correct_any(pred, o.test.truth))
    chosen = wrong[np.argsort(-o.share[wrong], kind="stable")][: cfg.worst_songs]
    data, out = o.test.data, []
    per_row = len(data.row_start) == len(o.row_clip)
    for c in chosen:
        rows = np.flatnonzero(o.row_clip == c)
        slices = [{"slice": i, "start": float(data.row_start[r] / sample_rate) if per_row else 0.0,
                   "end": float(data.row_end[r] / sample_rate) if per_row else None,
                   "predicted": classes[int(o.prob[r].argmax())], "probability": float(o.prob[r].max()),
                   "weight": float(o.weights[r])} for i, r in enumerate(rows)]  # fmt: skip
        # the excerpt starts where the model was surest of its wrong label
        surest = max(slices, key=lambda s: s["probability"] if s["predicted"] == classes[pred[c]] else -1)
        audio, span = report.excerpt(root / cfg.raw_dir / o.test.dataset, data.clip_ids[c], surest["start"],
                                     cfg.excerpt_seconds)  # fmt: skip
        out.append({"clip_id": data.clip_ids[c], "labels": [classes[k] for k in np.flatnonzero(o.test.truth[c])],
                    "predicted": classes[pred[c]], "share": float(o.share[c]), "slices": slices,
                    "audio": audio, "span": span})  # fmt: skip
    return out


def provenance(model: TrainedModel, metrics: dict[str, Any], cfg: EvaluateConfig, root: Path, command: str,
               uri: str) -> dict[str, Any]:  # fmt: skip
    from importlib.metadata import PackageNotFoundError, version

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    features = model.card["features"]["dir"]
    return {"command": command, "git_commit": tracking.git_commit(root),
            "model_source": model.source, "model_dvc_hash": tracking.dvc_hash(root, f"{cfg.models_dir}/"
                                                                             f"{model.card['name']}"),
            "features_dvc_hash": tracking.dvc_hash(root, features), "features_params_hash":
                model.card["features"].get("params_hash"),
            "training_run_id": model.card.get("mlflow_run_id"), "evaluation_run_id": metrics["mlflow_run_id"],
            "tracking_uri": uri, "packages": {p: package(p) for p in PACKAGES}}  # fmt: skip
