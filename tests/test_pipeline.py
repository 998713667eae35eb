"""The acquisition DAG end to end in a real Airflow, against the loopback mirror, with DVC."""

from pathlib import Path

import pytest
import yaml

from tasks.versioning import dvc
from tasks.workspace import airflow, airflow_env, git, make_workspace, prepare_airflow

pytestmark = pytest.mark.slow


def outs_md5(lock: Path) -> dict[str, str]:
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage["outs"]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, mirror_params: list[str]) -> Path:
    """A workspace after one `airflow dags test acquire` run."""
    root = tmp_path_factory.mktemp("pipeline")
    ws = make_workspace(root / "ws", mirror_params)
    env = airflow_env(root / "airflow", ws)
    prepare_airflow(env)
    proc = airflow(env, "dags", "test", "acquire")
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
    assert outs_md5(clone / "dvc.lock") == outs_md5(workspace / "dvc.lock")
