"""docker/: there is no Docker engine here, so the compose file is parsed and checked against the project:
every command exists in the image's environment (this venv: the image installs the same pins), the DAGs'
queues and pools exist, the environment the code reads is set, and secrets come only from .env."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.audioset.state import STATE_DB_ENV
from tasks.config import section_config

from .conftest import PROJECT

DOCKER = PROJECT / "docker"
AIRFLOW_SERVICES = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer", "worker", "gpu-worker"}
SERVICES = {"postgres", "redis", "minio", "minio-init", "mlflow", *AIRFLOW_SERVICES}
# Read by the code, but set per process by the pipeline itself or optional by design.
ENV_NOT_FROM_COMPOSE = {"CUDA_VISIBLE_DEVICES": "tasks.train.gpu sets it per training task from its GPU claim",
                        "PATH": "the image sets it (its venv first)"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def dag_wiring() -> dict[str, Any]:
    """The queues and pools the DAG files name, from the wiring module they share."""
    sys.path.insert(0, str(PROJECT / "dags"))
    try:
        import common
    finally:
        sys.path.remove(str(PROJECT / "dags"))
    return {"queues": {common.GPU_QUEUE}, "pools": {common.DVC_POOL, common.AUDIOSET_POOL, common.GPU_POOL}}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def test_every_service_of_the_reference_layout_is_there(compose: dict) -> None:
    assert set(compose["services"]) == SERVICES


def test_airflow_commands_parse_with_the_pinned_airflow(compose: dict) -> None:
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        cmd = command(compose["services"][name])
        assert cmd[0] == "airflow" and (Path(sys.executable).parent / "airflow").exists(), name
        parser.parse_args(cmd[1:])  # an unknown subcommand or option exits: SystemExit fails the test


def test_the_mlflow_command_parses_with_the_pinned_mlflow(compose: dict) -> None:
    from mlflow.cli import cli

    cmd = command(compose["services"]["mlflow"])
    assert cmd[0] == "mlflow" and (Path(sys.executable).parent / "mlflow").exists()
    server = cli.commands[cmd[1]]
    server.make_context(cmd[1], cmd[2:])  # raises on an unknown option


def test_the_init_script_is_valid_bash_and_creates_every_pool_the_dags_use(compose: dict, dag_wiring: dict) -> None:
    init = compose["services"]["airflow-init"]
    script = DOCKER / Path(command(init)[0]).name
    assert script.exists() and script.stat().st_mode & 0o111, script
    subprocess.run(["bash", "-n", str(script)], check=True)
    created = set(re.findall(r"^airflow pools set (\S+)", script.read_text(), re.MULTILINE))
    assert dag_wiring["pools"] <= created


def test_workers_listen_on_every_queue_and_training_has_its_own(compose: dict, dag_wiring: dict) -> None:
    def queues(name: str) -> set[str]:
        cmd = command(compose["services"][name])
        return set(cmd[cmd.index("--queues") + 1].split(","))

    from airflow.configuration import conf

    default_queue = conf.get("operators", "default_queue")
    assert queues("worker") == {default_queue}
    assert queues("gpu-worker") == dag_wiring["queues"] == {"gpu"}
    devices = compose["services"]["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_the_environment_the_code_reads_is_set(compose: dict, params: dict) -> None:
    read = set()
    for path in [*PROJECT.glob("tasks/**/*.py"), *PROJECT.glob("dags/*.py")]:
        read |= set(re.findall(r"""os\.(?:environ(?:\.get)?\(?\[?|getenv\()["']([A-Z][A-Z0-9_]+)["']""",
                               path.read_text()))  # fmt: skip
    credentials = section_config(params, "acquire_audioset").credentials
    read |= {credentials.cookies_env, credentials.proxy_env, STATE_DB_ENV}
    assert {"MOOD_PIPELINE_ROOT", "MLFLOW_TRACKING_URI"} <= read  # the scan finds what it should
    for name in AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        missing = read - set(env) - set(ENV_NOT_FROM_COMPOSE)
        assert not missing, (name, missing)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["MOOD_PIPELINE_ROOT"] == "/workspace" and env["AIRFLOW__CORE__DAGS_FOLDER"] == "/workspace/dags"
        mounts = compose["services"][name]["volumes"]
        assert "workspace:/workspace" in mounts, name


def test_secrets_come_from_the_env_file_only(compose: dict) -> None:
    text = (DOCKER / "docker-compose.yaml").read_text()
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))  # fmt: skip
    used = set(re.findall(r"\$\{([A-Z_0-9]+)(?::\?[^}]*)?\}", text))  # ${NAME} and ${NAME:?why}: no default
    assert used <= set(example), used - set(example)
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD$|SECRET|FERNET|KEY_ID", key):  # required from .env: a forgotten one stops compose
                assert isinstance(value, str) and re.fullmatch(r"\$\{[A-Z_0-9]+:\?[^}]+\}", value), (key, value)
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=PROJECT, check=False)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"


def test_the_image_installs_the_pinned_requirements_and_the_same_torch() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "-r requirements.txt" in dockerfile and "-c constraints.txt" in dockerfile and "ffmpeg" in dockerfile
    assert "grep -E '^torch=='" in dockerfile  # the CUDA build takes torch's pin from requirements.txt
    pins = (DOCKER / "requirements-docker.txt").read_text()
    assert all("==" in line for line in pins.splitlines() if line and not line.startswith("#"))


def test_the_build_context_leaves_out_the_hosts_venv_secrets_and_data() -> None:
    """`COPY . .` takes the repository: without these the host's venv (links to its own Python) would
    break the build and docker/.env would be baked into the image."""
    ignored = {line.strip() for line in (PROJECT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "docker/.env", ".git", "data", ".cache", "mlflow/store"} <= ignored


@pytest.mark.skipif(subprocess.run(["sh", "-c", "docker compose version"], capture_output=True).returncode != 0,
                    reason="no Docker engine here: the file is checked by parsing instead")  # fmt: skip
def test_docker_compose_accepts_the_file() -> None:
    env = DOCKER / ".env.example"
    subprocess.run(["docker", "compose", "-f", str(DOCKER / "docker-compose.yaml"), "--env-file", str(env), "config",
                    "--quiet"], check=True, env={"PATH": "/usr/bin:/bin", "AIRFLOW_FERNET_KEY": "x"})  # fmt: skip
