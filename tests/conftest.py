"""Shared fixtures: a small generated corpus served by a real loopback mirror."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks.config import load_params
from tasks.mirror.cli import CAL500_ARCHIVE, RAVDESS_ZIP, CorpusSpec, build_corpus, mirror_overrides
from tasks.mirror.server import MirrorServer

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
# Short clips keep the suite fast; the code paths are those of full-length audio.
SMALL = CorpusSpec(seed=7, ravdess_actors=(1,), ravdess_seconds=(1.0, 1.6), cal500_songs=6, cal500_seconds=(3.0, 5.0),
                   audioset_per_class=(2, 1), audioset_missing=1, audioset_segment_seconds=2.0,
                   audioset_media_seconds=4.0)  # fmt: skip


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tasks")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mirror")
    return root, build_corpus(root, SMALL)


@pytest.fixture(scope="session")
def mirror(corpus: tuple[Path, dict[str, str]]):
    root, _ = corpus
    with MirrorServer(root) as server:
        yield server


@pytest.fixture(scope="session")
def mirror_params(mirror: MirrorServer, corpus: tuple[Path, dict[str, str]]) -> list[str]:
    return mirror_overrides(mirror.url, corpus[1])


@pytest.fixture
def params() -> dict:
    return load_params(PROJECT / "params.yaml")


@pytest.fixture
def ravdess_zip(corpus: tuple[Path, dict[str, str]]) -> Path:
    return corpus[0] / RAVDESS_ZIP


@pytest.fixture
def cal500_archive(corpus: tuple[Path, dict[str, str]]) -> Path:
    return corpus[0] / CAL500_ARCHIVE


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or a skip with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """The real local tracking server (mlflow/start.sh) on a free loopback port, for the whole session."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests

    from tasks.workspace import free_port

    store = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_STORE": str(store), "PYTHON": sys.executable}
    log = (store / "server.log").open("wb")
    proc = subprocess.Popen([str(PROJECT / "mlflow/start.sh"), str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start:\n{(store / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
