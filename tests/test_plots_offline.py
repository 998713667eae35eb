"""`dvc plots show` / `dvc plots diff` pages render offline with scripts/dvc_plots_template.py's template.

The browser checks open the pages in Debian's chromium with every request but file: aborted; the
default DVC page under the same block is the negative control (it loads vega from a CDN and stays blank).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from devtools.workspace import git
from tasks.versioning import dvc

from .conftest import PROJECT

SCRIPT = PROJECT / "scripts/dvc_plots_template.py"
CACHE = PROJECT / ".cache/dvc"
TEMPLATE = CACHE / "plots-offline.html"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
BUILDS = {"vega-5.20.2.tgz": "build/vega.min.js", "vega-lite-5.2.0.tgz": "build/vega-lite.min.js",
          "vega-embed-6.18.2.tgz": "build/vega-embed.min.js"}  # fmt: skip
REMOTE_SCRIPT = re.compile(r"""<script[^>]*\ssrc\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)
PLOT_DIVS = ("confusion_csv", "loss_csv")  # DVC's div ids: the plot file names, special characters as _
# The DVC repo and the browser make these slow; the script's own checks stay in the fast set.
SLOW = pytest.mark.slow
DVC_YAML = """\
plots:
  - confusion.csv:
      template: confusion
      x: actual
      y: predicted
  - loss.csv:
      x: epoch
      y: loss
"""


def run_script(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") if path is None else path}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def template() -> Path:
    """The project's cached template, built by the script (npm pack, once per machine)."""
    if shutil.which("npm") is None and not TEMPLATE.exists():
        pytest.skip("npm is not on PATH and the template is not built: run `make plots-template`")
    proc = run_script()
    assert proc.returncode == 0, proc.stderr
    return TEMPLATE


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Path:
    """A git + DVC repo whose dvc.yaml declares a confusion matrix and a line plot; loss.csv changed since HEAD."""
    root = tmp_path_factory.mktemp("plots")
    git(root, "init", "-q", "-b", "main")
    dvc(root, "init", "-q")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "confusion.csv").write_text("actual,predicted\nhappy,happy\nsad,happy\nsad,sad\nangry,angry\n")
    (root / "loss.csv").write_text("epoch,loss\n0,1.5\n1,1.1\n2,0.8\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "plots")
    (root / "loss.csv").write_text("epoch,loss\n0,1.4\n1,0.9\n2,0.6\n")
    dvc(root, "plots", "show", "--html-template", str(template), "-o", "show")
    dvc(root, "plots", "show", "-o", "default")
    proc = run_script("--configure", str(root))
    assert proc.returncode == 0, proc.stderr
    dvc(root, "plots", "diff", "HEAD", "-o", "diff")  # no --html-template: the configured one
    return root


def test_template_inlines_the_pinned_builds(template: Path) -> None:
    text = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{scripts}" not in text and not REMOTE_SCRIPT.search(text)
    for tarball, member in BUILDS.items():
        with tarfile.open(CACHE / "npm" / tarball) as tar:
            code = tar.extractfile(f"package/{member}").read().decode("utf-8")
        assert code.split("\n//# sourceMappingURL=")[0] in text, member


@SLOW
@pytest.mark.parametrize("page", ["show", "diff"])
def test_pages_are_self_contained(plots_repo: Path, template: Path, page: str) -> None:
    html = (plots_repo / page / "index.html").read_text(encoding="utf-8")
    assert not REMOTE_SCRIPT.search(html)
    assert template.read_text(encoding="utf-8").split("{plot_divs}")[0].replace("{refresh_tag}", "") in html
    for div in PLOT_DIVS:
        assert f'<div id = "{div}">' in html and f"vegaEmbed('#{div}'" in html


@SLOW
def test_default_page_loads_vega_from_a_cdn(plots_repo: Path) -> None:
    assert REMOTE_SCRIPT.search((plots_repo / "default/index.html").read_text(encoding="utf-8"))


@SLOW
def test_configure_sets_the_repos_local_config(plots_repo: Path, template: Path) -> None:
    assert dvc(plots_repo, "config", "plots.html_template").strip() == str(template.resolve())


def test_second_run_does_nothing_even_without_npm(template: Path, tmp_path: Path) -> None:
    before = template.stat().st_mtime_ns
    proc = run_script(path=str(tmp_path))  # no npm on this PATH
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"up to date: {template}") and template.stat().st_mtime_ns == before


def test_an_edited_template_is_rebuilt_the_same_from_cached_tarballs(template: Path, tmp_path: Path) -> None:
    shutil.copytree(CACHE / "npm", tmp_path / "cache/npm")
    edited = tmp_path / "cache/plots-offline.html"
    edited.write_text(template.read_text(encoding="utf-8").replace("vega-embed", "vega-embeb", 1), encoding="utf-8")
    proc = run_script("--cache", str(tmp_path / "cache"), path=str(tmp_path))  # no npm on this PATH
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"built {edited}") and edited.read_bytes() == template.read_bytes()


def test_missing_npm_names_the_package(tmp_path: Path) -> None:
    proc = run_script("--cache", str(tmp_path / "cache"), path=str(tmp_path))
    assert proc.returncode == 1
    assert "vega@5.20.2: npm not found on PATH" in proc.stderr
    assert not (tmp_path / "cache/plots-offline.html").exists()


def test_tarball_failing_its_pin_is_refused(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"  # packs a tarball with the wrong bytes into --pack-destination
    npm.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = --pack-destination ] && dest=$2; shift; done\n'
                   'echo "not the registry tarball" > "$dest/vega-5.20.2.tgz"\n')  # fmt: skip
    npm.chmod(0o755)
    proc = run_script("--cache", str(tmp_path / "cache"), path=str(bin_dir))
    assert proc.returncode == 1
    assert re.search(r"vega@5\.20\.2: npm pack gave a tarball with integrity sha512-\S+, not the pinned sha512-",
                     proc.stderr), proc.stderr  # fmt: skip
    assert not (tmp_path / "cache/plots-offline.html").exists()
    assert not [p for p in (tmp_path / "cache/npm").iterdir()]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through playwright (never `playwright install`), or a skip naming what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (make apt installs chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_offline(browser, html: Path):
    """The page loaded with every request but file: aborted; with the URLs aborted and the page's errors."""
    context = browser.new_context(service_workers="block")
    blocked: list[str] = []
    errors: list[str] = []

    def only_files(route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_files)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(html.as_uri(), wait_until="load")
    return page, blocked, errors


@SLOW
@pytest.mark.parametrize("page_name", ["show", "diff"])
def test_pages_render_with_the_network_blocked(browser, plots_repo: Path, page_name: str) -> None:
    page, blocked, errors = open_offline(browser, plots_repo / page_name / "index.html")
    try:
        for div in PLOT_DIVS:
            # vega draws into .marks (a canvas by default); the actions menu's svg icon is not the plot
            marks = page.wait_for_selector(f"#{div} .marks", timeout=10_000)
            box = marks.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, (div, box)
        assert blocked == [] and errors == []
    finally:
        page.context.close()


@SLOW
def test_default_page_renders_nothing_with_the_network_blocked(browser, plots_repo: Path) -> None:
    page, blocked, errors = open_offline(browser, plots_repo / "default/index.html")
    try:
        assert [url for url in blocked if "cdn.jsdelivr.net" in url] == [
            "https://cdn.jsdelivr.net/npm/vega@5.20.2", "https://cdn.jsdelivr.net/npm/vega-lite@5.2.0",
            "https://cdn.jsdelivr.net/npm/vega-embed@6.18.2"]  # fmt: skip
        assert page.evaluate("typeof vegaEmbed") == "undefined"
        assert page.query_selector_all(".marks") == []
        assert any("vegaEmbed is not defined" in e for e in errors), errors
    finally:
        page.context.close()
