"""Train a study's model matrix (train.models.<study> in params.yaml) when its feature dataset is updated.

train_spectrogram runs on the slices Asset, train_audioset on the VGGish one. Each maps one task
per model (architecture x data x split x seed) on the `gpu` queue and pool: a task claims a free
GPU by lock file and pins it, or runs on the CPU where there is none. It runs the same function as
`dvc repro` (train_<study>@<name>), logs to MLflow, registers the model (`champion` moves only to
a better one). `version_models` then records the models that trained in dvc.lock and pushes them,
even when another model of the run failed, and publishes each as the Asset `model_<name>`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import AssetAlias, dag, task
from common import CATALOG, DVC_POOL, GPU_POOL, GPU_QUEUE, LOCAL_ARGS, ROOT, START, features_asset, model_asset

TRAINED = AssetAlias("trained_models")
# A study net runs for hours on a CPU; a killed or timed-out try resumes from its last epoch.
TRAIN_ARGS = {**LOCAL_ARGS, "execution_timeout": timedelta(hours=48)}


@task(**LOCAL_ARGS)
def plan_models(stage: str) -> list[str]:
    from tasks.cli import stage_config

    return list(stage_config(stage, ROOT).models.get(stage.removeprefix("train_"), {}))


@task(queue=GPU_QUEUE, pool=GPU_POOL, map_index_template="{{ name }}", **TRAIN_ARGS)
def train_model(stage: str, name: str) -> dict[str, Any]:
    from tasks.cli import configure_logging, run_stage

    configure_logging()
    result = run_stage(f"{stage}@{name}", ROOT)[name]
    return {k: result[k] for k in ("model", "registered_model", "version", "champion_version", "val_clip_accuracy")}


@task(pool=DVC_POOL, trigger_rule="all_done", outlets=[TRAINED], **LOCAL_ARGS)
def version_models(stage: str, results: Any, *, outlet_events: Any = None) -> str:
    """dvc commit + push the train stages whose task succeeded (a failed one has no result), then publish
    each as its model Asset: the evaluation it triggers finds the model versioned."""
    from tasks.versioning import commit_and_push, outcome

    trained = [r for r in results if r]
    if not trained:
        raise RuntimeError(f"{stage}: no model trained; nothing to version")
    done = outcome(commit_and_push(ROOT, [f"{stage}@{r['model']}" for r in trained]))
    for r in trained:
        outlet_events[TRAINED].add(model_asset(r["model"]), extra={k: r[k] for k in ("registered_model", "version")})
    return done


@task(trigger_rule="all_done", **LOCAL_ARGS)
def check_models(stage: str, planned: list[str], results: Any) -> str:
    """The run's leaf: it fails when a planned model did not train, so the run does not look green."""
    trained = {r["model"] for r in results if r}
    missing = [name for name in planned if name not in trained]
    if missing:
        raise RuntimeError(f"{stage}: models {missing} failed (see train_model); the others are versioned")
    return f"{stage}: all {len(planned)} models trained"


def train_dag(stage: str, features: str) -> None:
    @dag(
        dag_id=stage,
        schedule=[features_asset(features)],
        start_date=START,
        catchup=False,
        max_active_runs=1,
        tags=["train", features, "mlflow", "gpu", "dvc"],
        doc_md=__doc__,
    )
    def build() -> None:
        planned = plan_models(stage)
        trained = train_model.partial(stage=stage).expand(name=planned)
        version_models(stage, trained) >> check_models(stage, planned, trained)

    build()


for _study in CATALOG.studies():
    train_dag(_study.stage, _study.features)
