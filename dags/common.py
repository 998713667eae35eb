"""Shared wiring for the DAG files: where the workspace is, retry policy, the Assets (from tasks.catalog).

Kept light on purpose: the dag-processor imports this on every parse.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, task

from tasks.catalog import AssetPath, Catalog

# The workspace is the DVC repo the tasks read and write; DAGs live in its dags/ folder.
ROOT = Path(os.environ.get("MOOD_PIPELINE_ROOT") or Path(__file__).resolve().parents[1])
CATALOG = Catalog.load(ROOT)  # every path and Asset, from the workspace's params.yaml
START = datetime(2026, 1, 1)
DVC_POOL = "dvc"  # one slot: DVC holds a repo-wide lock, so its commands must not overlap
# Pools are sized with `airflow pools set` (the demo's workspace does it: devtools.workspace).
AUDIOSET_POOL = "audioset_downloads"  # caps AudioSet shard tasks across all workers
GPU_POOL = "gpu"  # one slot per GPU (1 where there is none, so CPU runs go one at a time)
GPU_QUEUE = "gpu"  # CeleryExecutor: only GPU workers listen on it

# Tasks that touch the network: sources fail transiently, so back off and try again.
NETWORK_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=12),
}
LOCAL_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=10), "execution_timeout": timedelta(hours=2)}


def _asset(spec: AssetPath) -> Asset:
    return Asset(name=spec.name, uri=f"file://{ROOT / spec.path}", group=spec.group)


def raw_asset(dataset: str) -> Asset:
    """The raw clip store of one dataset (acquire_<dataset>.store.out_dir); later DAGs schedule on it."""
    return _asset(CATALOG.raw_asset(dataset))


def features_asset(name: str) -> Asset:
    """A feature dataset (`slices`, `vggish`); training DAGs schedule on it."""
    return _asset(CATALOG.features_asset(name))


def matrix_models() -> dict[str, str]:
    """name -> study of every model in params.yaml's train.models."""
    return CATALOG.models()


def model_asset(name: str) -> Asset:
    """A trained model of the matrix (<train.common.models_dir>/<name>); the evaluation DAG schedules on it."""
    return _asset(CATALOG.model_asset(name))


def predictions_asset() -> Asset:
    """Where predict_batch writes its runs' predictions (predict.out_dir)."""
    return _asset(CATALOG.predictions_asset())


@task(**LOCAL_ARGS)
def run_stage(stage: str) -> dict[str, Any]:
    """Run one stage in the workspace: the function `dvc repro` runs (override retries per use)."""
    from tasks.cli import configure_logging, run_stage

    configure_logging()
    return run_stage(stage, ROOT)


@task(pool=DVC_POOL, **LOCAL_ARGS)
def version(stage: str, metrics: dict[str, Any]) -> str:
    """Record the stage's outputs in dvc.lock and push them, so `dvc status` stays clean.

    `metrics`, the stage task's result, orders this task after it. The figures are in the stage's
    metrics file, so the return value (the XCom, and the log's last line) is a short outcome.
    """
    from tasks.versioning import commit_and_push, outcome

    return outcome(commit_and_push(ROOT, [stage]))
