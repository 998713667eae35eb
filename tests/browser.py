"""Browser checks in headless Chromium: what a person sees in the Airflow UI, the MLflow UI and a report.

PyPI `playwright` drives Debian's `chromium` (`make apt` installs it); `playwright install` is never
run, so no browser is downloaded. Each check saves a full-page screenshot under `shots_dir`
(`screenshots_dir()`: $MOOD_TEST_ARTIFACTS, else test-artifacts/screenshots/), kept as a test artifact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

PROJECT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 60_000  # a first page load compiles the UI's bundle; on 2 busy cores that takes seconds


def screenshots_dir(test_name: str) -> Path:
    """Where a test's screenshots go: $MOOD_TEST_ARTIFACTS/<test>, else <repo>/test-artifacts/screenshots/<test>."""
    root = Path(os.environ.get("MOOD_TEST_ARTIFACTS") or PROJECT / "test-artifacts" / "screenshots")
    path = root / re.sub(r"[^\w.-]+", "_", test_name).strip("_")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A fresh page in headless Debian Chromium; skips the test, saying what is missing, without one."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser test: {CHROMIUM} is absent; `make apt` installs Debian's chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser test: PyPI playwright is not installed; `make venv` installs requirements.txt")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def airflow_token(url: str, password: str, username: str = "admin") -> str:
    """A JWT from the API server's /auth/token, the value of the UI's `_token` cookie."""
    resp = requests.post(f"{url}/auth/token", json={"username": username, "password": password}, timeout=30)
    resp.raise_for_status()
    return resp.json()["access_token"]


def check_airflow_grid(page: Any, url: str, token: str, dag_ids: list[str], shots_dir: Path) -> dict[str, str]:
    """Open each DAG's page (the grid) logged in with `token`; its header must show the latest run a success.

    Returns dag_id -> the run id the header links to.
    """
    # Typing into the login form also works; setting its fields from JS does not (DESIGN.md).
    page.context.add_cookies([{"name": "_token", "value": token, "url": f"{url}/"}])
    latest: dict[str, str] = {}
    for dag_id in dag_ids:
        page.goto(f"{url}/dags/{dag_id}")
        # The header's stats: <div data-testid="stat"><h2>Latest Run</h2> ... <a href=run><state-badge aria-label>
        stat = page.get_by_test_id("stat").filter(has=page.get_by_role("heading", name="Latest Run", exact=True))
        badge = stat.get_by_test_id("state-badge")
        try:
            badge.wait_for(state="visible")
        except Exception as exc:
            page.screenshot(path=shots_dir / f"airflow-{dag_id}-FAILED.png", full_page=True)
            where = "the login page: the _token cookie was refused" if "/login" in page.url else page.url
            raise AssertionError(f"Airflow UI {dag_id}: no latest-run state badge in the DAG header ({where}); "
                                 f"a DAG without runs has none: {exc}") from exc  # fmt: skip
        run_id = (stat.locator("a").first.get_attribute("href") or "").rsplit("/runs/", 1)[-1]
        # The grid's cells of that run (data-testid grid-<run_id>-<task_id>) are drawn before the screenshot.
        page.locator(f'[data-testid^="grid-{run_id}-"]').first.wait_for(state="visible")
        page.screenshot(path=shots_dir / f"airflow-{dag_id}.png", full_page=True)
        state = badge.get_attribute("aria-label")
        assert state == "success", f"Airflow UI {dag_id}: the latest run {run_id} shows {state!r}, not 'success'"
        latest[dag_id] = run_id
    return latest


def check_mlflow_model(page: Any, url: str, model_name: str, shots_dir: Path) -> None:
    """The MLflow UI's page of a registered model lists a version holding the alias `champion`."""
    # Never wait for networkidle: MLflow's telemetry worker keeps a request open for good.
    page.goto("about:blank")  # a load of the page, not a hash change the open app would answer from its cache
    page.goto(f"{url}/#/models/{model_name}")
    try:
        page.get_by_text("champion").first.wait_for(state="visible")
    except Exception as exc:
        page.screenshot(path=shots_dir / f"mlflow-{model_name}-FAILED.png", full_page=True)
        raise AssertionError(f"MLflow UI {url}/#/models/{model_name}: no alias 'champion' shown: {exc}") from exc
    page.screenshot(path=shots_dir / f"mlflow-{model_name}.png", full_page=True)


# Everything check_report asserts about a loaded page, measured in the page.
REPORT_FACTS = """() => ({
  images: [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 60), cls: i.className,
                                          loaded: i.complete && i.naturalWidth > 0})),
  tables: [...document.querySelectorAll('table.results')].map((t, n) => {
    const rows = [...t.querySelectorAll('tbody tr')].filter(r => r.querySelector('td'));
    const empty = [...t.querySelectorAll('td')]
      .filter(d => !d.textContent.trim() && !d.querySelector('img,svg,canvas'));
    return {index: n, caption: (t.caption ? t.caption.textContent : '').trim(), rows: rows.length,
            empty: empty.map(d => `row ${d.parentElement.rowIndex} column ${d.cellIndex}`)};
  }),
})"""


def check_report(page: Any, html_path: Path, shots_dir: Path) -> None:
    """A self-contained HTML report: every image loads, a confusion matrix is there, results tables are filled,
    and the page asks nothing of the network (file: and data: URLs only)."""
    local = ("file:", "data:")
    outside: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(local) else outside.append(request.url))
    # Refused too, not only recorded: an offline machine would wait on it, and the report must not need it.
    page.route(re.compile(r"^(?!file:|data:)"), lambda route: route.abort())
    page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
    facts = page.evaluate(REPORT_FACTS)
    page.screenshot(path=shots_dir / f"report-{Path(html_path).stem}.png", full_page=True)
    name = Path(html_path).name
    assert not outside, f"{name} is not self-contained: it requested {sorted(set(outside))}"
    broken = [i["src"] for i in facts["images"] if not i["loaded"]]
    assert not broken, f"{name}: {len(broken)} image(s) did not load: {broken}"
    assert any("confusion" in i["cls"].split() for i in facts["images"]), f'{name}: no <img class="confusion">'
    assert facts["tables"], f'{name}: no <table class="results">'
    for table in facts["tables"]:
        what = f"{name}: results table {table['index']} {table['caption']!r}"
        assert table["rows"] > 0, f"{what} has no body rows"
        assert not table["empty"], f"{what} has empty cells: {', '.join(table['empty'])}"
