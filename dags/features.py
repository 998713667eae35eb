"""Features: square log-mel slices (RAVDESS + CAL500) and VGGish embeddings (AudioSet), versioned.

Each DAG runs when every raw clip store it reads has been updated (the acquire DAG's Assets),
runs its stage (the same function `dvc repro` runs), records the result with `dvc commit` +
`dvc push`, and publishes its feature dataset as an Asset for the training DAGs.
"""

from __future__ import annotations

from airflow.sdk import dag
from common import START, features_asset, raw_asset, run_stage, version

# stage -> (raw stores it reads, as in its params `datasets` and its dvc.yaml deps; feature dataset)
FEATURES = {
    "features_slices": (["ravdess", "cal500"], "slices"),
    "features_vggish": (["audioset"], "vggish"),
}


def features_dag(stage: str, datasets: list[str], name: str) -> None:
    @dag(
        dag_id=stage,
        schedule=[raw_asset(d) for d in datasets],
        start_date=START,
        catchup=False,
        max_active_runs=1,
        tags=["features", name, "dvc"],
        doc_md=__doc__,
    )
    def build() -> None:
        metrics = run_stage.override(task_id=stage)(stage)
        version.override(task_id=f"version_{name}", outlets=[features_asset(name)])(stage, metrics)

    build()


for _stage, (_datasets, _name) in FEATURES.items():
    features_dag(_stage, _datasets, _name)
