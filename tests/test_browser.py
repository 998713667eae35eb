"""The browser checks themselves: each passes on a good page and fails, naming the fault, on a bad one."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from .browser import check_mlflow_model, check_report, chromium_page, screenshots_dir


def png(width: int = 40, height: int = 30) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def report_html(confusion: str | None = None, rows: str | None = None, extra: str = "") -> str:
    confusion = f'<img class="confusion" alt="confusion matrix" src="{png()}">' if confusion is None else confusion
    rows = "<tr><td>cnn_ravdess</td><td>0.612</td></tr><tr><td>stats_ravdess</td><td>0.455</td></tr>" \
        if rows is None else rows  # fmt: skip
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>report</title></head><body>
<h1>Evaluation</h1>{confusion}
<table class="results"><caption>validation</caption><thead><tr><th>model</th><th>accuracy</th></tr></thead>
<tbody>{rows}</tbody></table>{extra}</body></html>"""


def test_a_self_contained_filled_report_passes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    html = tmp_path / "good.html"
    html.write_text(report_html(extra=f'<img alt="curve" src="{png(80, 20)}">'))
    shots = screenshots_dir(request.node.name)
    with chromium_page() as page:
        check_report(page, html, shots)
    assert (shots / "report-good.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("html", "message"),
    [
        (report_html(extra='<img alt="curve" src="data:image/png;base64,iVBORw0KGgoAAAA">'),
         r"1 image\(s\) did not load"),
        (report_html(extra='<img alt="curve" src="missing.png">'), r"1 image\(s\) did not load: \['missing.png'\]"),
        (report_html(confusion=f'<img class="matrix" src="{png()}">'), r'no <img class="confusion">'),
        (report_html(rows="<tr><td>cnn_ravdess</td><td> </td></tr>"),
         r"results table 0 'validation' has empty cells: row 1 column 1"),
        (report_html(rows=""), r"results table 0 'validation' has no body rows"),
        (report_html().replace('class="results"', 'class="other"'), r'no <table class="results">'),
        # A report that loads its charting library from a CDN is blank offline (what `dvc plots show` writes).
        (report_html(extra='<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>'),
         r"not self-contained: it requested \['https://cdn.jsdelivr.net/npm/vega@5.20.2'\]"),
    ],
    ids=["broken-image", "missing-image", "no-confusion-matrix", "empty-cell", "no-rows", "no-results-table",
         "network-request"],
)  # fmt: skip
def test_a_faulty_report_fails_naming_the_fault(html: str, message: str, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:  # fmt: skip
    path = tmp_path / "bad.html"
    path.write_text(html)
    with chromium_page() as page, pytest.raises(AssertionError, match=message):
        check_report(page, path, screenshots_dir(request.node.name))


@pytest.mark.slow
def test_mlflow_model_page_shows_the_champion_alias(mlflow_server: str, request: pytest.FixtureRequest) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    name = "browser-check-model"
    run = client.create_run(client.create_experiment("browser-check")).info.run_id
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run}/model", run).version
    shots = screenshots_dir(request.node.name)
    with chromium_page() as page:
        page.context.set_default_timeout(15_000)
        with pytest.raises(AssertionError, match="no alias 'champion' shown"):
            check_mlflow_model(page, mlflow_server, name, shots)
        client.set_registered_model_alias(name, "champion", version)
        check_mlflow_model(page, mlflow_server, name, shots)
    assert (shots / f"mlflow-{name}.png").exists()
