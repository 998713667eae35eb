"""evaluate_summary: the two studies' tables filled with our runs, beside the published figures, and the
cross-dataset matrix (every evaluated model x every test set), from the models' cards and evaluations.

A cell we cannot fill says why: no model of that architecture and split was trained, it was not
evaluated, or its features hold no such test set.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tasks.config import EvaluateConfig
from tasks.evaluate import report
from tasks.evaluate.model import EvaluationError
from tasks.storage import replace_dir, write_json

log = logging.getLogger("tasks")
PUBLISHED = Path(__file__).with_name("published.yaml")
SPLITS = {0.5: "50/50", 0.2: "80/20", 0.1: "90/10"}


def split_name(card: dict[str, Any]) -> str | None:
    split = card["split"]
    if split.get("kind") != "random":
        return None
    return SPLITS.get(round(float(split.get("val_share", 0)), 3))


def load(cfg: EvaluateConfig, root: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    cards = [json.loads(p.read_text()) for p in sorted((root / cfg.models_dir).glob("*/model.json"))]
    evaluations = {}
    for path in sorted((root / cfg.reports_dir).glob("*/metrics.json")):
        if not path.parent.name.startswith("."):  # a folder replace_dir set aside
            evaluations[path.parent.name] = json.loads(path.read_text())
    return cards, evaluations


def cell(values: list[float], why: str) -> dict[str, Any]:
    if not values:
        return {"value": None, "why": why, "n": 0}
    return {"value": float(np.mean(values)), "why": "", "n": len(values)}


def spectrogram_tables(cards: list[dict[str, Any]], evaluations: dict[str, dict[str, Any]],
                       published: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    tables = {}
    for table, what in (("table2", "validation"), ("table3", "cal500")):
        rows = []
        for arch in published["networks"]:
            row = {"network": arch}
            for split in published["splits"]:
                matching = [c for c in cards if c["arch"] == arch and split_name(c) == split]
                if table == "table2":
                    ours = cell([c["metrics"]["val_clip_accuracy"] for c in matching],
                                f"not trained: no {arch} model with a random {split} split")
                else:
                    scored = [evaluations[c["name"]]["test_sets"]["cal500_test"]["majority"]["accuracy"]
                              for c in matching if "cal500_test" in evaluations.get(c["name"], {}).get("test_sets", {})]
                    why = (f"not trained: no {arch} model with a random {split} split" if not matching else
                           "not evaluated on CAL500 (no evaluation, or no CAL500 slices)")  # fmt: skip
                    ours = cell(scored, why)
                row[split] = {"ours": ours, "published": published[table][arch][split]}
            rows.append(row)
        tables[table] = {"what": what, "rows": rows, "splits": published["splits"]}
    return tables


def audioset_tables(cards: list[dict[str, Any]], evaluations: dict[str, dict[str, Any]], root: Path,
                    cfg: EvaluateConfig, published: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    rows = []
    lstm1 = None
    for arch, value in published["table1"].items():
        matching = [c for c in cards if c["arch"] == arch and c["study"] == "audioset"]
        tested = [c for c in matching if "audioset_test" in evaluations.get(c["name"], {}).get("test_sets", {})]
        why = (f"not trained: no {arch} model in train.models.audioset" if not matching
               else "not evaluated on the AudioSet test clips")  # fmt: skip
        ours = cell([evaluations[c["name"]]["test_sets"]["audioset_test"]["majority"]["accuracy"] for c in tested], why)
        random = any(c["features"].get("random_vggish_weights") for c in tested)
        rows.append({"model": arch, "ours": ours, "published": value, "random_vggish_weights": random})
        if arch == "lstm1" and tested:
            lstm1 = tested[0]["name"]
    table2: dict[str, Any] = {"published": published["table2"], "ours": None,
                              "why": "no lstm1 model evaluated on the AudioSet test clips"}  # fmt: skip
    if lstm1:
        counts = pd.read_csv(root / cfg.reports_dir / lstm1 / "confusion_audioset_test_counts.csv", index_col=0)
        table2 = {**table2, "ours": {"model": lstm1, "classes": list(counts.columns),
                                     "counts": counts.to_numpy().tolist()}, "why": ""}  # fmt: skip
    return {"table1": rows, "table2": table2}


def cross_dataset(cards: list[dict[str, Any]], evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every evaluated model (rows) on every test set any evaluation met (columns): majority accuracy, or why not."""
    columns = sorted({k for e in evaluations.values() for k in [*e["test_sets"], *e.get("skipped", {})]})
    rows = []
    for card in cards:
        evaluation = evaluations.get(card["name"])
        row: dict[str, Any] = {"model": card["name"], "arch": card["arch"], "trained_on": card["dataset"],
                               "random_vggish_weights": bool(card["features"].get("random_vggish_weights"))}
        for column in columns:
            if evaluation is None:
                row[column] = {"value": None, "why": "not evaluated"}
            elif column in evaluation["test_sets"]:
                m = evaluation["test_sets"][column]
                row[column] = {"value": m["majority"]["accuracy"], "why": "", "songs": m["songs"]}
            elif column in evaluation.get("skipped", {}):
                row[column] = {"value": None, "why": evaluation["skipped"][column]}
            elif column.endswith("_held_out"):
                row[column] = {"value": None, "why": f"n/a: the held-out clips of a model trained on "
                                                     f"{column.removesuffix('_held_out')}"}  # fmt: skip
            else:
                row[column] = {"value": None, "why": f"no data: {card['features']['dir']} holds no such partition"}
        rows.append(row)
    return {"columns": columns, "rows": rows}


def evaluate_summary(cfg: EvaluateConfig, root: Path) -> dict[str, Any]:
    cards, evaluations = load(cfg, root)
    if not evaluations:
        raise EvaluationError(f"no evaluation under {root / cfg.reports_dir}: run the evaluate_<study> stages first")
    published = yaml.safe_load(PUBLISHED.read_text())
    studies = {"spectrogram": spectrogram_tables(cards, evaluations, published["spectrogram"]),
               "audioset": audioset_tables(cards, evaluations, root, cfg, published["audioset"]),
               "cross_dataset": cross_dataset(cards, evaluations)}  # fmt: skip
    out = root / cfg.summary_dir
    staging = root / report.STAGING
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging, prefix="summary-") as tmp:
        write_json(studies, Path(tmp) / "studies.json")
        report.render("summary.html.j2", Path(tmp) / "index.html", studies=studies, published=published,
                      reports={name: f"../{Path(cfg.reports_dir).name}/{name}/report.html" for name in evaluations})
        replace_dir(Path(tmp), out)
    headline = {name: e["test_sets"][e["primary"]]["majority"]["accuracy"] for name, e in evaluations.items()}
    write_json({"models_evaluated": len(evaluations), "headline_accuracy": headline},
               root / cfg.metrics_dir / "evaluate_summary.json")  # fmt: skip
    log.info("evaluate_summary: %d evaluations -> %s", len(evaluations), out / "index.html")
    return {"summary": str(out / "index.html"), "models": sorted(evaluations)}
