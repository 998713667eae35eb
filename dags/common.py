"""Shared wiring for the DAG files: where the workspace is, retry policy, the Assets.

Kept light on purpose: the dag-processor imports this on every parse.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset

# The workspace is the DVC repo the tasks read and write; DAGs live in its dags/ folder.
ROOT = Path(os.environ.get("MOOD_PIPELINE_ROOT") or Path(__file__).resolve().parents[1])
START = datetime(2026, 1, 1)
DVC_POOL = "dvc"  # one slot: DVC holds a repo-wide lock, so its commands must not overlap

# Tasks that touch the network: sources fail transiently, so back off and try again.
NETWORK_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=12),
}
LOCAL_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=10), "execution_timeout": timedelta(hours=2)}


def raw_asset(dataset: str) -> Asset:
    """The raw clip store of one dataset; later DAGs schedule on it."""
    return Asset(name=f"raw_{dataset}", uri=f"file://{ROOT}/data/raw/{dataset}", group="raw_clips")
