"""The pipeline on Airflow's distributed executor: the CeleryExecutor, a Postgres metadata DB (a database of
its own, created and dropped here), a Redis broker, and two Celery workers as separate processes, one on
the default queue and one on `gpu`. MLflow keeps its runs in Postgres too.

Acquire runs by hand; the features, train and evaluate DAGs on the Assets it and they publish. What this
shows is where each task ran, that every task succeeded, and that the run leaves DVC clean.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.workspace import (
    AirflowServices,
    CeleryWorkers,
    MlflowServer,
    PostgresDatabase,
    airflow_env,
    celery_env,
    free_port,
    make_workspace,
    missing_services,
    prepare_airflow,
)
from tasks.catalog import Catalog
from tasks.versioning import dvc

from .conftest import CELERY_SPREAD
from .test_pipeline import TRAIN_OVERRIDES

pytestmark = pytest.mark.slow

WORKERS = [("default", "w-default"), ("gpu", "w-gpu")]  # (queue, worker name)
TRIGGERED = ["features_slices", "features_vggish", "train_spectrogram", "train_audioset"]
REDIS_DB = 1 + os.getpid() % 15  # one of the local Redis's 16 databases for this run's broker (0 left alone)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, mirror_params: list[str]) -> Any:
    missing = missing_services()
    if missing:
        pytest.skip("the CeleryExecutor test needs " + ", ".join(missing))
    import psycopg2
    import redis

    redis.Redis(port=6379, db=REDIS_DB).flushdb()  # no task message of an earlier run is left in the broker
    root = tmp_path_factory.mktemp("celery")
    name = f"mood_test_{os.getpid()}"
    with PostgresDatabase(f"{name}_airflow") as airflow_db, PostgresDatabase(f"{name}_mlflow") as mlflow_db, \
            MlflowServer(root / "mlflow", backend=mlflow_db.url()) as mlflow:  # fmt: skip
        ws = make_workspace(root / "ws", [*mirror_params, *TRAIN_OVERRIDES, "train.common.registry_prefix=celery",
                                          f"train.common.tracking_uri={mlflow.url}",
                                          f"evaluate.tracking_uri={mlflow.url}"])  # fmt: skip
        env = celery_env(airflow_env(root / "airflow", ws), airflow_db, REDIS_DB)
        prepare_airflow(env)
        port = free_port(8080)
        with AirflowServices(env, port) as services, CeleryWorkers(env, WORKERS, port) as workers:
            services.wait_for_dag("acquire")
            for dag_id in ("evaluate", *TRIGGERED):
                services.wait_for_dag(dag_id)
            runs = {"acquire": services.trigger("acquire")}
            states = {"acquire": services.wait_for_run("acquire", runs["acquire"], timeout=900)}
            for dag_id in TRIGGERED:
                workers.check_alive()
                runs[dag_id] = services.wait_for_triggered_run(dag_id, timeout=300)
                states[dag_id] = services.wait_for_run(dag_id, runs[dag_id], timeout=900)
            for i, run in enumerate(_evaluations(services, workers, ws)):
                runs[f"evaluate#{i}"], states[f"evaluate#{i}"] = run["dag_run_id"], run["state"]
            tis = {dag_id: _task_instances(services, dag_id.split("#")[0], run) for dag_id, run in runs.items()}
            conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=mlflow_db.name)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT status, count(*) FROM runs GROUP BY status")
                    mlflow_runs = dict(cur.fetchall())
                    cur.execute("SELECT name FROM registered_models")
                    registered = {row[0] for row in cur.fetchall()}
            finally:
                conn.close()
        yield {"workspace": ws, "states": states, "tis": tis, "mlflow_runs": mlflow_runs, "registered": registered,
               "airflow_home": root / "airflow"}  # fmt: skip


def _evaluations(services: AirflowServices, workers: CeleryWorkers, ws: Path, timeout: float = 600) -> list[dict]:
    """The evaluate DAG's runs (one per batch of model Assets), once none is pending and every model has its
    evaluation metrics."""
    metrics = [ws / paths.metrics for name, paths in Catalog.load(ws).stages().items() if name.startswith("evaluate_")
               and "@" in name]  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        workers.check_alive()
        runs = services.api("GET", "/api/v2/dags/evaluate/dagRuns", params={"order_by": "id"}).json()["dag_runs"]
        if runs and all(r["state"] in ("success", "failed") for r in runs) and all(m.exists() for m in metrics):
            return runs
        assert time.monotonic() < deadline, f"evaluations still pending after {timeout:.0f} s: {runs}"
        time.sleep(3)


def _task_instances(services: AirflowServices, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    resp = services.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    resp.raise_for_status()
    return [{k: ti[k] for k in ("task_id", "map_index", "state", "queue", "hostname")}
            for ti in resp.json()["task_instances"]]  # fmt: skip


def test_every_task_of_the_pipeline_succeeded(cluster: dict) -> None:
    assert set(cluster["states"]) >= {"acquire", *TRIGGERED, "evaluate#0"}
    assert set(cluster["states"].values()) == {"success"}, cluster["states"]
    failed = [(d, ti["task_id"], ti["state"]) for d, tis in cluster["tis"].items() for ti in tis
              if ti["state"] != "success"]  # fmt: skip
    assert not failed


def test_training_runs_only_on_the_gpu_worker_and_nothing_else_does(cluster: dict) -> None:
    spread = Counter((ti["queue"], ti["hostname"]) for tis in cluster["tis"].values() for ti in tis)
    lines = [f"queue {queue:<8} on {host}: {n} task instances" for (queue, host), n in sorted(spread.items())]
    CELERY_SPREAD.parent.mkdir(exist_ok=True)
    CELERY_SPREAD.write_text("\n".join(lines) + "\n")
    for dag_id, tis in cluster["tis"].items():
        for ti in tis:
            where = (ti["queue"], ti["hostname"])
            expected = ("gpu", "w-gpu") if ti["task_id"] == "train_model" else ("default", "w-default")
            assert where == expected, (dag_id, ti)
    assert {host for _, host in spread} == {"w-default", "w-gpu"}
    assert sum(n for (queue, _), n in spread.items() if queue == "gpu") >= 4  # the four models of the matrix


def test_dvc_is_clean_after_the_distributed_run(cluster: dict) -> None:
    assert dvc(cluster["workspace"], "status").strip() == "Data and pipelines are up to date."


def test_the_training_runs_landed_in_mlflows_postgres_store(cluster: dict) -> None:
    assert cluster["mlflow_runs"].get("FINISHED", 0) >= 4 and "FAILED" not in cluster["mlflow_runs"]
    assert {"celery-spectrogram-small-cnn", "celery-audioset-lstm1"} <= cluster["registered"]


def test_the_metadata_lived_in_postgres_not_sqlite(cluster: dict) -> None:
    assert not (Path(cluster["airflow_home"]) / "airflow.db").exists()
