"""The acquisition DAG end to end in a real Airflow, against the loopback mirror, with DVC."""

from pathlib import Path

import pytest
import yaml

from devtools.workspace import airflow, airflow_env, git, make_workspace, prepare_airflow
from tasks.versioning import dvc

pytestmark = pytest.mark.slow
FEATURE_DAGS = ("features_slices", "features_vggish")
# The test corpus has one singer and a few AudioSet clips: random splits by clip, a few epochs.
RANDOM_SPLIT = "{kind: random, val_share: 0.5}"
TRAIN_OVERRIDES = [*(f"train.models.{m}.split={RANDOM_SPLIT}" for m in
                     ("spectrogram.cnn_ravdess", "spectrogram.stats_ravdess", "audioset.logreg_audioset",
                      "audioset.lstm1_audioset")),
                   *(f"train.architectures.{a}.epochs=3" for a in ("small_cnn", "logreg", "lstm1")),
                   "train.common.registry_prefix=pipeline"]  # fmt: skip


def outs_md5(lock: Path) -> dict[str, str]:
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage["outs"]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, mirror_params: list[str], mlflow_server: str) -> Path:
    """A workspace after one `airflow dags test acquire` run, then the features, train and evaluate DAGs its
    Assets trigger."""
    root = tmp_path_factory.mktemp("pipeline")
    ws = make_workspace(root / "ws", [*mirror_params, *TRAIN_OVERRIDES, f"train.common.tracking_uri={mlflow_server}",
                                      f"evaluate.tracking_uri={mlflow_server}"])  # fmt: skip
    env = airflow_env(root / "airflow", ws)
    prepare_airflow(env)
    # The features DAGs run on the Assets acquire publishes, train on theirs, evaluate on the models';
    # `dags test` runs each in turn (evaluate with its default params: every model of the matrix).
    for dag_id in ["acquire", *FEATURE_DAGS, "train_spectrogram", "train_audioset", "evaluate"]:
        proc = airflow(env, "dags", "test", dag_id)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-5000:]
        assert "state=failed" not in log and "DagRunState.FAILED" not in log, log[-5000:]
    return ws


def test_dag_run_stores_both_datasets(workspace: Path) -> None:
    for dataset in ("ravdess", "cal500"):
        out = workspace / "data/raw" / dataset
        assert (out / "manifest.parquet").exists() and (out / "failures.parquet").exists()
    metrics = yaml.safe_load((workspace / "metrics/acquire_ravdess.json").read_text())
    assert metrics["clips"] == 44


def test_audioset_branch_fans_out_and_versions_both_stages(workspace: Path) -> None:
    # The test corpus lists 14 single-mood segments: 1 video gone, 1 shorter than its segment, 1 silent.
    metrics = yaml.safe_load((workspace / "metrics/acquire_audioset.json").read_text())
    assert metrics["selected"] == 14 and metrics["clips"] == 11
    assert metrics["failed_by_reason"] == {"duration_mismatch": 1, "silent": 1, "unavailable": 1}
    out = workspace / "data/raw/audioset"
    assert (out / "manifest.parquet").exists() and list((out / "shards").glob("part-00000-*.parquet"))
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert lock["select_audioset"]["outs"][0]["path"] == "data/audioset/selection.parquet"
    assert lock["acquire_audioset"]["outs"][0]["path"] == "data/raw/audioset"


def test_features_dag_publishes_versioned_slices(workspace: Path) -> None:
    acquired = sum(yaml.safe_load((workspace / f"metrics/acquire_{d}.json").read_text())["clips"]
                   for d in ("ravdess", "cal500"))  # fmt: skip
    metrics = yaml.safe_load((workspace / "metrics/features_slices.json").read_text())
    assert metrics["clips"] == acquired and metrics["failed"] == 0 and metrics["shape"] == [128, 128]
    assert set(metrics["per_dataset"]) == {"ravdess", "cal500"}
    assert (workspace / "data/features/slices/_dataset.json").exists()
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert lock["features_slices"]["outs"][0]["path"] == "data/features/slices"


def test_features_dag_publishes_versioned_embeddings(workspace: Path) -> None:
    acquired = yaml.safe_load((workspace / "metrics/acquire_audioset.json").read_text())["clips"]
    metrics = yaml.safe_load((workspace / "metrics/features_vggish.json").read_text())
    assert metrics["clips"] == acquired and metrics["failed"] == 0 and metrics["shape"] == [128]
    assert metrics["rows"] >= metrics["clips"]  # one row per 0.96 s example
    # The offline run has no published weights: it says so in the metrics and the dataset metadata.
    assert metrics["random_weights"] is True
    meta = yaml.safe_load((workspace / "data/features/vggish/_dataset.json").read_text())
    assert meta["random_weights"] is True and meta["params_hash"] == metrics["params_hash"]


def test_train_dag_registers_every_model_of_the_matrix(workspace: Path, mlflow_server: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    for stage, name, registered in [("train_spectrogram", "cnn_ravdess", "pipeline-spectrogram-small-cnn"),
                                    ("train_spectrogram", "stats_ravdess", "pipeline-spectrogram-logreg-stats"),
                                    ("train_audioset", "logreg_audioset", "pipeline-audioset-logreg"),
                                    ("train_audioset", "lstm1_audioset", "pipeline-audioset-lstm1")]:  # fmt: skip
        card = yaml.safe_load((workspace / f"models/{name}/model.json").read_text())
        assert card["registered_model"] == registered
        assert client.get_model_version_by_alias(registered, "champion").version == card["version"]
        assert client.get_run(card["mlflow_run_id"]).data.tags["features.dvc_hash"] == outs_md5(
            workspace / "dvc.lock")[card["features"]["dir"]]
        assert f"models/{name}" in {out["path"] for out in lock[f"{stage}@{name}"]["outs"]}


def test_train_dag_publishes_one_asset_per_model(workspace: Path) -> None:
    import json

    proc = airflow(airflow_env(workspace.parent / "airflow", workspace), "assets", "list", "-o", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assets = {a["name"]: a["uri"] for a in json.loads(proc.stdout[proc.stdout.index("["):])}
    for name in ("cnn_ravdess", "stats_ravdess", "logreg_audioset", "lstm1_audioset"):
        assert assets[f"model_{name}"] == f"file://{workspace}/models/{name}"


def test_evaluate_dag_reports_every_model_and_the_studies(workspace: Path) -> None:
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    for stage, name in [("evaluate_spectrogram", "cnn_ravdess"), ("evaluate_spectrogram", "stats_ravdess"),
                        ("evaluate_audioset", "logreg_audioset"), ("evaluate_audioset", "lstm1_audioset")]:
        assert (workspace / f"reports/models/{name}/report.html").exists()
        assert f"reports/models/{name}" in {out["path"] for out in lock[f"{stage}@{name}"]["outs"]}
    assert (workspace / "reports/summary/index.html").exists() and "evaluate_summary" in lock


def test_dvc_is_clean_and_pushed_after_the_airflow_run(workspace: Path) -> None:
    assert dvc(workspace, "status").strip() == "Data and pipelines are up to date."
    assert "in sync" in dvc(workspace, "status", "--cloud")
    assert any((workspace / ".dvc-remote").rglob("*"))


def test_repro_does_nothing_then_reruns_only_the_changed_stage(workspace: Path) -> None:
    out = dvc(workspace, "repro")
    assert "Running stage" not in out and "didn't change, skipping" in out
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["acquire_cal500"]["keep"] = "single"
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(workspace, "status")
    assert "acquire_cal500" in status and "acquire_ravdess" not in status
    out = dvc(workspace, "repro")
    assert "Running stage 'acquire_cal500'" in out and "Running stage 'acquire_ravdess'" not in out
    assert dvc(workspace, "status").strip() == "Data and pipelines are up to date."
    git(workspace, "checkout", "params.yaml")


def test_clean_clone_reproduces_the_same_artifacts(workspace: Path, tmp_path: Path) -> None:
    dvc(workspace, "repro")  # back to the committed params
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "airflow run")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(workspace), str(clone))
    dvc(clone, "remote", "modify", "--local", "local", "url", str(tmp_path / "fresh-remote"))
    out = dvc(clone, "repro")
    assert "Running stage 'acquire_ravdess'" in out and "Running stage 'acquire_cal500'" in out
    assert "Running stage 'train_spectrogram@cnn_ravdess'" in out
    # Data, features, learning curves and song votes are byte-identical; a model's folder, its report and
    # metrics also name their own MLflow runs and registered version, so only its weights are compared.
    data = {p: h for p, h in outs_md5(workspace / "dvc.lock").items()
            if not p.startswith(("models/", "metrics/", "reports/"))}
    assert {p: outs_md5(clone / "dvc.lock")[p] for p in data} == data
    for name in ("cnn_ravdess", "lstm1_audioset"):
        assert (clone / f"models/{name}/model.pt").read_bytes() == (workspace / f"models/{name}/model.pt").read_bytes()
