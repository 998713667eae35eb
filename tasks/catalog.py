"""One catalog of the pipeline's paths: what each stage reads and writes, and the Assets that stand for them.

Every path comes from params.yaml, validated by tasks.config, so the defaults are the stages' own. dvc.yaml
spells the same keys with DVC templating (tests/test_catalog.py holds the two in step); the DAG files and
the demo ask this module instead of writing paths. The dag-processor imports it on every parse: it needs
yaml and pydantic only, which Airflow has loaded already.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import DEFAULT_PARAMS, SECTIONS, STUDIES, ConfigError, load_params, section_config

# Each source has its stage and params section acquire_<dataset>, each feature set features_<name>.
RAW_DATASETS = tuple(s.removeprefix("acquire_") for s in SECTIONS if s.startswith("acquire_"))
FEATURE_SETS = tuple(s.removeprefix("features_") for s in SECTIONS if s.startswith("features_"))


@dataclass(frozen=True)
class AssetPath:
    """An Airflow Asset: its name, the workspace path it stands for, its group in the UI."""

    name: str
    path: str
    group: str


@dataclass(frozen=True)
class StagePaths:
    """The data one dvc.yaml stage reads and writes, relative to the workspace (its code deps follow its imports)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    metrics: str
    plots: str | None = None


@dataclass(frozen=True)
class FeatureSet:
    """A feature dataset: the stage (and DAG) that builds it and the raw clip stores it reads."""

    name: str
    stage: str
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """A study: its train stages' prefix (and DAG), train_<study>, and the feature set its models read."""

    name: str
    stage: str
    features: str


class Catalog:
    """Paths and Assets of one workspace's params; each question validates only the sections it reads."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @classmethod
    def load(cls, root: Path) -> Catalog:
        return cls(load_params(root / DEFAULT_PARAMS))

    def _section(self, name: str) -> Any:
        return section_config(self.params, name)

    def raw_asset(self, dataset: str) -> AssetPath:
        """The raw clip store acquire_<dataset> writes."""
        if dataset not in RAW_DATASETS:
            raise ConfigError(f"no stage acquires the raw dataset {dataset!r}; acquired: {', '.join(RAW_DATASETS)}")
        return AssetPath(f"raw_{dataset}", self._section(f"acquire_{dataset}").store.out_dir, "raw_clips")

    def features_asset(self, name: str) -> AssetPath:
        """The feature dataset features_<name> writes (`slices`, `vggish`)."""
        return AssetPath(f"features_{name}", self._section(f"features_{name}").store.out_dir, "features")

    def model_asset(self, model: str) -> AssetPath:
        """A trained model of the matrix, as train_<study>@<model> writes it."""
        return AssetPath(f"model_{model}", f"{self._section('train').common.models_dir}/{model}", "models")

    def predictions_asset(self) -> AssetPath:
        """The predict_batch DAG's output folder (<predict.out_dir>/<run>/predictions.parquet); not a DVC stage."""
        return AssetPath("predictions", self._section("predict").out_dir, "predictions")

    def feature_sets(self) -> list[FeatureSet]:
        return [FeatureSet(name, f"features_{name}", tuple(self._section(f"features_{name}").datasets))
                for name in FEATURE_SETS]  # fmt: skip

    def studies(self) -> list[Study]:
        return [Study(study, f"train_{study}", features) for study, (features, _) in STUDIES.items()]

    def models(self) -> dict[str, str]:
        """Model name -> study, for every entry of train.models."""
        return {name: study for study, entries in self._section("train").models.items() for name in entries}

    def stages(self) -> dict[str, StagePaths]:
        """Every dvc.yaml stage by its name there (the matrix's as train_<study>@<model>, evaluate_<study>@<model>)."""
        select = self._section("select_audioset")
        stages = {"select_audioset": StagePaths((), (select.out,), select.metrics_file)}
        for dataset in RAW_DATASETS:
            cfg = self._section(f"acquire_{dataset}")
            # AudioSet downloads the clips select_audioset chose; the other sources are one archive each.
            inputs = (cfg.selection,) if dataset == "audioset" else ()
            stages[f"acquire_{dataset}"] = StagePaths(inputs, (self.raw_asset(dataset).path,), cfg.store.metrics_file)
        feature_sets = {features.name: features for features in self.feature_sets()}
        for features in feature_sets.values():
            store = self._section(features.stage).store
            inputs = tuple(f"{store.raw_dir}/{d}" for d in features.datasets)
            stages[features.stage] = StagePaths(inputs, (self.features_asset(features.name).path,), store.metrics_file)
        common, evaluate = self._section("train").common, self._section("evaluate")
        reads = {study.name: feature_sets[study.features] for study in self.studies()}
        for model, study in self.models().items():
            features = reads[study]
            stages[f"train_{study}@{model}"] = StagePaths(
                (common.features[features.name],), (self.model_asset(model).path,),
                f"{common.metrics_dir}/train_{model}.json", f"{common.plots_dir}/train_{model}.csv")  # fmt: skip
            # Evaluation reads the raw stores of its features' datasets too: CAL500's tags, the excerpts' audio.
            stages[f"evaluate_{study}@{model}"] = StagePaths(
                (f"{evaluate.models_dir}/{model}", evaluate.features[features.name],
                 *(f"{evaluate.raw_dir}/{d}" for d in features.datasets)),
                (f"{evaluate.reports_dir}/{model}",),
                f"{evaluate.metrics_dir}/evaluate_{model}.json", f"{evaluate.plots_dir}/{model}.csv")  # fmt: skip
        stages["evaluate_summary"] = StagePaths((evaluate.reports_dir, evaluate.models_dir), (evaluate.summary_dir,),
                                                f"{evaluate.metrics_dir}/evaluate_summary.json")  # fmt: skip
        return stages
