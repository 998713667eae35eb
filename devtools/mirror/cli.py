"""`python -m devtools mirror build|serve`: make the generated corpus and serve it on loopback."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.fetch import sha256_file

log = logging.getLogger("tasks")

RAVDESS_ZIP = "zenodo/Audio_Song_Actors_01-24.zip"
CAL500_ARCHIVE = "cal500/CAL500.tar.gz"
INDEX = "index.json"


@dataclass(frozen=True)
class CorpusSpec:
    seed: int = 0
    ravdess_actors: tuple[int, ...] = (1, 2)
    ravdess_seconds: tuple[float, float] = (3.8, 6.1)
    cal500_songs: int = 12
    cal500_seconds: tuple[float, float] = (20.0, 45.0)
    audioset_per_class: tuple[int, int] = (7, 3)  # (train, test) single-mood segments per study mood
    audioset_missing: int = 3  # of those, videos that are gone (HTTP 404)
    audioset_segment_seconds: float = 10.0
    audioset_media_seconds: float = 14.0


def build_corpus(out: Path, spec: CorpusSpec) -> dict[str, str]:
    """Write the mirror tree once per spec; returns {relative path: sha256}."""
    from devtools.mirror.audioset import build_audioset_tree
    from devtools.mirror.package import build_cal500_archive, build_ravdess_zip

    index_path = out / INDEX
    wanted = json.loads(json.dumps(asdict(spec)))
    if index_path.exists():
        index = json.loads(index_path.read_text())
        if index.get("spec") == wanted and all((out / p).exists() for p in index["files"]):
            return index["files"]
    started = time.monotonic()
    for rel in (RAVDESS_ZIP, CAL500_ARCHIVE):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    build_ravdess_zip(out / RAVDESS_ZIP, spec.ravdess_actors, spec.seed, *spec.ravdess_seconds)
    build_cal500_archive(out / CAL500_ARCHIVE, spec.cal500_songs, spec.seed, *spec.cal500_seconds)
    audioset = build_audioset_tree(out, spec.seed, spec.audioset_per_class, spec.audioset_missing,
                                   spec.audioset_segment_seconds, spec.audioset_media_seconds)  # fmt: skip
    files = {p: sha256_file(out / p) for p in (RAVDESS_ZIP, CAL500_ARCHIVE, *audioset)}
    index_path.write_text(json.dumps({"spec": wanted, "files": files}, indent=2) + "\n")
    log.info("mirror corpus built in %s in %.1f s", out, time.monotonic() - started)
    return files


def mirror_overrides(base_url: str, files: dict[str, str]) -> list[str]:
    """`-S` overrides that point params.yaml's source URLs (and checksums) at a mirror."""
    return [
        f"acquire_ravdess.download.url={base_url}/{RAVDESS_ZIP}",
        f"acquire_ravdess.download.sha256={files[RAVDESS_ZIP]}",
        f"acquire_cal500.download.url={base_url}/{CAL500_ARCHIVE}",
        f"acquire_cal500.download.sha256={files[CAL500_ARCHIVE]}",
        # The published VGGish weights cannot come from a mirror of generated data: an offline
        # run embeds with seeded random weights, which the feature dataset records.
        "features_vggish.weights=null",
        "features_vggish.pca_params=null",
        "features_vggish.allow_random_weights=true",
        *audioset_overrides(base_url, files),
    ]


def audioset_overrides(base_url: str, files: dict[str, str]) -> list[str]:
    from devtools.mirror.audioset import ONTOLOGY, SEGMENT_FILES, URL_TEMPLATE

    overrides = [f"select_audioset.ontology.url={base_url}/{ONTOLOGY}",
                 f"select_audioset.ontology.sha256={files[ONTOLOGY]}"]  # fmt: skip
    for name, rel in SEGMENT_FILES.items():
        overrides += [f"select_audioset.segments.{name}.url={base_url}/{rel}",
                      f"select_audioset.segments.{name}.sha256={files[rel]}"]  # fmt: skip
    # A loopback mirror needs no politeness towards YouTube: keep the pacing short, not absent.
    return [*overrides, f"acquire_audioset.url_template={base_url}/{URL_TEMPLATE}",
            "acquire_audioset.max_requests_per_hour=36000", "acquire_audioset.burst=10",
            "acquire_audioset.jitter_s=0.1"]  # fmt: skip


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools mirror", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="generate the corpus in the official archive formats")
    build.add_argument("out", type=Path)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--ravdess-actors", type=_ints, default=(1, 2), help="comma-separated actor numbers")
    build.add_argument("--cal500-songs", type=int, default=12)
    serve = sub.add_parser("serve", help="serve a directory on loopback with Range support")
    serve.add_argument("root", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    if args.command == "build":
        spec = CorpusSpec(seed=args.seed, ravdess_actors=args.ravdess_actors, cal500_songs=args.cal500_songs)
        print(json.dumps(build_corpus(args.out, spec), indent=2))
        return 0
    from devtools.mirror.server import MirrorServer

    server = MirrorServer(args.root, args.host, args.port)
    print(f"serving {args.root} at {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0
