"""Progress for long loops: a bar on a terminal, periodic log lines in Airflow task logs."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("tasks")

LOG_EVERY_S = 10.0


class Progress:
    """Counts work done; tqdm on a tty, otherwise a log line every LOG_EVERY_S and at close."""

    def __init__(self, total: int | None, desc: str, unit: str = "item") -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) if sys.stderr.isatty() else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s %ss, %.1f/s", self.desc, self.done, of, self.unit, self.done / (now - self.start))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        log.info("%s: %d %ss in %.1f s", self.desc, self.done, self.unit, time.monotonic() - self.start)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """Yield items while reporting progress on them."""
    with Progress(total, desc) as progress:
        for item in items:
            yield item
            progress.update()


class Tally:
    """Counts outcomes of a loop and renders the one-line summary every stage ends with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    def add(self, outcome: str, n: int = 1, reason: str | None = None) -> None:
        self.counts[outcome] += n
        if reason:
            self.reasons[reason] += n

    def summary(self) -> str:
        parts = [f"{k} {self.counts.get(k, 0)}" for k in ("done", "skipped", "failed")]
        line = f"{self.name}: " + " / ".join(parts)
        if self.reasons:
            line += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items())) + ")"
        return line
