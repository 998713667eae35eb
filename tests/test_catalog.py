"""The catalog and dvc.yaml say the same thing, and dvc.yaml's code deps are what each stage imports.

DVC's own parser renders dvc.yaml (templating and foreach resolved), so the stages compared are the ones
`dvc repro` runs. A stage's code is derived, never listed here: the `tasks/` modules its entry module
imports, at any depth, function bodies included.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from devtools.workspace import airflow_env
from tasks.catalog import Catalog
from tasks.cli import STAGES
from tasks.config import apply_overrides

from .conftest import PROJECT

TASKS = PurePosixPath("tasks")


@pytest.fixture(scope="module")
def dvc_stages() -> dict[str, dict[str, list[str]]]:
    """dvc.yaml as DVC renders it: stage name -> its deps, outs, metrics and plots."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(PROJECT)) as repo:
        return {stage.name: {
            "deps": [str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)],
            "outs": [str(o.def_path) for o in stage.outs if not o.metric and not o.plot],
            "metrics": [str(o.def_path) for o in stage.outs if o.metric],
            "plots": [str(o.def_path) for o in stage.outs if o.plot],
        } for stage in repo.index.stages}  # fmt: skip


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(PROJECT)


def is_code(dep: str) -> bool:
    return PurePosixPath(dep).parts[:1] == TASKS.parts


# ---- the catalog and dvc.yaml ----


def test_dvc_yaml_has_every_stage_of_the_catalog(catalog: Catalog, dvc_stages: dict) -> None:
    assert sorted(dvc_stages) == sorted(catalog.stages())


def test_dvc_yaml_reads_and_writes_what_the_catalog_names(catalog: Catalog, dvc_stages: dict) -> None:
    wrong = []
    for name, paths in catalog.stages().items():
        expected = {"deps": sorted(paths.inputs), "outs": sorted(paths.outputs), "metrics": [paths.metrics],
                    "plots": [paths.plots] if paths.plots else []}  # fmt: skip
        dvc = dvc_stages.get(name, {})
        found = {key: sorted(d for d in dvc.get(key, []) if not is_code(d)) for key in expected}
        wrong += [f"{name}.{key}: dvc.yaml {found[key]}, the catalog {expected[key]}"
                  for key in expected if found[key] != expected[key]]  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_features_stages_read_the_raw_store_of_each_dataset_in_their_params(dvc_stages: dict, params: dict) -> None:
    """DVC templating cannot map a list, so these deps are written per dataset: they must follow the params."""
    for stage in ("features_slices", "features_vggish"):
        raw_dir, datasets = params[stage]["store"]["raw_dir"], params[stage]["datasets"]
        deps = [d for d in dvc_stages[stage]["deps"] if not is_code(d)]
        assert sorted(deps) == sorted(f"{raw_dir}/{d}" for d in datasets), stage


def test_every_input_is_an_output_of_another_stage(catalog: Catalog) -> None:
    """The copies of a path in params.yaml (a raw_dir beside each store's out_dir) agree: the pipeline is closed."""
    stages = catalog.stages()
    written = [(PurePosixPath(out), name) for name, stage in stages.items() for out in stage.outputs]
    dangling = []
    for name, stage in stages.items():
        for path in map(PurePosixPath, stage.inputs):
            # a directory of outputs (reports/models) counts, as does a path inside one
            if not any(writer != name and (path.is_relative_to(out) or out.is_relative_to(path))
                       for out, writer in written):  # fmt: skip
                dangling.append(f"{name} reads {path}, which no other stage writes")
    assert not dangling, "\n".join(dangling)


def test_paths_and_assets_follow_the_params(params: dict) -> None:
    moved = Catalog(apply_overrides(params, [
        "acquire_audioset.store.out_dir=elsewhere/audioset", "features_slices.datasets=[ravdess]",
        "features_slices.store.raw_dir=elsewhere", "train.common.models_dir=trained",
    ]))  # fmt: skip
    assert moved.raw_asset("audioset").path == "elsewhere/audioset"
    slices = next(f for f in moved.feature_sets() if f.name == "slices")
    assert slices.datasets == ("ravdess",)
    assert moved.stages()["features_slices"].inputs == ("elsewhere/ravdess",)
    assert moved.model_asset("cnn_ravdess").path == "trained/cnn_ravdess"
    assert moved.stages()["train_spectrogram@cnn_ravdess"].outputs == ("trained/cnn_ravdess",)


# ---- code deps: each stage's import closure inside tasks/ ----


def module_file(module: str, root: Path = PROJECT) -> PurePosixPath | None:
    """The file of a `tasks` module (tasks/a/b.py or tasks/a/b/__init__.py); None for anything else."""
    parts = module.split(".")
    if parts[0] != TASKS.name:
        return None
    base = PurePosixPath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: PurePosixPath, root: Path = PROJECT, *, nested: bool = True) -> set[str]:
    """Modules a file imports, with their parent packages; in function bodies too unless not `nested`.

    Imports under `if TYPE_CHECKING:` never run, so they are no dependency."""
    package = ".".join(path.with_suffix("").parts[:-1])
    names: set[str] = set()
    todo: list[ast.AST] = list(ast.parse((root / path).read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = package.split(".")[: package.count(".") + 2 - node.level] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from package import module`
        if nested:
            todo.extend(ast.iter_child_nodes(node))
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def runs_code(path: PurePosixPath, root: Path = PROJECT) -> bool:
    """False for a package __init__ that holds only its docstring: importing it computes nothing."""
    body = ast.parse((root / path).read_text()).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
               and not (isinstance(s, ast.ImportFrom) and s.module == "__future__") for s in body)  # fmt: skip


def import_closure(modules: set[str], root: Path = PROJECT) -> set[PurePosixPath]:
    """The tasks/ files that importing `modules` runs (docstring-only packages left out)."""
    seen: set[PurePosixPath] = set()
    todo = list(modules)
    while todo:
        path = module_file(todo.pop(), root)
        if path is not None and path not in seen:
            seen.add(path)
            todo.extend(imported_modules(path, root))
    return {path for path in seen if runs_code(path, root)}


def stage_code(stage: str) -> set[PurePosixPath]:
    """The tasks/ files `python -m tasks <stage>` runs: its function's module and what the dispatcher imports for
    every stage (tasks/config.py validates the params section and fills its defaults). The dispatcher itself
    (tasks/__main__.py, tasks/cli.py) only picks the function; its function-level imports serve other commands."""
    module = STAGES[stage.partition("@")[0]].target.partition(":")[0]
    return import_closure({module, *imported_modules(TASKS / "cli.py", nested=False)})


def python_files(directory: PurePosixPath) -> list[PurePosixPath]:
    files = (PurePosixPath(p.relative_to(PROJECT).as_posix()) for p in sorted((PROJECT / directory).rglob("*.py")))
    return [p for p in files if "__pycache__" not in p.parts and runs_code(p)]


def code_dep_problems(stage: str, deps: list[str]) -> list[str]:
    code = stage_code(stage)
    listed = [PurePosixPath(d) for d in deps if is_code(d)]
    problems = []
    for dep in listed:
        if not (PROJECT / dep).exists():
            problems.append(f"{stage}: {dep} does not exist")
        elif (PROJECT / dep).is_dir():
            unused = [str(p) for p in python_files(dep) if p not in code]
            if unused:
                problems.append(f"{stage}: {dep}/ covers {unused}, which the stage never imports: list its files")
        elif dep.suffix == ".py" and dep not in code:
            problems.append(f"{stage}: {dep} is listed but never imported")
    # A non-Python file under tasks/ (a template, a table) is data the code reads: listed by hand, never flagged.
    missing = sorted(str(p) for p in code if not any(p == d or p.is_relative_to(d) for d in listed))
    if missing:
        problems.append(f"{stage}: imports {missing}, which dvc.yaml does not list")
    return problems


def test_every_dvc_stage_runs_a_cli_stage(dvc_stages: dict) -> None:
    assert {name.partition("@")[0] for name in dvc_stages} <= set(STAGES)


def test_dvc_yaml_lists_exactly_the_code_each_stage_imports(dvc_stages: dict) -> None:
    problems = [p for name, stage in dvc_stages.items() for p in code_dep_problems(name, stage["deps"])]
    assert not problems, "\n".join(problems)


def test_closure_follows_function_level_and_relative_imports_but_not_type_checking(tmp_path: Path) -> None:
    probe = tmp_path / "tasks" / "probe"
    probe.mkdir(parents=True)
    for name, text in {
        "__init__.py": '"""A docstring only: nothing runs."""\n',
        "entry.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tasks import unused\n"
                    "def run():\n    from . import inner\n    from ..shared import helper\n",
        "inner.py": "import tasks.errors\n",
    }.items():  # fmt: skip
        (probe / name).write_text(text)
    for name in ("unused.py", "errors.py", "shared.py"):
        (tmp_path / "tasks" / name).write_text("X = 1\n")
    found = {str(p) for p in import_closure({"tasks.probe.entry"}, tmp_path)}
    assert found == {"tasks/probe/entry.py", "tasks/probe/inner.py", "tasks/errors.py", "tasks/shared.py"}


# ---- the DAGs read the catalog ----

DAG_ASSETS = """
import json, sys
from airflow import settings
sys.path.append(settings.DAGS_FOLDER)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag()
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "schedules": {d.dag_id: sorted(a.uri for a in d.timetable.asset_condition.objects) for d in bag.dags.values()
                  if getattr(d.timetable, "asset_condition", None) is not None},
    "outlets": {t.task_id: sorted(getattr(o, "uri", o.name) for o in t.outlets) for d in bag.dags.values()
                for t in d.tasks if t.outlets},
}))
"""


def test_dag_assets_and_schedules_follow_the_params(tmp_path: Path, params: dict) -> None:
    workspace = tmp_path / "workspace"
    shutil.copytree(PROJECT / "dags", workspace / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    moved = apply_overrides(params, ["acquire_audioset.store.out_dir=elsewhere/audioset",
                                     "features_vggish.store.raw_dir=elsewhere",
                                     "features_slices.datasets=[cal500]"])  # fmt: skip
    (workspace / "params.yaml").write_text(yaml.safe_dump(moved, sort_keys=False))
    env = {**airflow_env(tmp_path / "airflow", workspace), "PYTHONPATH": str(PROJECT),
           "MOOD_PIPELINE_ROOT": str(workspace)}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", DAG_ASSETS], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    bag = json.loads(out.stdout.strip().splitlines()[-1])
    assert bag["errors"] == {}
    uri = f"file://{workspace}"
    assert bag["outlets"]["version_audioset"] == [f"{uri}/elsewhere/audioset"]
    assert bag["schedules"]["features_vggish"] == [f"{uri}/elsewhere/audioset"]
    assert bag["schedules"]["features_slices"] == [f"{uri}/data/raw/cal500"]
    assert bag["outlets"]["version_slices"] == [f"{uri}/data/features/slices"]


def test_the_product_never_imports_the_demo_and_test_tooling() -> None:
    """devtools/ (the mirror, throwaway workspaces) serves the demo and the tests; no module of tasks/
    or dags/ imports it, even inside a function."""
    product = [PurePosixPath(p.relative_to(PROJECT)) for d in ("tasks", "dags") for p in (PROJECT / d).rglob("*.py")]
    reaching = {str(p): sorted(m for m in imported_modules(p) if m.split(".")[0] == "devtools") for p in product}
    assert product and not {p: m for p, m in reaching.items() if m}
