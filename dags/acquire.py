"""Acquire RAVDESS and CAL500 into the raw clip store, version them with DVC, publish Assets.

Each source is one stage of dvc.yaml: the task runs the same function `dvc repro` runs, then
`dvc commit` + `dvc push` record it, so `dvc status` stays clean after the run.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task
from common import DVC_POOL, LOCAL_ARGS, NETWORK_ARGS, ROOT, START, raw_asset

SOURCES = {"ravdess": "acquire_ravdess", "cal500": "acquire_cal500"}


@task(**NETWORK_ARGS)
def run_stage(stage: str) -> dict[str, Any]:
    from tasks.cli import configure_logging, run_stage

    configure_logging()
    return run_stage(stage, ROOT)


@task(pool=DVC_POOL, **LOCAL_ARGS)
def version(stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    from tasks.versioning import commit_and_push

    return {**metrics, "dvc": commit_and_push(ROOT, [stage])}


@dag(
    dag_id="acquire",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=["acquire", "ravdess", "cal500", "dvc"],
    doc_md=__doc__,
)
def acquire() -> None:
    for dataset, stage in SOURCES.items():
        metrics = run_stage.override(task_id=stage)(stage)
        version.override(task_id=f"version_{dataset}", outlets=[raw_asset(dataset)])(stage, metrics)


acquire()
