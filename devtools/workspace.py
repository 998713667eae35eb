"""Throwaway workspaces and Airflow homes, for the offline demo and the tests.

A workspace is a copy of the project (its git-tracked files) in its own git repo, with
params.yaml rewritten by `-S`-style overrides (say, source URLs pointing at a mirror), so an
Airflow run, `dvc repro` and `dvc status` there never touch the user's own checkout.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import yaml

from tasks.config import apply_overrides, load_params
from tasks.train.gpu import visible_gpus

PROJECT = Path(__file__).resolve().parents[1]
GIT_ID = ["-c", "user.email=pipeline@localhost", "-c", "user.name=mood-pipeline"]


def project_files(src: Path) -> list[str]:
    """Files git would carry: tracked plus untracked-but-not-ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src,
                         capture_output=True, check=True).stdout  # fmt: skip
    return sorted({f for f in out.decode().split("\0") if f and (src / f).is_file()})


def make_workspace(dest: Path, overrides: list[str] | None = None, src: Path = PROJECT) -> Path:
    """Copy the project into `dest`, apply overrides to its params.yaml, and commit it."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel in project_files(src):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    if overrides:
        params = apply_overrides(load_params(dest / "params.yaml"), overrides)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "workspace")
    return dest


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], cwd=root, capture_output=True, text=True, check=True).stdout


def airflow_env(home: Path, workspace: Path, admin_password: str = "admin") -> dict[str, str]:
    """Environment for a self-contained Airflow: SQLite DB, LocalExecutor, loopback only."""
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json"
    passwords.touch(mode=0o600)
    passwords.chmod(0o600)  # the admin password: readable by its owner only, even where the file was there before
    passwords.write_text(f'{{"admin": "{admin_password}"}}\n')
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(workspace / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "MOOD_PIPELINE_ROOT": str(workspace),
        "PYTHONPATH": str(workspace),
        "NO_PROXY": "127.0.0.1,localhost",
    }


def airflow(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def prepare_airflow(env: dict[str, str], audioset_slots: int | None = None, gpu_slots: int | None = None) -> None:
    """Migrate the metadata DB and create the pools the DAGs use.

    audioset_slots: AudioSet shard tasks at once across all workers (default: $AUDIOSET_DOWNLOAD_SLOTS or 4);
    each keeps acquire_audioset.concurrency downloads in flight.
    gpu_slots: training tasks at once, one per GPU (default: the GPUs nvidia-smi lists, at least 1 so
    that a machine without one trains on its CPU, one model at a time).
    """
    slots = audioset_slots or int(env.get("AUDIOSET_DOWNLOAD_SLOTS", "4"))
    gpus = gpu_slots or max(1, len(visible_gpus()))
    for args in (("db", "migrate"), ("pools", "set", "dvc", "1", "DVC holds a repo-wide lock"),
                 ("pools", "set", "audioset_downloads", str(slots), "AudioSet shard tasks downloading at once"),
                 ("pools", "set", "gpu", str(gpus), "training tasks, one per GPU")):
        proc = airflow(env, *args)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on loopback, else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM each process group, then SIGKILL what has not exited within `timeout`; empties `procs`."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    procs.clear()


class AirflowServices:
    """The real Airflow: api-server, scheduler, dag-processor and triggerer on loopback, logs in AIRFLOW_HOME.

    No DAG defers a task today; the triggerer runs so that the UI's health badge is green.
    `components` starts a subset, such as the api-server alone to browse a finished run.
    """

    COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

    def __init__(self, env: dict[str, str], port: int, password: str = "admin",
                 components: tuple[str, ...] = COMPONENTS) -> None:  # fmt: skip
        unknown = set(components) - set(self.COMPONENTS)
        if unknown:
            raise ValueError(f"AirflowServices: unknown components {sorted(unknown)}; known: {self.COMPONENTS}")
        # Task runners reach the API server at this URL; its default, localhost:8080, may be another Airflow.
        self.env = {**env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
        # The triggerer serves its logs on 8794 by default, which another Airflow on this host may hold.
        self.env.setdefault("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(free_port(8794)))
        self.port, self.password, self.components = port, password, components
        self.home = Path(env["AIRFLOW_HOME"])
        self.procs: list[subprocess.Popen[bytes]] = []
        self._token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AirflowServices:
        airflow_bin = str(Path(sys.executable).parent / "airflow")
        for name in self.components:
            args = [airflow_bin, name] + (["-H", "127.0.0.1", "-p", str(self.port), "-w", "1"]
                                          if name == "api-server" else [])  # fmt: skip
            log = (self.home / f"{name}.log").open("ab")
            self.procs.append(subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))  # fmt: skip
        return self

    def stop(self) -> None:
        stop_processes(self.procs)

    def __enter__(self) -> AirflowServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_alive(self) -> None:
        for name, proc in zip(self.components, self.procs, strict=True):
            if proc.poll() is not None:
                tail = (self.home / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{tail}")

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def token(self) -> str:
        if self._token is None:
            resp = requests.post(f"{self.url}/auth/token", json={"username": "admin", "password": self.password},
                                 timeout=30)  # fmt: skip
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return self._token

    def health(self) -> dict[str, dict[str, str | None]]:
        """/api/v2/monitor/health: per component (metadatabase, scheduler, triggerer, ...) its status and heartbeat."""
        resp = requests.get(f"{self.url}/api/v2/monitor/health", timeout=30)
        resp.raise_for_status()
        return resp.json()

    def wait_healthy(self, components: tuple[str, ...], since: datetime | None = None,
                     timeout: float = 120) -> dict[str, dict[str, str | None]]:  # fmt: skip
        """Wait until the health endpoint calls each of `components` healthy, by a heartbeat after `since` if given
        (a component stopped seconds ago still looks healthy by its last one); the last answer."""
        deadline = time.monotonic() + timeout
        health: dict[str, dict[str, str | None]] = {}

        def fresh(name: str) -> bool:
            part = health.get(name) or {}
            if part.get("status") != "healthy":
                return False
            if since is None or name == "metadatabase":  # the database has no heartbeat
                return True
            beat = part.get(f"latest_{name}_heartbeat")
            return beat is not None and datetime.fromisoformat(beat) > since

        while time.monotonic() < deadline:
            self._check_alive()
            try:
                health = self.health()
                if all(fresh(c) for c in components):
                    return health
            except requests.RequestException:
                pass
            time.sleep(2)
        raise TimeoutError(f"Airflow health {health} after {timeout:.0f} s, wanted {components} healthy"
                           f"{f' since {since}' if since else ''}; see {self.home}/*.log")  # fmt: skip

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Wait until the API answers and the dag-processor has parsed `dag_id`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self.api("GET", f"/api/v2/dags/{dag_id}").status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} did not appear in {timeout:.0f} s; see {self.home}/*.log")

    def trigger(self, dag_id: str) -> str:
        resp = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        resp.raise_for_status()
        return resp.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise TimeoutError(f"run {run_id} of {dag_id} did not finish in {timeout:.0f} s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        items = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in items}

    def latest_run(self, dag_id: str, run_type: str | None = None) -> str | None:
        """The id of dag_id's newest run (of run_type: manual, scheduled, asset_triggered, ...), or None."""
        query: dict[str, Any] = {"order_by": "-id", "limit": 1, **({"run_type": run_type} if run_type else {})}
        resp = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=query)
        resp.raise_for_status()
        runs = resp.json()["dag_runs"]
        return runs[0]["dag_run_id"] if runs else None

    def assets_produced(self, dag_id: str, run_id: str, timeout: float = 60) -> set[str]:
        """Names of the Assets a run updated (its tasks' outlet events).

        Airflow (before apache/airflow#71379) answers 500 while a run those events triggered is
        queued without a start date, usually for milliseconds, so a 500 is asked again until timeout.
        """
        query = {"source_dag_id": dag_id, "source_run_id": run_id, "limit": 1000}
        deadline = time.monotonic() + timeout
        resp = self.api("GET", "/api/v2/assets/events", params=query)
        while resp.status_code == 500 and time.monotonic() < deadline:
            time.sleep(1)
            resp = self.api("GET", "/api/v2/assets/events", params=query)
        resp.raise_for_status()
        return {event["name"] for event in resp.json()["asset_events"]}

    def trigger_assets(self, dag_id: str) -> set[str]:
        """Names of the Assets an asset-scheduled DAG waits for."""
        resp = self.api("GET", f"/api/v2/dags/{dag_id}/details")
        resp.raise_for_status()
        names: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("asset"), dict) and "name" in node["asset"]:
                    names.add(node["asset"]["name"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(resp.json().get("asset_expression"))
        return names

    def wait_for_triggered_run(self, dag_id: str, timeout: float = 180) -> str:
        """The id of dag_id's asset-triggered run, once the scheduler has created it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            run_id = self.latest_run(dag_id, "asset_triggered")
            if run_id is not None:
                return run_id
            time.sleep(2)
        raise TimeoutError(f"no asset-triggered run of {dag_id} appeared in {timeout:.0f} s; see {self.home}/*.log")


class MlflowServer:
    """The local tracking server of mlflow/start.sh on a loopback port, its store in `store` (artifacts, and the
    runs too unless `backend` names another store, such as a Postgres database)."""

    def __init__(self, store: Path, port: int | None = None, backend: str | None = None) -> None:
        self.store, self.port, self.backend = store, port or free_port(5000), backend
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        """Start the server; `wait_ready` blocks until it answers."""
        self.store.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_STORE": str(self.store), "PYTHON": sys.executable,
               **({"MLFLOW_BACKEND_STORE_URI": self.backend} if self.backend else {})}
        log = (self.store / "server.log").open("ab")
        self.proc = subprocess.Popen([str(PROJECT / "mlflow/start.sh"), str(self.port)], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 90) -> MlflowServer:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.store / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server did not start on {self.url}:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> MlflowServer:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- beyond one machine

POSTGRES = ("127.0.0.1", 5432, "postgres")  # the machines' local service, trust auth
REDIS = ("127.0.0.1", 6379)


def missing_services() -> list[str]:
    """What the distributed setup needs and this machine lacks: the Python drivers, the Celery provider, a
    PostgreSQL server on 127.0.0.1:5432 and a Redis server on 127.0.0.1:6379 (each named, for a skip)."""
    missing = []
    for module, what in (("psycopg2", "psycopg2-binary"), ("asyncpg", "asyncpg"), ("redis", "redis"),
                         ("airflow.providers.celery", "apache-airflow-providers-celery")):  # fmt: skip
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {what}")
    for name, (host, port) in (("PostgreSQL", POSTGRES[:2]), ("Redis", REDIS)):
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError:
            missing.append(f"a {name} server on {host}:{port}")
    if not missing:
        import psycopg2

        try:
            psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user=POSTGRES[2], dbname="postgres").close()
        except psycopg2.OperationalError as exc:
            missing.append(f"trust auth for user {POSTGRES[2]} on {POSTGRES[0]}:{POSTGRES[1]} ({str(exc).strip()})")
    return missing


class PostgresDatabase:
    """A database of its own on the local PostgreSQL service: created on entry, dropped on exit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.host, self.port, self.user = POSTGRES

    def url(self, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{self.name}"

    def _admin(self, statement: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True  # CREATE / DROP DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def __enter__(self) -> PostgresDatabase:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc: object) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def celery_env(env: dict[str, str], database: PostgresDatabase, redis_db: int) -> dict[str, str]:
    """airflow_env's environment turned to the CeleryExecutor: metadata and Celery results in `database`, the
    broker on the local Redis. Every process of the cluster must share these values and the keys below."""
    db = database.url()
    return {
        **env,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__CORE__FERNET_KEY": env.get("AIRFLOW__CORE__FERNET_KEY") or _fernet_key(),
        "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": env.get("AIRFLOW__API__SECRET_KEY") or secrets.token_hex(32),
    }


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


class CeleryWorkers:
    """`airflow celery worker` processes, one per (queue, name). Each is a host of its own to Airflow: its task
    instances record `name` as their hostname (two workers on one machine would otherwise share one)."""

    def __init__(self, env: dict[str, str], workers: list[tuple[str, str]], api_port: int) -> None:
        self.workers = workers
        self.env = {**env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/"}
        self.home = Path(env["AIRFLOW_HOME"])
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> CeleryWorkers:
        airflow_bin = str(Path(sys.executable).parent / "airflow")
        for queue, name in self.workers:
            env = {**self.env, "MOOD_WORKER_NAME": name,
                   "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devtools.hostname.worker_name",
                   # Each worker serves its task logs on a port of its own (8793 for all by default).
                   "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}  # fmt: skip
            log = (self.home / f"worker-{name}.log").open("ab")
            args = [airflow_bin, "celery", "worker", "--queues", queue, "--celery-hostname", f"{name}@%h"]
            self.procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))  # fmt: skip
        return self

    def check_alive(self) -> None:
        for (_, name), proc in zip(self.workers, self.procs, strict=True):
            if proc.poll() is not None:
                tail = (self.home / f"worker-{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"celery worker {name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        stop_processes(self.procs)

    def __enter__(self) -> CeleryWorkers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
