"""Train the model matrix of params.yaml (train.models) when the feature datasets are updated.

One mapped task per model (architecture x data x split x seed) on the `gpu` queue and pool:
each claims a free GPU by lock file and pins it, or runs on the CPU where there is none. Each
runs the same function as `dvc repro` (train@<name>), logs to MLflow and registers the model
(`champion` moves only to a better one), then publishes the model as the Asset `model_<name>`.
`version_models` records every train@<name> stage in dvc.lock and pushes the models.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import AssetAlias, dag, task
from common import GPU_POOL, GPU_QUEUE, LOCAL_ARGS, ROOT, START, features_asset, model_asset, version

TRAINED = AssetAlias("trained_models")
# A study net runs for hours on a CPU; a killed or timed-out try resumes from its last epoch.
TRAIN_ARGS = {**LOCAL_ARGS, "retries": 2, "execution_timeout": timedelta(hours=48)}


@task(**LOCAL_ARGS)
def plan_models() -> list[str]:
    from tasks.cli import stage_config

    return list(stage_config("train", ROOT).models)


@task(queue=GPU_QUEUE, pool=GPU_POOL, outlets=[TRAINED], map_index_template="{{ name }}", **TRAIN_ARGS)
def train_model(name: str, *, outlet_events: Any = None) -> dict[str, Any]:
    from tasks.cli import configure_logging, run_stage

    configure_logging()
    result = run_stage(f"train@{name}", ROOT)[name]
    outlet_events[TRAINED].add(model_asset(name), extra={k: result[k] for k in ("registered_model", "version")})
    return result


@dag(
    dag_id="train",
    schedule=[features_asset("slices"), features_asset("vggish")],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    tags=["train", "mlflow", "gpu", "dvc"],
    doc_md=__doc__,
)
def train() -> None:
    trained = train_model.expand(name=plan_models())
    version.override(task_id="version_models")("train", trained)


train()
