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


def track(items: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """Yield items; tqdm on a tty, otherwise a log line every LOG_EVERY_S and at the end."""
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit="item", dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            of = f"/{total}" if total else ""
            log.info("%s: %d%s items, %.1f/s", desc, done, of, done / max(now - start, 1e-9))
    log.info("%s: %d items in %.1f s", desc, done, time.monotonic() - start)


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
