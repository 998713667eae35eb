"""`make demo`: the pipeline as far as it exists, offline, on embedded defaults.

Generates a mood corpus in the official archive formats, serves it from a loopback mirror,
copies the project into a workspace whose params point at that mirror, and runs the DAGs in
a real Airflow (api-server + scheduler + dag-processor + triggerer, SQLite) next to a local MLflow
server and a local DVC remote. Everything lives under .demo/.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from devtools.mirror.cli import CAL500_ARCHIVE, RAVDESS_ZIP, CorpusSpec, build_corpus, mirror_overrides
from devtools.mirror.server import MirrorServer
from devtools.workspace import (
    PROJECT,
    AirflowServices,
    MlflowServer,
    airflow_env,
    free_port,
    make_workspace,
    prepare_airflow,
)
from tasks.catalog import RAW_DATASETS, Catalog
from tasks.cli import configure_logging
from tasks.evaluate.report import fmt
from tasks.versioning import dvc

DAGS = ["acquire"]
SOURCE_NAMES = {"ravdess": "RAVDESS", "cal500": "CAL500", "audioset": "AudioSet"}
# The demo's model matrix trains in about a minute on 2 cores: the small CNN on slices, logistic
# regression and an LSTM on (random-weight) VGGish embeddings, and the log-mel statistics baseline.
DEMO_EPOCHS = 30
DEMO_MODEL = "models:/mood-spectrogram-small-cnn@champion"


def train_overrides(mlflow_url: str, ravdess_actors: int) -> list[str]:
    """The workspace logs to the demo's MLflow server; RAVDESS models validate on one held-out actor."""
    folds = max(2, min(5, ravdess_actors))
    return [f"train.common.tracking_uri={mlflow_url}", f"evaluate.tracking_uri={mlflow_url}",
            f"predict.tracking_uri={mlflow_url}",
            *(f"train.models.spectrogram.{m}.split.k={folds}" for m in ("cnn_ravdess", "stats_ravdess")),
            f"train.architectures.small_cnn.epochs={DEMO_EPOCHS}"]  # fmt: skip


def asset_dags(catalog: Catalog) -> list[str]:
    """The DAGs scheduled on Assets: the features DAGs on the raw stores acquire updates, train on the feature
    sets (evaluate, on the models train publishes, is waited for apart: it runs once per batch of model Assets)."""
    return [*(f.stage for f in catalog.feature_sets()), *(s.stage for s in catalog.studies())]


def model_files(workspace: Path, catalog: Catalog) -> dict[str, tuple[Path, Path, Path]]:
    """model -> its card, its evaluation's metrics and its report, in the workspace."""
    stages = catalog.stages()
    files = {}
    for model, study in catalog.models().items():
        evaluation = stages[f"evaluate_{study}@{model}"]
        files[model] = (workspace / catalog.model_asset(model).path / "model.json", workspace / evaluation.metrics,
                        workspace / evaluation.outputs[0] / "report.html")  # fmt: skip
    return files


def layout(catalog: Catalog) -> str:
    """Where the outputs are in the workspace, as its params place them."""
    stages = catalog.stages()
    raw = ", ".join(catalog.raw_asset(d).path for d in RAW_DATASETS)
    features = ", ".join(catalog.features_asset(f.name).path for f in catalog.feature_sets())
    lines = [
        "Outputs      (in the workspace, where its params.yaml puts them)",
        f"  raw clips  {raw}: {{manifest,failures}}.parquet and shards/",
        f"  features   {features}: dataset=*/split=*/*.parquet, _dataset.json, _failures.parquet",
        "  per model  weights + model.json, learning curves (dvc plots show), report.html (self-contained;",
        "             also in its MLflow evaluation run, linked from the version's tag evaluation_report):",
    ]
    for model, study in catalog.models().items():
        train, evaluation = stages[f"train_{study}@{model}"], stages[f"evaluate_{study}@{model}"]
        lines.append(f"    {model:<18} {catalog.model_asset(model).path}/  {train.plots}  "
                     f"{evaluation.outputs[0]}/report.html")  # fmt: skip
    lines.append(f"  summary    {stages['evaluate_summary'].outputs[0]}/index.html")
    return "\n".join(lines)


def report(workspace: Path, catalog: Catalog, states: dict[str, dict[str, str]], mlflow_url: str) -> None:
    print("\n=== results ===")
    for dag_id, tasks in states.items():
        print(f"DAG {dag_id}: " + ", ".join(f"{t}={s}" for t, s in sorted(tasks.items())))
    stages = catalog.stages()
    for dataset in RAW_DATASETS:
        name, path = SOURCE_NAMES.get(dataset, dataset), workspace / stages[f"acquire_{dataset}"].metrics
        if not path.exists():
            print(f"{name}: no metrics (stage did not finish)")
            continue
        m = json.loads(path.read_text())
        labels = ", ".join(f"{k} {v}" for k, v in m["per_label"].items())
        failed = ", ".join(f"{k} {v}" for k, v in m["failed_by_reason"].items()) or "none"
        print(f"{name}: {m['clips']} clips ({m['hours']:.2f} h): {labels}; filtered {m['filtered']}; "
              f"failures {m['failed']} ({failed})")  # fmt: skip
        for label, c in m.get("per_class", {}).items():  # AudioSet: availability per class
            why = ", ".join(f"{k} {v}" for k, v in c["failed"].items()) or "none"
            print(f"  {label:<8} selected {c['selected']}, downloaded {c['downloaded']} "
                  f"({c['availability']:.0%}), failed: {why}")  # fmt: skip
    for features in catalog.feature_sets():
        path = workspace / stages[features.stage].metrics
        if path.exists():
            print(feature_line(features.stage, json.loads(path.read_text())))
    files = model_files(workspace, catalog)
    for card, _, _ in files.values():
        if card.exists():
            print(model_line(json.loads(card.read_text()), mlflow_url))
    for _, metrics, report_html in files.values():
        if metrics.exists():
            print(evaluation_line(report_html, json.loads(metrics.read_text())))
    summary = workspace / stages["evaluate_summary"].outputs[0] / "index.html"
    print(f"summary: {summary}" if summary.exists() else "summary: none (the evaluate DAG did not finish)")
    print("dvc status:", dvc(workspace, "status").strip())


def feature_line(dag_id: str, m: dict) -> str:
    shape = "x".join(map(str, m["shape"]))
    what = f"slices {shape}" if dag_id == "features_slices" else f"{shape}-d embeddings"
    parts = ", ".join(f"{d}/{s} {e['clips']} clips -> {e['rows']}" for d, splits in m["per_dataset"].items()
                      for s, e in splits.items())  # fmt: skip
    failed = ", ".join(f"{k} {v}" for k, v in m["failed_by_reason"].items()) or "none"
    random = "; SEEDED RANDOM WEIGHTS (offline run)" if m.get("random_weights") else ""
    return (f"{dag_id}: {m['clips']} clips -> {m['rows']} {what} ({parts}); failures {m['failed']} ({failed}); "
            f"{m['mb']:.1f} MB{random}")  # fmt: skip


def model_line(card: dict, mlflow_url: str) -> str:
    m = card["metrics"]
    random = " [RANDOM VGGish weights]" if m["random_vggish_weights"] else ""
    where = (f"{card['registered_model']} v{card['version']} (champion: v{card['champion_version']}) "
             f"{mlflow_url}/#/models/{card['registered_model']}/versions/{card['version']}"
             if card["registered_model"] else "not registered")  # fmt: skip
    return (
        f"model {card['name']} ({card['arch']} on {card['dataset']}): validation clip accuracy "
        f"{m['val_clip_accuracy']:.3f} (95% CI {m['val_clip_accuracy_ci95_low']:.3f}-"
        f"{m['val_clip_accuracy_ci95_high']:.3f}; majority baseline {m['majority_baseline']:.3f}, chance "
        f"{m['chance']:.3f}; {m['val_clips']} clips){random}; MLflow run {card['mlflow_run_id']}; {where}"
    )


def evaluation_line(report_html: Path, m: dict) -> str:
    name, primary = m["model"], m["primary"]
    s = m["test_sets"][primary]
    random = " [RANDOM VGGish weights]" if m["random_vggish_weights"] else ""
    others = "; ".join(f"{k} {v['majority']['accuracy']:.3f}" for k, v in m["test_sets"].items() if k != primary)
    return (
        f"evaluation {name} on {primary}: majority vote {fmt(s['majority']['accuracy'])} (95% CI "
        f"{fmt(s['majority']['ci95_low'])}-{fmt(s['majority']['ci95_high'])}; {s['songs']} songs), soft "
        f"{fmt(s['soft']['accuracy'])}, threshold {fmt(s['threshold']['accuracy'])} at coverage "
        f"{fmt(s['threshold']['coverage'])}, baseline {fmt(s['baseline_accuracy'])}{random}"
        f"{'; also ' + others if others else ''}\nreport: {report_html}"
    )


def corpus_songs(mirror: Path, out: Path) -> list[Path]:
    """One sung clip of the generated RAVDESS zip and one song of the generated CAL500 archive, as files."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mirror / RAVDESS_ZIP) as archive:
        member = next(m for m in sorted(archive.namelist()) if m.endswith(".wav"))
        clip = out / Path(member).name
        clip.write_bytes(archive.read(member))
    with tarfile.open(mirror / CAL500_ARCHIVE) as archive:
        member = next(m for m in sorted(archive.getnames()) if m.endswith(".mp3"))
        song = out / Path(member).name
        song.write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
    return [clip, song]


def predict_songs(workspace: Path, songs: list[Path], mlflow_url: str) -> bool:
    """`python -m tasks predict` on the songs with the registry's champion CNN, its table shown as it prints."""
    command = [sys.executable, "-m", "tasks", "predict", *map(str, songs), "--model", DEMO_MODEL]
    print(f"\n=== predict ===\ncd {workspace} && {' '.join(command[:4])} {' '.join(command[4:])}", flush=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(command, cwd=workspace, env=env, check=False).returncode == 0


def wait_for_evaluations(services: AirflowServices, workspace: Path, catalog: Catalog,
                         states: dict[str, dict[str, str]], timeout: float = 600) -> None:  # fmt: skip
    """The evaluate DAG runs once per batch of model Assets: wait until no run is pending and every model
    the train DAGs wrote has its evaluation, then record the worst state of each task over the runs."""
    started = time.monotonic()
    trained = [(card, metrics) for card, metrics, _ in model_files(workspace, catalog).values() if card.exists()]

    def evaluated(card: Path, metrics: Path) -> bool:
        return metrics.exists() and metrics.stat().st_mtime >= card.stat().st_mtime

    while time.monotonic() - started < timeout:
        runs = services.api("GET", "/api/v2/dags/evaluate/dagRuns", params={"order_by": "id"}).json()["dag_runs"]
        pending = [r for r in runs if r["state"] not in ("success", "failed")]
        if runs and not pending and all(evaluated(*t) for t in trained):
            break
        time.sleep(3)
    else:
        print(f"evaluate: still running or incomplete after {timeout:.0f} s", flush=True)
    merged: dict[str, str] = {}
    for run in runs:
        for task, state in services.task_states("evaluate", run["dag_run_id"]).items():
            merged[task] = state if merged.get(task, "success") == "success" else merged[task]
    states["evaluate"] = merged
    print(
        f"evaluate: {len(runs)} run(s), {', '.join(r['state'] for r in runs)}, in "
        f"{time.monotonic() - started:.0f} s; watch it at {services.url}/dags/evaluate",
        flush=True,
    )


def wait_for_triggered(services: AirflowServices, dag_ids: list[str], produced: set[str],
                       states: dict[str, dict[str, str]]) -> None:  # fmt: skip
    """Wait for each Asset-scheduled DAG the runs so far triggered; skip, saying so, those they did not."""
    for dag_id in dag_ids:
        services.wait_for_dag(dag_id)
        missing = services.trigger_assets(dag_id) - produced
        if missing:
            print(f"{dag_id}: not waiting: this run produced no {', '.join(sorted(missing))} Asset to trigger it",
                  flush=True)  # fmt: skip
            continue
        started = time.monotonic()
        run_id = services.wait_for_triggered_run(dag_id)
        print(f"{dag_id} triggered by Assets ({run_id}); watch it at {services.url}/dags/{dag_id}", flush=True)
        state = services.wait_for_run(dag_id, run_id)
        print(f"{dag_id}: {state} in {time.monotonic() - started:.0f} s", flush=True)
        states[dag_id] = services.task_states(dag_id, run_id)
        produced |= services.assets_produced(dag_id, run_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-wait", action="store_true", help="stop the services when the run ends")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ravdess-actors", type=int, default=3, help="at least 2: models validate on held-out actors")
    parser.add_argument("--cal500-songs", type=int, default=12)
    parser.add_argument("--dir", type=Path, default=PROJECT / ".demo", help="where the demo keeps its state")
    args = parser.parse_args()
    configure_logging()
    demo = args.dir.resolve()
    demo.mkdir(parents=True, exist_ok=True)
    spec = CorpusSpec(seed=args.seed, ravdess_actors=tuple(range(1, args.ravdess_actors + 1)),
                      cal500_songs=args.cal500_songs)  # fmt: skip
    print(f"building the generated corpus in {demo / 'mirror'} ...", flush=True)
    files = build_corpus(demo / "mirror", spec)
    mirror = MirrorServer(demo / "mirror", port=free_port(8765)).start()
    mlflow = MlflowServer(demo / "mlflow")
    mlflow_url = mlflow.url
    workspace = make_workspace(
        demo / "workspace", [*mirror_overrides(mirror.url, files), *train_overrides(mlflow_url, args.ravdess_actors)]
    )
    catalog = Catalog.load(workspace)
    password = secrets.token_urlsafe(9)
    shutil.rmtree(demo / "airflow", ignore_errors=True)
    env = airflow_env(demo / "airflow", workspace, admin_password=password)
    print("migrating the Airflow metadata DB ...", flush=True)
    prepare_airflow(env)
    mlflow.start()
    services = AirflowServices(env, free_port(8080), password).start()
    code = 1
    try:
        mlflow.wait_ready()
        states = {}
        for dag_id in DAGS:
            services.wait_for_dag(dag_id)
            run_id = services.trigger(dag_id)
            print(f"triggered {dag_id} ({run_id}); watch it at {services.url}/dags/{dag_id}", flush=True)
            started = time.monotonic()
            state = services.wait_for_run(dag_id, run_id)
            print(f"{dag_id}: {state} in {time.monotonic() - started:.0f} s", flush=True)
            states[dag_id] = services.task_states(dag_id, run_id)
            if dag_id == "acquire":
                wait_for_triggered(services, asset_dags(catalog), services.assets_produced(dag_id, run_id), states)
                wait_for_evaluations(services, workspace, catalog, states)
        report(workspace, catalog, states, mlflow_url)
        songs = corpus_songs(demo / "mirror", demo / "songs")
        predicted = predict_songs(workspace, songs, mlflow_url)
        code = 0 if predicted and all(s == "success" for t in states.values() for s in t.values()) else 1
        print(f"""
=== where to look ===
Airflow UI   {services.url}   user: admin   password: {password}
MLflow UI    {mlflow_url}   (experiments mood-spectrogram, mood-audioset, mood-evaluation; Models: mood-*,
             alias champion)
Workspace    {workspace}   (a git + DVC repo; its params.yaml points at the mirror)
  cd {workspace} && {Path(sys.executable).parent}/dvc status     # clean: dvc.lock matches the run
  {Path(sys.executable).parent}/dvc metrics show                  # the counts and validation scores above
  {Path(sys.executable).parent}/dvc exp run -S train.models.spectrogram.cnn_ravdess.seed=1   # retrain one model
  {Path(sys.executable).parent}/dvc repro                         # nothing to do: already reproduced
{layout(catalog)}
  {Path(sys.executable).parent}/dvc plots show --html-template {PROJECT}/.cache/dvc/plots-offline.html
                    # offline: after make plots-template; dvc plots diff takes it too
Predict      cd {workspace} && {sys.executable} -m tasks predict {demo / "songs"} --model {DEMO_MODEL}
             (any files, folders or URLs; --out x.json or x.csv; --voting soft|threshold)
Serve        MLFLOW_TRACKING_URI={mlflow_url} PATH={Path(sys.executable).parent}:$PATH \\
               mlflow models serve -m {DEMO_MODEL.replace("@", "-audio@")} --env-manager local -p 5001
             curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
               -d '{{"dataframe_records": [{{"path": "{songs[0]}"}}]}}'
Batch        Airflow UI -> predict_batch -> Trigger (input: {demo / "songs"}, or a raw dataset: cal500)
Mirror       {mirror.url} serving {demo / "mirror"}
Logs         {demo / "airflow"}/*.log, {demo / "mlflow" / "server.log"}""")
        if not args.no_wait and sys.stdin.isatty():
            print("\nservices are up; press Ctrl-C to stop them.")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
        mlflow.stop()
        mirror.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
