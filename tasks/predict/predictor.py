"""A trained model asked about audio: per file, the mood by the song-level vote, the class probabilities and
every slice's (or window's) probabilities. Files that cannot be predicted get an error naming them; the
others go on. The CLI, the batch DAG and the served MLflow model all call `Predictor.predict`."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import torch

from tasks.audio import AudioError
from tasks.errors import PipelineError
from tasks.evaluate import voting
from tasks.evaluate.model import TrainedModel, predict
from tasks.features.stage import WORKERS, resolve_device, torch_threads
from tasks.fetch import redact_text
from tasks.predict.inputs import Audio
from tasks.predict.recipe import Recipe, Rows, clip_data, recipe_for

log = logging.getLogger("tasks")
T = TypeVar("T")
# Files whose rows go through the model together: batches the net's work without holding many songs.
BATCH_FILES = 8


@dataclass
class Prediction:
    file: str
    mood: str | None  # None: an error, or threshold voting abstained
    vote_share: float  # the share of the weighted slice votes the mood won (abstaining: the majority label's)
    probabilities: dict[str, float]  # mean over the rows
    seconds: float
    slices: list[dict[str, Any]] = field(default_factory=list)  # start_s, end_s, real_share, one key per class
    error: str | None = None
    reason: str | None = None  # the error's class: decode, silent, too_short, too_large, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def in_order(pool: ThreadPoolExecutor, fn: Callable[[Any], T], sources: Iterable[tuple[str, Any]],
             depth: int) -> Iterator[tuple[str, T]]:  # fmt: skip
    """(name, fn(arg)) for each (name, arg), in order, with at most `depth` running ahead: memory stays bounded
    by a few files' audio whatever the folder holds."""
    window: deque[tuple[str, Future[T]]] = deque()
    for name, arg in sources:
        window.append((name, pool.submit(fn, arg)))
        if len(window) > depth:
            first, future = window.popleft()
            yield first, future.result()
    while window:
        first, future = window.popleft()
        yield first, future.result()


class Predictor:
    """A model, its card's feature recipe and a voting rule."""

    def __init__(self, model: TrainedModel, root: Path, rule: str = "majority", threshold: float = 0.6,
                 min_seconds: float | None = None, device: str = "cpu") -> None:  # fmt: skip
        if rule not in voting.RULES:
            raise ValueError(f"unknown voting rule {rule!r}; rules: {', '.join(voting.RULES)}")
        self.model = model
        self.rule, self.threshold = rule, threshold
        self.device = resolve_device(device, "predict")
        self.recipe: Recipe = recipe_for(model.card, model.source, root, min_seconds, self.device)
        self.weighting = model.card.get("vote_weighting", "real_share")
        if self.recipe.features == "slices" and isinstance(model.model, torch.nn.Module):
            # Convolutions on channels-last weights run ~1.9x faster on the CPU (benchmarks/predict.py), and the
            # probabilities move by ~1e-8; training does the same on CUDA (tasks.train.loop.to_device).
            model.model.to(memory_format=torch.channels_last)

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    def describe(self) -> str:
        random = " [RANDOM VGGish weights: these moods mean nothing]" if self.model.random_weights else ""
        version = f" v{self.model.version}" if self.model.version else ""
        return (f"{self.model.source}{version}: {self.model.arch} on {self.model.card['dataset']}, "
                f"classes {self.classes}; {self.recipe.describe()}; {self.rule} vote{random}")  # fmt: skip

    def predict(self, sources: Iterable[tuple[str, Callable[[], Audio]]], rule: str | None = None,
                threshold: float | None = None) -> Iterator[Prediction]:  # fmt: skip
        """One Prediction per (name, loader), in order, by the predictor's vote or the `rule` given. Files are
        decoded and featurized on WORKERS threads with one torch thread each, as the features stage does
        (decoding, resampling and the STFT release the GIL); the rows of BATCH_FILES files go through the model
        at once."""
        vote = (rule or self.rule, self.threshold if threshold is None else threshold)
        if vote[0] not in voting.RULES:
            raise ValueError(f"unknown voting rule {vote[0]!r}; rules: {', '.join(voting.RULES)}")
        pending: list[tuple[str, Rows]] = []
        with torch_threads(1), ThreadPoolExecutor(WORKERS) as pool:
            for name, rows in in_order(pool, self.rows_of, sources, 2 * WORKERS):
                if isinstance(rows, AudioError):
                    yield from self.flush(pending, *vote)  # keeps the output in input order
                    pending = []
                    yield self.failure(name, rows)
                    continue
                pending.append((name, rows))
                if len(pending) >= BATCH_FILES:
                    yield from self.flush(pending, *vote)
                    pending = []
            yield from self.flush(pending, *vote)

    def rows_of(self, load: Callable[[], Audio]) -> Rows | AudioError:
        try:
            return self.recipe.rows(*load())
        except AudioError as exc:
            return exc
        except (PipelineError, OSError, ValueError, MemoryError, pa.ArrowException) as exc:
            # A store being rewritten, a disk or resampler error: this file fails, the batch goes on.
            log.exception("predict: unexpected error")
            return AudioError("error", f"{exc.__class__.__name__}: {redact_text(str(exc))[:300]}")

    def failure(self, name: str, exc: AudioError) -> Prediction:
        message = f"{name}: {exc}"
        log.warning("predict: %s (%s)", message, exc.reason)
        return Prediction(name, None, 0.0, {}, 0.0, error=message, reason=exc.reason)

    def flush(self, pending: list[tuple[str, Rows]], rule: str, threshold: float) -> list[Prediction]:
        if not pending:
            return []
        rows = [r for _, r in pending]
        data = clip_data(rows, self.recipe, self.classes, {})
        with torch.inference_mode():
            prob, row_clip = predict(self.model, data, self.device)
        per_row = len(prob) == len(data.real_share)
        weights = voting.row_weights(self.weighting, data.real_share, len(prob))
        tally = voting.tally(prob, row_clip, weights, len(rows))
        decided = voting.decide(tally, rule, threshold)
        # The share of the weighted slice votes the mood won (a soft vote's mood may not be the majority label);
        # where the threshold vote abstains, the majority label's share, which fell short.
        total = tally.votes.sum(1)
        won = np.divide(tally.votes[np.arange(len(rows)), np.maximum(decided, 0)], total, out=np.zeros_like(total),
                        where=total > 0)  # fmt: skip
        shares = np.where(decided == voting.ABSTAIN, voting.vote_share(tally), won)
        mean = tally.prob_sum / np.maximum(tally.rows, 1)[:, None]
        rate = self.recipe.sample_rate
        out = []
        for i, (name, r) in enumerate(pending):
            mine = np.flatnonzero(row_clip == i)
            slices = [{"start_s": round(float(r.start[k]) / rate, 3) if per_row else 0.0,
                       "end_s": round(float(r.end[k]) / rate, 3) if per_row else r.seconds,
                       "real_share": round(float(r.real_share[k]), 4) if per_row else 1.0,
                       **{c: float(prob[row, j]) for j, c in enumerate(self.classes)}}
                      for k, row in enumerate(mine)]  # fmt: skip
            mood = None if decided[i] == voting.ABSTAIN else self.classes[decided[i]]
            probabilities = {c: float(mean[i, j]) for j, c in enumerate(self.classes)}
            out.append(Prediction(name, mood, float(shares[i]), probabilities, r.seconds, slices))
        return out
