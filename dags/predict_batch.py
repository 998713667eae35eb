"""Predict the mood of a folder of audio files, or of a raw clip store, with a registered or DVC model.

Triggered from the UI ("Trigger DAG" opens the form): an input (a folder, absolute or relative to the
workspace, or a raw dataset: ravdess, cal500, audioset), a model (an alias or version of the registry,
runs:/ID/model, or a models/<name> folder) and a voting rule. The files are mapped in chunks of
predict.chunk_files; each chunk writes a Parquet part, a file that cannot be predicted is a row with its
error and the chunk goes on. `collect` writes <predict.out_dir>/<run>/predictions.parquet (file, mood,
probabilities, model version), updates the `predictions` Asset and logs a summary.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from common import CATALOG, LOCAL_ARGS, ROOT, START, predictions_asset

PREDICT = CATALOG.params.get("predict") or {}  # params.yaml's section: the form's defaults
PARAMS = {
    "input": Param("", type="string", title="Input folder or raw dataset",
                   description="a folder of audio files (absolute, or relative to the workspace), or a raw clip "
                               "store: ravdess, cal500, audioset"),
    "model": Param(PREDICT.get("model", ""), type="string", title="Model",
                   description="models:/NAME@ALIAS (e.g. models:/mood-spectrogram-small-cnn@champion), "
                               "models:/NAME/VERSION, runs:/RUN_ID/model or models/<name>"),
    "voting": Param(PREDICT.get("voting", "majority"), type="string", enum=["majority", "soft", "threshold"],
                    title="Voting rule",
                    description="how slice predictions become a song's mood (threshold: predict.threshold)"),
}  # fmt: skip


def predict_config() -> Any:
    from tasks.cli import configure_logging
    from tasks.config import DEFAULT_PARAMS, load_params, section_config

    configure_logging()
    return section_config(load_params(ROOT / DEFAULT_PARAMS), "predict")


@task(**LOCAL_ARGS)
def plan(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The files in chunks; the model resolved to one version for the whole run."""
    from tasks.predict.batch import plan_batch

    params = params or {}
    run_id = get_current_context()["run_id"]
    return plan_batch(predict_config(), ROOT, run_id, str(params.get("input") or ""), str(params.get("model") or ""),
                      str(params.get("voting") or "majority"))  # fmt: skip


@task(map_index_template="chunk {{ job.chunk }}", **LOCAL_ARGS)
def predict_chunk(job: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    from tasks.predict.batch import predict_chunk

    return predict_chunk(predict_config(), ROOT, Path(job["folder"]), int(job["chunk"]))


@task(outlets=[predictions_asset()], trigger_rule="all_done", **LOCAL_ARGS)
def collect(jobs: list[dict[str, Any]], results: Any) -> dict[str, Any]:
    """Whatever the chunks wrote, as one file and a summary; fails (after writing) when a chunk failed."""
    from pathlib import Path

    from tasks.predict.batch import collect

    predict_config()
    if not jobs:
        raise RuntimeError("plan found nothing to predict, or failed (see its log)")
    summary = collect(Path(jobs[0]["folder"]))
    if summary["missing"]:
        raise RuntimeError(f"{summary['missing']} files are missing: a predict_chunk failed (see its log); the "
                           f"others are in {summary['output']}")  # fmt: skip
    return summary


@dag(
    dag_id="predict_batch",
    schedule=None,
    start_date=START,
    catchup=False,
    params=PARAMS,
    tags=["predict", "mlflow"],
    doc_md=__doc__,
)
def predict_batch() -> None:
    jobs = plan()
    collect(jobs, predict_chunk.expand(job=jobs))


predict_batch()
