"""Features: square log-mel slices (RAVDESS + CAL500) and VGGish embeddings (AudioSet), versioned.

Each DAG runs when every raw clip store it reads has been updated (the acquire DAG's Assets),
runs its stage (the same function `dvc repro` runs), records the result with `dvc commit` +
`dvc push`, and publishes its feature dataset as an Asset for the training DAGs.
"""

from __future__ import annotations

from airflow.sdk import dag
from common import CATALOG, START, features_asset, raw_asset, run_stage, version

from tasks.catalog import FeatureSet


def features_dag(features: FeatureSet) -> None:
    """One DAG per feature set, scheduled on the raw stores its params' `datasets` name."""
    stage, name = features.stage, features.name

    @dag(
        dag_id=stage,
        schedule=[raw_asset(d) for d in features.datasets],
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


for _features in CATALOG.feature_sets():
    features_dag(_features)
