"""An HTML template that makes `dvc plots show` / `dvc plots diff` pages render offline.

DVC's default page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so it is blank
without a network. This template inlines the `build/*.min.js` of the same versions instead (from
`npm pack` tarballs checked against pinned sha512 integrity strings, so every machine gets the same
bytes) and has `{plot_divs}` but no `{scripts}`, so DVC adds no CDN `<script src>`.

    python3 scripts/dvc_plots_template.py                    # builds .cache/dvc/plots-offline.html
    dvc plots show --html-template .cache/dvc/plots-offline.html
    .venv/bin/python scripts/dvc_plots_template.py --configure .   # plain `dvc plots show` uses it

A second run does nothing while the template is present, unedited and built from the same pins.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = PROJECT / ".cache" / "dvc"
TEMPLATE_NAME = "plots-offline.html"
NPM_TIMEOUT_S = 300


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    script: str  # the file inlined, inside the tarball's package/ folder
    integrity: str  # `npm view <name>@<version> dist.integrity`

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{self.name}-{self.version}.tgz"


# The versions dvc_render's VegaRenderer.SCRIPTS loads from the CDN; in this order (vega-embed needs both globals).
PACKAGES = (
    Package("vega", "5.20.2", "build/vega.min.js",
            "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    Package("vega-lite", "5.2.0", "build/vega-lite.min.js",
            "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    Package("vega-embed", "6.18.2", "build/vega-embed.min.js",
            "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
)  # fmt: skip
PINS = " ".join(f"{p.spec} {p.integrity}" for p in PACKAGES)
# The marker holds the pins and the sha256 of the rest of the page, so a stale or edited template is rebuilt.
MARKER_SLOT = "<!-- dvc-plots-offline -->"
MARKER = re.compile(r"<!-- dvc-plots-offline: (?P<pins>.*) sha256:(?P<digest>[0-9a-f]{64}) -->")
# DVC substitutes these with str.replace; inlined code must not contain them, nor end its <script> early.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {marker}
    {{refresh_tag}}
    <title>DVC Plot</title>
{inline_scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class TemplateError(Exception):
    """The template cannot be built or configured; the message names the package or repo and the fix."""


def sri_sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def template_is_current(template: Path) -> bool:
    try:
        text = template.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    found = MARKER.search(text)
    if found is None or found["pins"] != PINS:
        return False
    rest = text[: found.start()] + MARKER_SLOT + text[found.end() :]
    return hashlib.sha256(rest.encode()).hexdigest() == found["digest"]


def npm_pack(pkg: Package, dest: Path, npm: str | None) -> Path:
    """`npm pack` one package into `dest` (a cache folder); the tarball must match the pinned integrity."""
    if npm is None:
        raise TemplateError(f"{pkg.spec}: npm not found on PATH; install it (`make plots-template` does, with apt) "
                            f"or put {pkg.tarball} into {dest}")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pack-") as tmp:
        cmd = [npm, "pack", pkg.spec, "--pack-destination", tmp, "--ignore-scripts", "--silent"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TemplateError(f"{pkg.spec}: npm pack took over {NPM_TIMEOUT_S} s; registry unreachable?") from exc
        packed = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(packed) != 1:
            raise TemplateError(f"{pkg.spec}: npm pack failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-1500:]}")  # fmt: skip
        got = sri_sha512(packed[0])
        if got != pkg.integrity:
            raise TemplateError(f"{pkg.spec}: npm pack gave a tarball with integrity {got}, "
                                f"not the pinned {pkg.integrity}; nothing was cached")  # fmt: skip
        target = dest / pkg.tarball
        os.replace(packed[0], target)
    return target


def cached_tarball(pkg: Package, cache: Path, npm: str | None) -> Path:
    tarball = cache / pkg.tarball
    if tarball.is_file():
        if sri_sha512(tarball) == pkg.integrity:
            return tarball
        print(f"{pkg.spec}: cached {tarball} fails its integrity check; fetching it again", file=sys.stderr)
        tarball.unlink()
    return npm_pack(pkg, cache, npm)


def read_script(pkg: Package, tarball: Path) -> str:
    member = f"package/{pkg.script}"
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            f = tar.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise TemplateError(f"{pkg.spec}: {tarball} has no file {member}")
        code = f.read().decode("utf-8")
    # A file: page would look for the source map beside itself.
    code = "\n".join(line for line in code.split("\n") if not line.startswith("//# sourceMappingURL="))
    for bad in (*PLACEHOLDERS, "</script", "<!--"):
        if bad in code.lower():
            raise TemplateError(f"{pkg.spec}: {pkg.script} contains {bad!r} and cannot be inlined in the template")
    return code


def build_template(cache: Path = DEFAULT_CACHE, npm: str | None = None) -> tuple[Path, bool]:
    """The template's path, and whether it was (re)built: a current one is left alone."""
    template = cache / TEMPLATE_NAME
    if template_is_current(template):
        return template, False
    npm = npm or shutil.which("npm")
    (cache / "npm").mkdir(parents=True, exist_ok=True)
    scripts = []
    for pkg in PACKAGES:
        code = read_script(pkg, cached_tarball(pkg, cache / "npm", npm))
        scripts.append(f"    <!-- {pkg.spec} {pkg.script} -->\n    <script>{code}</script>")
    page = PAGE.format(marker=MARKER_SLOT, inline_scripts="\n".join(scripts))
    digest = hashlib.sha256(page.encode()).hexdigest()
    page = page.replace(MARKER_SLOT, f"<!-- dvc-plots-offline: {PINS} sha256:{digest} -->", 1)
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, template)
    return template, True


def configure(repo: Path, template: Path) -> None:
    """`dvc config --local plots.html_template` in `repo`: an absolute path (DVC reads relative ones from .dvc/)."""
    if not (repo / ".dvc").is_dir():
        raise TemplateError(f"--configure {repo}: not a DVC repo (no .dvc folder); run `dvc init` there first")
    dvc = [sys.executable, "-m", "dvc"] if importlib.util.find_spec("dvc") else [shutil.which("dvc") or "dvc"]
    try:
        proc = subprocess.run([*dvc, "config", "--local", "plots.html_template", str(template.resolve())], cwd=repo,
                              capture_output=True, text=True, check=False)  # fmt: skip
    except FileNotFoundError as exc:
        raise TemplateError(f"--configure {repo}: dvc not found; run this script with .venv/bin/python") from exc
    if proc.returncode != 0:
        raise TemplateError(f"--configure {repo}: dvc config failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"folder for the template and the npm tarballs (default {DEFAULT_CACHE})")  # fmt: skip
    parser.add_argument("--configure", type=Path, metavar="ROOT",
                        help="also set plots.html_template in the DVC repo ROOT's .dvc/config.local")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        template, built = build_template(args.cache)
        if args.configure:
            configure(args.configure, template)
    except TemplateError as exc:
        print(f"dvc_plots_template: {exc}", file=sys.stderr)
        return 1
    size_kib = template.stat().st_size // 1024
    what = f"built {template} ({size_kib} KiB)" if built else f"up to date: {template}"
    print(f"{what}: {', '.join(p.spec for p in PACKAGES)} inlined"
          + (f"; {args.configure} uses it for dvc plots" if args.configure else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
