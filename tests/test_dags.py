"""DAG integrity, as in an Astronomer project: every DAG imports cleanly, is tagged, retries."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.workspace import airflow_env

from .conftest import PROJECT

pytestmark = pytest.mark.slow  # each test starts Python processes that import Airflow (~10 s apiece)
DAG_FILES = sorted(p for p in (PROJECT / "dags").glob("*.py") if p.name != "common.py")
# Tasks that reach the network (sources, mirrors) must retry.
NETWORK_TASKS = {"acquire_ravdess", "acquire_cal500", "select_audioset", "download_audioset_shard"}

# Airflow 3 puts the DAG bundle folder on sys.path (BundleDagBag), so DAG files share `common`.
INSPECT = """
import json, sys
from airflow import settings
sys.path.append(settings.DAGS_FOLDER)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag()
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {d.dag_id: {"tags": sorted(d.tags), "tasks": {t.task_id: t.retries for t in d.tasks},
                        "placement": {t.task_id: [t.queue, t.pool] for t in d.tasks}}
             for d in bag.dags.values()},
}))
"""


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = airflow_env(tmp_path_factory.mktemp("airflow"), PROJECT)
    out = subprocess.run([sys.executable, "-c", INSPECT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_import_errors(dagbag: dict) -> None:
    assert dagbag["errors"] == {}
    assert "acquire" in dagbag["dags"]


def test_every_dag_is_tagged_and_network_tasks_retry(dagbag: dict) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        for task_id, retries in dag["tasks"].items():
            floor = 2 if task_id in NETWORK_TASKS else 1
            assert retries >= floor, f"{dag_id}.{task_id} retries {retries} < {floor}"
    assert set(dagbag["dags"]["acquire"]["tasks"]) >= NETWORK_TASKS


def test_training_runs_on_the_gpu_queue_and_pool_only(dagbag: dict) -> None:
    placement = {(d, t): qp for d, dag in dagbag["dags"].items() for t, qp in dag["placement"].items()}
    training = {k: qp for k, qp in placement.items() if k[1] == "train_model"}
    assert set(training) == {("train_spectrogram", "train_model"), ("train_audioset", "train_model")}
    assert all(qp == ["gpu", "gpu"] for qp in training.values())
    others = {k: qp for k, qp in placement.items() if k not in training}
    assert all(queue != "gpu" and pool != "gpu" for queue, pool in others.values()), others


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_import_nothing_heavy(dag_file: Path, tmp_path: Path) -> None:
    """The dag-processor parses these often: torch or librosa at import time would stall it."""
    code = (
        f"import sys, runpy; sys.path.insert(0, {str(dag_file.parent)!r}); runpy.run_path({str(dag_file)!r}); "
        "heavy = sorted(m for m in ('torch', 'librosa', 'mlflow', 'torchvision', 'yt_dlp', 'pyarrow', 'pandas')"
        " if m in sys.modules); print(','.join(heavy))"
    )
    env = airflow_env(tmp_path / "airflow", PROJECT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"{dag_file.name} imports {out.stdout.strip()}"
