"""AudioSet's published lists: `ontology.json`, the segment CSVs and the mood study's clip lists.

Segment CSV (official):   three `#` lines, then `YTID, start_seconds, end_seconds, "id,id,..."`
Clip list (mood study):   `YTID start end YTID_start "Happy music"`, space separated
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.storage import StageFailed

log = logging.getLogger("tasks")

YTID_RE = re.compile(r"[A-Za-z0-9_-]{11}")
MUSIC_MOOD = "/t/dd00030"


class InvalidId(ValueError):
    """A YouTube id that is not 11 characters of [A-Za-z0-9_-]."""


def check_ytid(ytid: object) -> str:
    """The id itself, or InvalidId: nothing else may reach a path, a URL or a command."""
    if not isinstance(ytid, str) or not YTID_RE.fullmatch(ytid):
        raise InvalidId(f"invalid YouTube id {ytid!r}: need 11 characters of [A-Za-z0-9_-]")
    return ytid


def segment_id(ytid: str, start: float) -> str:
    """`YTID_30.000`, the study's clip name: unique per segment, stable across lists."""
    return f"{ytid}_{start:.3f}"


def label_name(display_name: str) -> str:
    """`Happy music` -> `happy`: the label every later stage sees."""
    return display_name.strip().lower().removesuffix(" music").replace(" ", "_")


@dataclass(frozen=True)
class OntologyClass:
    id: str
    name: str
    child_ids: tuple[str, ...]
    abstract: bool


class Ontology:
    def __init__(self, classes: dict[str, OntologyClass]) -> None:
        self.classes = classes
        self._by_name = {c.name.casefold(): c for c in classes.values()}

    def find(self, name: str) -> OntologyClass | None:
        return self._by_name.get(name.strip().casefold())

    def children(self, class_id: str) -> list[OntologyClass]:
        node = self.classes.get(class_id)
        return [self.classes[c] for c in node.child_ids if c in self.classes] if node else []


def read_ontology(path: Path) -> Ontology:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        classes = {
            e["id"]: OntologyClass(e["id"], e["name"], tuple(e.get("child_ids", [])),
                                   "abstract" in e.get("restrictions", []))
            for e in entries
        }  # fmt: skip
    except (ValueError, TypeError, KeyError) as exc:
        raise StageFailed(f"{path.name}: not an AudioSet ontology (a list of classes with id, name): {exc}") from None
    return Ontology(classes)


@dataclass(frozen=True)
class Segment:
    ytid: str
    start: float
    end: float
    labels: tuple[str, ...]  # ontology class ids
    source: str  # list it came from


@dataclass(frozen=True)
class BadRow:
    source: str
    line: int
    reason: str


def _rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quotechar='"', skipinitialspace=True)
        for row in reader:
            if not row or row[0].startswith("#"):
                continue
            yield reader.line_num, row


def _times(ytid: str, start: str, end: str) -> tuple[str, float, float]:
    ytid = check_ytid(ytid)
    first, last = float(start), float(end)
    if not 0 <= first < last:
        raise ValueError(f"segment {start}-{end} is not 0 <= start < end")
    return ytid, first, last


def read_segments(path: Path, source: str) -> tuple[list[Segment], list[BadRow]]:
    """An official segment CSV; malformed rows are returned, not raised: one bad line never sinks a list."""
    segments, bad = [], []
    for line, row in _rows(path, ","):
        try:
            if len(row) != 4:
                raise ValueError(f"{len(row)} fields, expected 4 (YTID, start, end, labels)")
            ytid, start, end = _times(*row[:3])
            labels = tuple(label.strip() for label in row[3].split(",") if label.strip())
            if not labels:
                raise ValueError("no labels")
        except ValueError as exc:
            bad.append(BadRow(source, line, str(exc)))
            continue
        segments.append(Segment(ytid, start, end, labels, source))
    return segments, bad


def read_clip_list(path: Path, source: str, ontology: Ontology) -> tuple[list[Segment], list[BadRow]]:
    """A clip list in the mood study's format; each row's class name is resolved through the ontology."""
    segments, bad = [], []
    for line, row in _rows(path, " "):
        try:
            if len(row) != 5:
                raise ValueError(f"{len(row)} fields, expected 5 (YTID start end YTID_start \"X music\")")
            ytid, start, end = _times(*row[:3])
            cls = ontology.find(row[4])
            if cls is None:
                raise ValueError(f"class {row[4]!r} is not in the ontology")
        except ValueError as exc:
            bad.append(BadRow(source, line, str(exc)))
            continue
        segments.append(Segment(ytid, start, end, (cls.id,), source))
    return segments, bad
