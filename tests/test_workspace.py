"""AirflowServices against a loopback stand-in for the API server: what the real one does only in a race."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from devtools.workspace import AirflowServices, airflow_env


@pytest.fixture
def api_server() -> Iterator[tuple[ThreadingHTTPServer, dict[str, int]]]:
    """Answers /auth/token, /api/v2/monitor/health with state["health"], and /api/v2/assets/events with a 500
    for the first `failures` calls."""
    state: dict = {"failures": 0, "calls": 0, "health": {}}

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(201, {"access_token": "token"})

        def do_GET(self) -> None:
            if self.path == "/api/v2/monitor/health":
                self.reply(200, state["health"])
                return
            state["calls"] += 1
            if state["calls"] <= state["failures"]:
                self.reply(500, {"detail": "Internal Server Error"})
            else:
                self.reply(200, {"asset_events": [{"name": "raw_ravdess"}, {"name": "raw_cal500"}], "total_entries": 2})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, state
    server.shutdown()


def services(server: ThreadingHTTPServer, tmp_path: Path) -> AirflowServices:
    return AirflowServices({"AIRFLOW_HOME": str(tmp_path)}, server.server_address[1])


def test_assets_produced_asks_again_while_airflow_answers_500(api_server, tmp_path: Path) -> None:
    server, state = api_server
    state["failures"] = 2
    assert services(server, tmp_path).assets_produced("acquire", "run") == {"raw_ravdess", "raw_cal500"}
    assert state["calls"] == 3


def test_assets_produced_gives_up_on_500_at_its_timeout(api_server, tmp_path: Path) -> None:
    server, state = api_server
    state["failures"] = 1000
    with pytest.raises(requests.HTTPError, match="500"):
        services(server, tmp_path).assets_produced("acquire", "run", timeout=1.5)
    assert 2 <= state["calls"] <= 4


def test_components_are_the_four_airflow_commands_or_a_subset(tmp_path: Path) -> None:
    assert AirflowServices.COMPONENTS == ("api-server", "scheduler", "dag-processor", "triggerer")
    ui_only = AirflowServices({"AIRFLOW_HOME": str(tmp_path)}, 8080, components=("api-server",))
    assert ui_only.components == ("api-server",)
    with pytest.raises(ValueError, match=r"unknown components \['webserver'\]"):
        AirflowServices({"AIRFLOW_HOME": str(tmp_path)}, 8080, components=("api-server", "webserver"))


def test_wait_healthy_wants_a_heartbeat_after_since(api_server, tmp_path: Path) -> None:
    server, state = api_server
    services = AirflowServices({"AIRFLOW_HOME": str(tmp_path)}, server.server_address[1], components=())
    now = datetime.now(UTC)
    beat = (now - timedelta(seconds=5)).isoformat()  # a triggerer stopped seconds ago: healthy by its last beat
    state["health"] = {"metadatabase": {"status": "healthy"},
                       "triggerer": {"status": "healthy", "latest_triggerer_heartbeat": beat}}  # fmt: skip
    assert services.wait_healthy(("metadatabase", "triggerer"))["triggerer"]["status"] == "healthy"
    with pytest.raises(TimeoutError, match="wanted \\('metadatabase', 'triggerer'\\) healthy since"):
        services.wait_healthy(("metadatabase", "triggerer"), since=now, timeout=1)
    state["health"]["triggerer"]["latest_triggerer_heartbeat"] = (now + timedelta(seconds=1)).isoformat()
    assert services.wait_healthy(("metadatabase", "triggerer"), since=now, timeout=5)
    state["health"]["triggerer"] = {"status": None, "latest_triggerer_heartbeat": None}  # never started
    with pytest.raises(TimeoutError):
        services.wait_healthy(("triggerer",), timeout=1)


def test_the_admin_password_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home/simple_auth_manager_passwords.json").write_text("{}")  # left by an earlier run, 0644
    env = airflow_env(tmp_path / "home", tmp_path / "ws", admin_password="s3cret")
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert passwords.stat().st_mode & 0o777 == 0o600
    assert json.loads(passwords.read_text()) == {"admin": "s3cret"}
