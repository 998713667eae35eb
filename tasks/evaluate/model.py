"""A trained model and its card, from the DVC output models/<name>/ or from the MLflow registry, and its
class probabilities for every input row of a feature partition.

The card (model.json, written by the train stage and logged with its run) says what the weights need:
architecture, vocabulary, the feature settings they learned from, the validation clips.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.config import EMBEDDING_ARCHS, ArchConfig
from tasks.errors import PipelineError
from tasks.train.data import ClipData, clip_statistics
from tasks.train.loop import predict_rows
from tasks.train.models import MoodNet, build_net

CARD = "model.json"


class EvaluationError(PipelineError):
    """The model or the test data cannot give a meaningful evaluation; the message names the item."""


@dataclass
class TrainedModel:
    card: dict[str, Any]
    model: Any  # MoodNet, or the scikit-learn pipeline of logreg_stats
    source: str  # where it was loaded from, as a user would type it
    registered_model: str | None
    version: str | None

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def arch(self) -> str:
        return str(self.card["arch"])

    @property
    def random_weights(self) -> bool:
        return bool(self.card["features"].get("random_vggish_weights"))


def load_dvc_model(folder: Path) -> TrainedModel:
    """models/<name>/: model.json beside model.pt (a state dict) or model.joblib."""
    card_path = folder / CARD
    if not card_path.exists():
        raise EvaluationError(f"{folder} holds no {CARD}: train the model first (dvc repro train_<study>@"
                              f"{folder.name}, or the train DAG)")  # fmt: skip
    card = json.loads(card_path.read_text())
    check_card(card, str(folder))
    if card["arch"] == "logreg_stats":
        import joblib

        model = joblib.load(folder / "model.joblib")
    else:
        model = build_model(card)
        try:
            model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        except (RuntimeError, FileNotFoundError) as exc:
            raise EvaluationError(f"{folder}: model.pt does not fit its {CARD} ({card['arch']}, "
                                  f"{len(card['classes'])} classes): {str(exc).splitlines()[0]}") from None
    return TrainedModel(card, model, str(folder), card.get("registered_model"), card.get("version"))


def build_model(card: dict[str, Any]) -> MoodNet:
    arch = card["arch"]
    net = build_net(arch, len(card["classes"]), ArchConfig.model_validate(card["arch_config"]),
                    card["sequence_length"])  # fmt: skip
    model = MoodNet(net, 0.0, 1.0, sequence=arch in EMBEDDING_ARCHS)
    model.drop_auxiliary_heads()  # the stored weights are the inference net's
    return model


def check_card(card: dict[str, Any], where: str) -> None:
    missing = [k for k in ("arch", "classes", "study", "dataset", "features", "split", "val_clips", "arch_config",
                           "sequence_length") if k not in card]  # fmt: skip
    if missing:
        raise EvaluationError(f"{where}: its {CARD} lacks {missing} (a model trained before evaluation existed): "
                              "train it again")  # fmt: skip


def load_trained_model(ref: str, root: Path) -> TrainedModel:
    """Any of: models:/NAME@ALIAS, models:/NAME/VERSION (the torch model or its audio model), runs:/RUN_ID/model,
    or a models/<name> folder (absolute, or under `root`)."""
    if ref.startswith("models:/"):
        return load_registry_model(ref)
    if ref.startswith("runs:/"):
        return load_run_model(ref)
    folder = Path(ref) if Path(ref).is_absolute() else root / ref
    if folder.is_dir():
        return load_dvc_model(folder)
    raise EvaluationError(f"model {ref!r} is neither an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, "
                          f"runs:/RUN_ID/model) nor a folder holding {CARD} ({folder} does not exist)")  # fmt: skip


def load_registry_model(uri: str) -> TrainedModel:
    """models:/NAME@ALIAS or models:/NAME/VERSION; the card and the weights come from the version's run, so the
    audio model registered beside a torch model (NAME-audio) loads as the same model."""
    from mlflow.exceptions import MlflowException

    from mlflow import MlflowClient

    name, version = parse_model_uri(uri)
    client = MlflowClient()
    try:
        if version.isdigit():
            found = client.get_model_version(name, version)
        else:
            found = client.get_model_version_by_alias(name, version)
    except MlflowException as exc:
        known = [m.name for m in client.search_registered_models()]
        if name not in known:
            raise EvaluationError(f"{uri}: no registered model {name!r} (registered: {sorted(known)})") from None
        aliases = sorted(client.get_registered_model(name).aliases)
        what = f"version {version}" if version.isdigit() else f"alias {version!r}"
        raise EvaluationError(f"{uri}: registered model {name!r} has no {what} (aliases: {aliases}): "
                              f"{exc.message}") from None  # fmt: skip
    # The audio model registered beside a torch version (NAME-audio) names it in its tag `torch_model`.
    weights = f"models:/{found.tags.get('torch_model') or f'{name}/{found.version}'}"
    card, model = run_model(found.run_id, f"{uri} (v{found.version})", weights)
    return TrainedModel(card, model, f"{uri} (v{found.version})", name, str(found.version))


def load_run_model(uri: str) -> TrainedModel:
    """runs:/RUN_ID/model: an unregistered (or any) training run's model and card."""
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    if not run_id or path.strip("/") != "model":
        raise EvaluationError(f"model URI {uri!r} is not runs:/RUN_ID/model (the path training logs the model at)")
    from mlflow.exceptions import MlflowException

    from mlflow import MlflowClient

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        raise EvaluationError(f"{uri}: no run {run_id!r} on the tracking server") from None
    card, model = run_model(run_id, uri, f"runs:/{run_id}/model")
    return TrainedModel(card, model, uri, card.get("registered_model"), card.get("version"))


def run_model(run_id: str, where: str, model_uri: str) -> tuple[dict[str, Any], Any]:
    """The card a training run logged, and its torch (or scikit-learn) model from `model_uri`."""
    from mlflow.exceptions import MlflowException

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CARD, dst_path=tmp)
        except (MlflowException, OSError):
            raise EvaluationError(f"{where}: its run {run_id} logged no {CARD} (a model trained before evaluation "
                                  "existed, or not a training run): train it again") from None  # fmt: skip
        card = json.loads(Path(path).read_text())
    check_card(card, where)
    model = (mlflow.sklearn.load_model(model_uri) if card["arch"] == "logreg_stats"
             else mlflow.pytorch.load_model(model_uri, map_location="cpu"))  # fmt: skip
    return card, model


def parse_model_uri(uri: str) -> tuple[str, str]:
    """(name, alias or version) of models:/NAME@ALIAS or models:/NAME/VERSION."""
    body = uri.removeprefix("models:/")
    if body == uri or not body:
        raise EvaluationError(f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    if "@" in body:
        name, _, ref = body.partition("@")
    else:
        name, _, ref = body.partition("/")
    if not name or not ref or "/" in ref:
        raise EvaluationError(f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, ref


def predict(model: TrainedModel, data: ClipData, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities per input row, clip of each row). logreg_stats sees whole clips: one row per clip."""
    if model.arch == "logreg_stats":
        clips = np.arange(data.n_clips)
        fitted = model.model
        prob = np.zeros((data.n_clips, len(model.classes)))
        prob[:, fitted.classes_] = fitted.predict_proba(clip_statistics(data, clips))
        return prob, clips
    rows = np.arange(len(data.row_clip))
    prob = predict_rows(model.model.to(device), data, rows, device).numpy().astype(np.float64)
    return prob, data.row_clip
