"""Scores of one model on one test set: every voting rule, the correctness rules, intervals, per-class scores.

Accuracy follows the spectrogram study: a song is right when its predicted label is among its labels.
Its 95% interval is a seeded percentile bootstrap over songs. Songs without slices get no vote: they
count as wrong in the majority and soft accuracies, as unlabelled in threshold voting's coverage (its
accuracy is over the songs it labels), and not at all in the single-label accuracy, the rank-aware
score (the mean annotated strength, CAL500's soft annotation, of the voted label) and the per-class
scores. Chance is a uniform guess's accuracy under the same rule (|labels| / K per song).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import bootstrap
from sklearn.metrics import precision_recall_fscore_support

from tasks.evaluate import voting
from tasks.evaluate.testsets import TestSet


@dataclass
class Outcome:
    """One test set's predictions and scores."""

    test: TestSet
    prob: np.ndarray  # rows x classes
    row_clip: np.ndarray
    weights: np.ndarray
    decisions: dict[str, np.ndarray]  # rule -> class per clip (ABSTAIN where none)
    share: np.ndarray  # majority label's share of each clip's votes
    truth: np.ndarray  # one true class per clip for confusion matrices (voting.effective_truth)
    metrics: dict[str, Any]
    per_class: pd.DataFrame
    curve: list[dict[str, float]]


def interval(hits: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of 0/1 hits (seeded)."""
    if len(hits) == 0:
        return (float("nan"), float("nan"))
    if hits.min() == hits.max():  # every resample gives the same mean
        return (float(hits[0]), float(hits[0]))
    result = bootstrap((hits.astype(float),), np.mean, n_resamples=resamples, confidence_level=0.95,
                       method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def score(test: TestSet, prob: np.ndarray, row_clip: np.ndarray, weights: np.ndarray, classes: list[str],
          threshold: float, curve_step: float, resamples: int, seed: int) -> Outcome:  # fmt: skip
    n_clips, n_without = test.data.n_clips, len(test.without_slices)
    t = voting.tally(prob, row_clip, weights, n_clips)
    decisions = {rule: voting.decide(t, rule, threshold) for rule in voting.RULES}
    share = voting.vote_share(t)
    total = n_clips + n_without
    unvoted = np.zeros(n_without, bool)  # songs without slices: never right, never labelled
    metrics: dict[str, Any] = {"songs": total, "songs_without_slices": n_without,
                               "songs_without_shared_label": len(test.without_shared_label),
                               "slices": len(row_clip)}  # fmt: skip
    for rule in ("majority", "soft"):
        hits = np.concatenate([voting.correct_any(decisions[rule], test.truth), unvoted])
        low, high = interval(hits, resamples, seed)
        metrics[rule] = {"accuracy": float(hits.mean()), "ci95_low": low, "ci95_high": high, "correct": int(hits.sum())}
    labelled = decisions["threshold"] != voting.ABSTAIN
    hits = voting.correct_any(decisions["threshold"], test.truth)[labelled]
    low, high = interval(hits, resamples, seed)
    metrics["threshold"] = {"threshold": threshold, "coverage": float(labelled.sum() / total),
                            "accuracy": float(hits.mean()) if len(hits) else float("nan"), "ci95_low": low,
                            "ci95_high": high, "songs_labelled": int(labelled.sum())}  # fmt: skip
    majority_hits = voting.correct_any(decisions["majority"], test.truth)
    single = test.truth.sum(1) == 1
    metrics["single_label"] = {"songs": int(single.sum()),
                               "accuracy": float(majority_hits[single].mean()) if single.any() else float("nan")}
    strengths = voting.rank_scores(decisions["majority"], test.strength)
    annotated = np.isfinite(strengths)
    metrics["rank_score"] = float(strengths[annotated].mean()) if annotated.any() else None
    carriers = test.truth.sum(0)
    metrics["baseline_most_common_label"] = classes[int(carriers.argmax())]
    metrics["baseline_accuracy"] = float(carriers.max() / total)
    # a song is right on any of its labels: a uniform guess hits it with |labels| / K
    metrics["chance"] = float((test.truth.sum(1) / len(classes)).sum() / total)
    truth = voting.effective_truth(decisions["majority"], test.truth)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, decisions["majority"], labels=np.arange(len(classes)), zero_division=0)
    per_class = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                              "support": support})  # fmt: skip
    thresholds = np.round(np.arange(0.0, 1.0 + 1e-9, curve_step), 6)
    # the same denominator as the threshold rule's coverage: songs without slices are never labelled
    curve = voting.coverage_curve(np.concatenate([share, np.full(n_without, -1.0)]),
                                  np.concatenate([majority_hits, unvoted]), thresholds)  # fmt: skip
    return Outcome(test, prob, row_clip, weights, decisions, share, truth, metrics, per_class, curve)


def songs_frame(outcome: Outcome, classes: list[str]) -> pd.DataFrame:
    """One row per song: its labels, votes and each rule's decision."""
    test = outcome.test

    def name(k: int) -> str | None:
        return None if k == voting.ABSTAIN else classes[k]

    rows = [{"test_set": test.key, "clip_id": clip, "labels": [classes[k] for k in np.flatnonzero(test.truth[c])],
             "stored_labels": test.data.clip_tags[c], "slices": int((outcome.row_clip == c).sum()),
             "vote_share": float(outcome.share[c]),
             **{rule: name(int(outcome.decisions[rule][c])) for rule in voting.RULES},
             "correct": bool(voting.correct_any(outcome.decisions["majority"][c:c + 1], test.truth[c:c + 1])[0]),
             "note": ""} for c, clip in enumerate(test.data.clip_ids)]  # fmt: skip
    rows += [{"test_set": test.key, "clip_id": e["clip_id"], "labels": [], "stored_labels": [], "slices": 0,
              "vote_share": 0.0, **dict.fromkeys(voting.RULES), "correct": False,
              "note": f"no slices: {e['reason']}"} for e in test.without_slices]  # fmt: skip
    return pd.DataFrame(rows)


def predictions_frame(outcome: Outcome, classes: list[str], sample_rate: int) -> pd.DataFrame:
    """One row per slice (or per clip for whole-clip models): traceable to the clip and its time range."""
    data = outcome.test.data
    per_clip_rows = len(outcome.row_clip) == data.n_clips and len(data.row_start) != len(outcome.row_clip)
    start = np.zeros(len(outcome.row_clip)) if per_clip_rows else data.row_start / sample_rate
    end = np.full(len(outcome.row_clip), np.nan) if per_clip_rows else data.row_end / sample_rate
    order = np.zeros(len(outcome.row_clip), np.int64)
    for c in np.unique(outcome.row_clip):
        rows = np.flatnonzero(outcome.row_clip == c)
        order[rows] = np.arange(len(rows))
    frame = pd.DataFrame({"test_set": outcome.test.key, "clip_id": [data.clip_ids[c] for c in outcome.row_clip],
                          "slice": order, "start_s": start, "end_s": end, "weight": outcome.weights,
                          "predicted": [classes[k] for k in outcome.prob.argmax(1)]})  # fmt: skip
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = outcome.prob[:, k]
    return frame
