"""Evaluate trained models: song-level voting, confusion matrices, the studies' tables and an HTML report.

Scheduled on the model Assets the train DAGs publish (`model_<name>`, one per entry of
train.models in params.yaml): a run evaluates the models whose Assets triggered it, with the
function `dvc repro evaluate_<study>@<name>` runs, then rebuilds the studies' summary and records
both in dvc.lock. From the UI, "Trigger DAG" takes a form: a registry version (models:/NAME@ALIAS
or models:/NAME/VERSION) evaluates that version ad hoc (reports/adhoc/, and MLflow, not DVC), and a
list of model names evaluates those. Each report is linked from its model version in MLflow.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import AssetAny, Param, dag, task
from common import DVC_POOL, LOCAL_ARGS, ROOT, START, matrix_models, model_asset

MODELS = matrix_models()  # name -> study, from params.yaml's train.models
PARAMS = {
    "model_uri": Param("", type="string", title="Registry version (optional)",
                       description="models:/NAME@ALIAS or models:/NAME/VERSION, e.g. "
                                   "models:/mood-spectrogram-small-cnn@champion; empty: the DVC models"),
    "models": Param(sorted(MODELS), type="array", title="Models of the matrix",
                    description="names under train.models (models/<name>/) to evaluate when no URI is given; "
                                "an Asset-triggered run takes the models that triggered it"),
}  # fmt: skip


@task(**LOCAL_ARGS)
def plan_evaluations(params: dict[str, Any] | None = None, triggering_asset_events: Any = None) -> list[str]:
    """The evaluate stages to run: a registry URI, the models whose Assets triggered the run, or the chosen ones."""
    params = params or {}
    if params.get("model_uri"):
        return [f"evaluate_registry@{params['model_uri'].strip()}"]
    triggered = {event.asset.name.removeprefix("model_") for events in (triggering_asset_events or {}).values()
                 for event in events}  # fmt: skip
    names = sorted(triggered) or list(params.get("models") or MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"models {unknown} are not in train.models of params.yaml ({sorted(MODELS)})")
    return [f"evaluate_{MODELS[n]}@{n}" for n in names]


@task(map_index_template="{{ stage }}", **LOCAL_ARGS)
def evaluate_model(stage: str) -> dict[str, Any]:
    from tasks.cli import configure_logging, run_stage

    configure_logging()
    (result,) = run_stage(stage, ROOT).values()
    return {"stage": stage, "report": result["report"], "accuracy": round(result["accuracy"], 4),
            "on": result["primary"]}  # fmt: skip


@task(pool=DVC_POOL, trigger_rule="all_done", **LOCAL_ARGS)
def summarize(results: Any) -> str:
    """Rebuild the studies' tables from every evaluation, then dvc commit + push the evaluations that ran."""
    from tasks.cli import configure_logging, run_stage
    from tasks.versioning import commit_and_push, outcome

    configure_logging()
    evaluated = [r["stage"] for r in results if r]
    if not evaluated:
        raise RuntimeError("no evaluation succeeded; nothing to summarise")
    stages = [s for s in evaluated if not s.startswith("evaluate_registry@")]
    if not stages:
        return "ad hoc evaluation: reports/adhoc/ and MLflow only, nothing for DVC"
    summary = run_stage("evaluate_summary", ROOT)["summary"]
    return f"summary {summary}; " + outcome(commit_and_push(ROOT, [*stages, "evaluate_summary"]))


@task(trigger_rule="all_done", **LOCAL_ARGS)
def check_evaluations(planned: list[str], results: Any) -> str:
    """The run's leaf: it fails when a planned evaluation did not run, so the run does not look green."""
    evaluated = {r["stage"] for r in results if r}
    missing = [stage for stage in planned if stage not in evaluated]
    if missing:
        raise RuntimeError(f"evaluations {missing} failed (see evaluate_model); the others are summarised")
    return f"all {len(planned)} evaluations done"


@dag(
    dag_id="evaluate",
    schedule=AssetAny(*[model_asset(n) for n in MODELS]) if MODELS else None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["evaluate", "mlflow", "dvc", "reports"],
    doc_md=__doc__,
)
def evaluate() -> None:
    planned = plan_evaluations()
    results = evaluate_model.expand(stage=planned)
    summarize(results) >> check_evaluations(planned, results)


evaluate()
