"""Training against the real MLflow server: registry names, the champion rule, kill-and-resume, the floor.

The workspace holds features of a generated corpus of three singers, computed by the feature stages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from devtools.mirror.cli import CorpusSpec
from tasks.cli import run_stage

from .features_fixture import corpus_workspace

pytestmark = pytest.mark.slow
SPEC = CorpusSpec(seed=11, ravdess_actors=(1, 2, 3), ravdess_seconds=(3.8, 5.0), cal500_songs=2,
                  cal500_seconds=(5.0, 8.0), audioset_per_class=(6, 1), audioset_missing=0)  # fmt: skip
FOLDS = "{kind: actor_folds, k: 3, fold: 0}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Path:
    return corpus_workspace(tmp_path_factory.mktemp("train"), SPEC, [
        f"train.common.tracking_uri={mlflow_server}",
        f"train.models.spectrogram.cnn_ravdess.split={FOLDS}",
        f"train.models.spectrogram.stats_ravdess.split={FOLDS}",
        "train.models.audioset.logreg_audioset.split.k=3",
        "train.models.audioset.lstm1_audioset.split.k=3"])  # fmt: skip


def client(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def test_small_cnn_beats_twice_chance_on_a_held_out_singer(workspace: Path, mlflow_server: str) -> None:
    result = run_stage("train_spectrogram@cnn_ravdess", workspace)["cnn_ravdess"]
    # Six emotions: chance is 1/6. A pipeline that mixes labels, slices or splits stays near it.
    assert result["val_clip_accuracy"] >= 2 * result["chance"], result
    assert result["val_clips"] == 44 and result["train_clips"] == 88 and result["chosen_on"] == "inner"
    assert result["val_clip_accuracy_ci95_low"] < result["val_clip_accuracy"] <= result["val_clip_accuracy_ci95_high"]
    card = json.loads((workspace / "models/cnn_ravdess/model.json").read_text())
    assert card["registered_model"] == "mood-spectrogram-small-cnn" and card["classes"][0] == "neutral"
    run = client(mlflow_server).get_run(card["mlflow_run_id"])
    assert run.data.tags["features.params_hash"] == card["features"]["params_hash"]
    assert run.data.tags["git_commit"] != "unknown" and run.data.tags["weights"] == "random-init"
    assert run.data.params["arch.lr"] == "0.002" and run.data.params["model.split.kind"] == "actor_folds"
    history = client(mlflow_server).get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == result["epochs_run"]
    artifacts = {a.path for a in client(mlflow_server).list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "confusion_val.png", "confusion_val.csv", "labels.json"} <= artifacts
    metrics = json.loads((workspace / "metrics/train_cnn_ravdess.json").read_text())
    assert metrics["val_clip_accuracy"] == result["val_clip_accuracy"]
    assert (workspace / "plots/curves/train_cnn_ravdess.csv").read_text().startswith("epoch,train_loss")


def test_registry_names_and_random_weights_label(workspace: Path, mlflow_server: str) -> None:
    results = {m: run_stage(f"{stage}@{m}", workspace)[m] for stage, m in [
        ("train_spectrogram", "stats_ravdess"), ("train_audioset", "logreg_audioset"),
        ("train_audioset", "lstm1_audioset")]}
    assert {r["registered_model"] for r in results.values()} == {
        "mood-spectrogram-logreg-stats", "mood-audioset-logreg", "mood-audioset-lstm1"}
    mlflow_client = client(mlflow_server)
    lstm = mlflow_client.get_run(results["lstm1_audioset"]["mlflow_run_id"])
    assert lstm.data.tags["vggish_weights"] == "random"
    assert "SEEDED RANDOM VGGish weights" in lstm.data.tags["mlflow.note.content"]
    assert results["lstm1_audioset"]["random_vggish_weights"] is True
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{results['lstm1_audioset']['registered_model']}@champion")
    assert model.metadata.signature is not None


def test_champion_moves_only_to_a_better_model(workspace: Path, mlflow_server: str) -> None:
    base = ["train.models.spectrogram.champ={arch: small_cnn, dataset: ravdess,"
            " split: {kind: actor_folds, k: 3, fold: 1}}",
            "train.common.registry_prefix=champtest"]
    def train(epochs: int) -> dict:
        epochs_override = f"train.models.spectrogram.champ.overrides={{epochs: {epochs}}}"
        return run_stage("train_spectrogram@champ", workspace, overrides=[*base, epochs_override])["champ"]

    weak, strong, again = train(1), train(25), train(1)
    assert strong["val_clip_accuracy"] > weak["val_clip_accuracy"] == again["val_clip_accuracy"]
    name = strong["registered_model"]
    assert name == "champtest-spectrogram-small-cnn"
    assert "no champion yet" in client(mlflow_server).get_model_version(name, weak["version"]).tags["champion_decision"]
    versions = [int(r["version"]) for r in (weak, strong, again)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    mlflow_client = client(mlflow_server)
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == strong["version"]
    tags = mlflow_client.get_model_version(name, again["version"]).tags
    assert tags["compared_to_version"] == strong["version"] and "does not beat" in tags["champion_decision"]
    assert "beats champion" in mlflow_client.get_model_version(name, strong["version"]).tags["champion_decision"]


def test_killed_training_resumes_into_the_same_run_and_weights(workspace: Path, mlflow_server: str) -> None:
    entry = "{arch: small_cnn, dataset: ravdess, split: {kind: actor_folds, k: 3, fold: 2}, overrides: {epochs: 6}}"
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for name in ("killed", "straight"):
        params["train"]["models"]["spectrogram"][name] = yaml.safe_load(entry)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "-m", "tasks", "train_spectrogram@killed"]
    checkpoint = workspace / ".cache/train/killed/checkpoint.pt"
    proc = subprocess.Popen(cmd, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (checkpoint.exists() and torch.load(checkpoint, weights_only=False)["epoch"] >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # as Airflow kills a task: no cleanup runs
    proc.wait()
    assert not (workspace / "models/killed").exists()
    run_id = json.loads((workspace / ".cache/train/killed/run.json").read_text())["run_id"]
    done = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from the checkpoint after epoch" in done.stderr and f"resuming MLflow run {run_id}" in done.stderr
    run_stage("train_spectrogram@straight", workspace)
    killed = torch.load(workspace / "models/killed/model.pt")
    straight = torch.load(workspace / "models/straight/model.pt")
    assert killed.keys() == straight.keys() and all(torch.equal(killed[k], straight[k]) for k in killed)
    card = json.loads((workspace / "models/killed/model.json").read_text())
    assert card["mlflow_run_id"] == run_id and not checkpoint.exists()
    steps = {m.step for m in client(mlflow_server).get_metric_history(run_id, "val_loss")}
    assert steps == set(range(card["metrics"]["epochs_run"]))


def test_random_search_draws_seeded_sets_as_nested_runs(workspace: Path, mlflow_server: str) -> None:
    overrides = ["train.models.spectrogram.searched={arch: small_cnn, dataset: ravdess,"
                 " split: {kind: actor_folds, k: 3}, overrides: {epochs: 2}}",
                 "train.common.registry_prefix=searchtest", "train.common.search.trials=3",
                 "train.common.search.space={lr: [1.0e-4, 1.0e-2], batch_size: [16, 32, 64]}"]  # fmt: skip
    mlflow_client = client(mlflow_server)

    def trials(run_id: str) -> list[dict[str, str]]:
        children = mlflow_client.search_runs(
            [mlflow_client.get_run(run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}'", order_by=["attributes.start_time ASC"])
        return [{k: v for k, v in c.data.params.items() if k.startswith("trial.")} for c in children]

    first = run_stage("train_spectrogram@searched", workspace, overrides=overrides)["searched"]
    drawn = trials(first["mlflow_run_id"])
    assert len(drawn) == 3 and len({d["trial.lr"] for d in drawn}) == 3
    assert all(1e-4 <= float(d["trial.lr"]) <= 1e-2 and d["trial.batch_size"] in {"16", "32", "64"} for d in drawn)
    parent = mlflow_client.get_run(first["mlflow_run_id"])
    best = int(parent.data.tags["search"].rsplit(" ", 1)[-1])
    assert parent.data.params["best.lr"] == drawn[best]["trial.lr"]
    second = run_stage("train_spectrogram@searched", workspace, overrides=overrides)["searched"]
    assert trials(second["mlflow_run_id"]) == drawn  # the same seed draws the same sets
    assert second["val_clip_accuracy"] == first["val_clip_accuracy"]
