"""Acquire RAVDESS, CAL500 and AudioSet into the raw clip store, version them with DVC, publish Assets.

Each source is one stage of dvc.yaml: the task runs the same function `dvc repro` runs, then
`dvc commit` + `dvc push` record it, so `dvc status` stays clean after the run.

AudioSet fans out: select -> plan shards -> one mapped download task per shard (pool
`audioset_downloads` caps how many run at once across all workers; each keeps `concurrency`
downloads in flight, all drawing on one request budget; a shard the stop-loss paused is
rescheduled for the pause's end) -> finalize. The DVC stage `acquire_audioset` runs the same three steps in one
process. A cookies file and a proxy come from the Airflow connection `audioset_youtube` (extras
`cookies_file`, `proxy`) or else the environment; they are never logged.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task
from common import AUDIOSET_POOL, LOCAL_ARGS, NETWORK_ARGS, ROOT, START, raw_asset, run_stage, version

from tasks.catalog import RAW_DATASETS

# Sources fetched whole by one stage; AudioSet fans out below.
SOURCES = {dataset: f"acquire_{dataset}" for dataset in RAW_DATASETS if dataset != "audioset"}


@task(**LOCAL_ARGS)
def plan_audioset() -> list[int]:
    from tasks.audioset.download import plan_audioset
    from tasks.cli import configure_logging, stage_config

    configure_logging()
    return plan_audioset(stage_config("acquire_audioset", ROOT), ROOT)


@task(pool=AUDIOSET_POOL, **NETWORK_ARGS)
def download_audioset_shard(shard: int) -> dict[str, int]:
    """A shard stopped by a pause of the shared request budget comes back when the pause ends (a
    reschedule frees its pool slot meanwhile), not after the retry delay."""
    from datetime import UTC, datetime

    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

    from tasks.audioset.download import ShardPaused, download_shard
    from tasks.cli import configure_logging, stage_config

    configure_logging()
    cfg = stage_config("acquire_audioset", ROOT)
    try:
        return download_shard(cfg, ROOT, shard, _credentials(cfg.credentials), wait_out_pauses=False)
    except ShardPaused as paused:
        if paused.exhausted:  # a retry 30 s later would only spend another pause: a person must look
            raise AirflowFailException(str(paused)) from paused
        raise AirflowRescheduleException(datetime.fromtimestamp(paused.resume_at, UTC)) from paused


def _credentials(names: Any) -> Any:
    """The Airflow connection's extras when it exists, else the environment variables params name."""
    from pathlib import Path

    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from tasks.audioset.ytdlp import Credentials

    try:
        extra = Connection.get(names.airflow_conn_id).extra_dejson
    except AirflowNotFoundException:
        return Credentials.from_env(names)
    cookies = extra.get("cookies_file")
    return Credentials(Path(cookies) if cookies else None, extra.get("proxy") or None)


@task(trigger_rule="none_failed", **LOCAL_ARGS)
def finalize_audioset() -> dict[str, Any]:
    from tasks.audioset.download import finalize_audioset
    from tasks.cli import configure_logging, stage_config

    configure_logging()
    return finalize_audioset(stage_config("acquire_audioset", ROOT), ROOT)


@dag(
    dag_id="acquire",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=["acquire", *RAW_DATASETS, "dvc"],
    doc_md=__doc__,
)
def acquire() -> None:
    for dataset, stage in SOURCES.items():
        metrics = run_stage.override(task_id=stage, **NETWORK_ARGS)(stage)
        version.override(task_id=f"version_{dataset}", outlets=[raw_asset(dataset)])(stage, metrics)
    selected = run_stage.override(task_id="select_audioset", **NETWORK_ARGS)("select_audioset")
    version.override(task_id="version_audioset_selection")("select_audioset", selected)
    shards = plan_audioset()
    selected >> shards
    downloads = download_audioset_shard.expand(shard=shards)
    finalized = finalize_audioset()
    downloads >> finalized
    version.override(task_id="version_audioset", outlets=[raw_asset("audioset")])("acquire_audioset", finalized)


acquire()
