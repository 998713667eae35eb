"""Shared fixtures: a small generated corpus served by a real loopback mirror."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from devtools.mirror.cli import CAL500_ARCHIVE, RAVDESS_ZIP, CorpusSpec, build_corpus, mirror_overrides
from devtools.mirror.server import MirrorServer
from devtools.workspace import free_port
from tasks.config import load_params

PROJECT = Path(__file__).resolve().parents[1]
SESSION_START = time.time()
# Written by tests/test_celery.py: which worker ran how many task instances of which queue.
CELERY_SPREAD = PROJECT / "test-artifacts" / "celery-spread.txt"
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
    from devtools.workspace import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow"), free_port()) as server:
        yield server.url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The CeleryExecutor run's spread over its workers, in the test log (CI's included)."""
    if CELERY_SPREAD.exists() and CELERY_SPREAD.stat().st_mtime >= SESSION_START:
        terminalreporter.section("CeleryExecutor: task instances per queue and worker")
        for line in CELERY_SPREAD.read_text().splitlines():
            terminalreporter.write_line(line)
