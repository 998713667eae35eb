"""MLflow: where runs go, what each run records, and the registry's `champion` rule.

A model version takes the alias `champion` only when it beats the current champion on the same
validation split (the same clips) and the same metric; the comparison is written as tags on the
new version either way, so the registry says why an alias did or did not move.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml

from tasks.errors import PipelineError

log = logging.getLogger("tasks")
CHAMPION = "champion"
METRIC = "val_clip_accuracy"
# Explicit requirements: MLflow's own inference of them costs seconds per model and may reach out.
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "numpy==2.4.6", "scikit-learn==1.9.1"]


class TrackingError(PipelineError):
    """The MLflow server is unreachable or refused a request."""


def tracking_uri(configured: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


def check_server(uri: str) -> None:
    """Fail early, and say how to fix it, when the tracking server is not up."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingError(f"MLflow tracking server {uri} does not answer ({exc.__class__.__name__}); start it with "
                            "mlflow/start.sh [PORT] or set MLFLOW_TRACKING_URI / train.common.tracking_uri") from None


def connect(configured: str) -> str:
    """Point MLflow at the tracking server ($MLFLOW_TRACKING_URI or `configured`) once it answers."""
    import mlflow

    uri = tracking_uri(configured)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return uri


def experiment_id(name: str) -> str:
    """The experiment's id, created if missing; two tasks creating it at once both get the one that won."""
    from mlflow.exceptions import MlflowException

    import mlflow

    try:
        return mlflow.set_experiment(name).experiment_id
    except MlflowException:
        existing = mlflow.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def registered_name(prefix: str, study: str, arch: str) -> str:
    return f"{prefix}-{study}-{arch.replace('_', '-')}"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested params as dotted keys, as MLflow shows them."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return f"{commit}-dirty" if commit != "unknown" and git("status", "--porcelain", "--untracked-files=no") else commit


def dvc_hash(root: Path, out: str) -> str:
    """The DVC hash of an output as dvc.lock records it, or why there is none."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return "not versioned (no dvc.lock)"
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for entry in stage.get("outs", []):
            if entry.get("path") == out:
                return entry.get("md5") or entry.get("hash") or "unknown"
    return f"not versioned ({out} is in no dvc.lock stage)"


def feature_tags(root: Path, features_dir: str, metadata: dict[str, Any]) -> dict[str, str]:
    tags = {
        "features.dir": features_dir,
        "features.stage": metadata.get("stage", ""),
        "features.params_hash": metadata.get("params_hash", ""),
        "features.code_version": metadata.get("code_version", ""),
        "features.dvc_hash": dvc_hash(root, features_dir),
    }
    if metadata.get("stage") == "features_vggish":
        tags["vggish_weights"] = "random" if metadata.get("random_weights") else "published"
    return tags


def random_weights_warning(metadata: dict[str, Any]) -> str:
    if metadata.get("random_weights"):
        return ("Trained on embeddings from SEEDED RANDOM VGGish weights (an offline run): these figures say "
                "nothing about real VGGish features.")
    return ""


def promote_if_better(name: str, version: str, metric: float, split_signature: str) -> dict[str, Any]:
    """Tag the new version with its score and its comparison; move `champion` to it only if it is
    strictly better than the champion on the same validation split."""
    from mlflow.exceptions import MlflowException

    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, version, "val_metric", METRIC)
    client.set_model_version_tag(name, version, "val_score", repr(float(metric)))
    client.set_model_version_tag(name, version, "val_split", split_signature)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # the server failing is no reason to hand the alias over
        current = None
    if current is None:
        decision, promote = "no champion yet: takes the alias", True
    else:
        tags = current.tags
        if tags.get("val_split") != split_signature or tags.get("val_metric") != METRIC:
            decision, promote = (f"not compared: champion v{current.version} was validated on another split or "
                                 "metric; it keeps the alias", False)  # fmt: skip
        else:
            theirs = float(tags["val_score"])
            promote = metric > theirs + 1e-12  # a tie keeps the alias where it is
            verb = "beats" if promote else "does not beat"
            decision = f"{METRIC} {metric:.4f} {verb} champion v{current.version} ({theirs:.4f})"
        client.set_model_version_tag(name, version, "compared_to_version", str(current.version))
    client.set_model_version_tag(name, version, "champion_decision", decision)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    holder = client.get_model_version_by_alias(name, CHAMPION).version
    log.info("registry: %s v%s: %s; champion is v%s", name, version, decision, holder)
    return {"registered_model": name, "version": str(version), "champion_version": str(holder), "decision": decision}


def pair_audio_model(name: str, version: str, audio_name: str, audio_version: str) -> None:
    """Link a torch version and the audio model logged beside it both ways, then point the audio model's
    `champion` at the audio model of whichever torch version holds `champion` now (read now, not when this run
    was compared: another training of the same name may have moved it meanwhile)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, version, "audio_model", f"{audio_name}/{audio_version}")
    client.set_model_version_tag(audio_name, audio_version, "torch_model", f"{name}/{version}")
    paired = client.get_model_version_by_alias(name, CHAMPION).tags.get("audio_model", "")
    champion_name, _, champion_audio = paired.rpartition("/")
    if champion_name == audio_name and champion_audio:
        client.set_registered_model_alias(audio_name, CHAMPION, champion_audio)
    else:
        log.warning("registry: %s@%s has no audio model (trained before prediction existed); %s@%s is unset until "
                    "a version with one takes the alias", name, CHAMPION, audio_name, CHAMPION)  # fmt: skip
