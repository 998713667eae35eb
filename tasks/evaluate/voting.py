"""Song-level decisions from slice predictions, and the rules that say whether a decision is right.

Pure functions over arrays: `prob` is rows x classes (each row a slice, or one row per clip for
models that see a whole clip), `row_clip` the clip index of each row, `weights` each row's vote
(its share of real audio, or 1). A clip with no rows gets the prediction ABSTAIN (-1) from every
rule, so it is reported rather than dropped.

Majority (the spectrogram study's): each slice votes for its top class with its weight, the class
with the most votes labels the song. A tie goes to the tied class with the larger summed
probability, and a tie on that too to the class listed first in the vocabulary.
Threshold (the study's proposed improvement): the majority label only when its share of the votes
reaches the threshold; otherwise the song is not labelled (abstains).
Soft: the class of highest mean probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ABSTAIN = -1
RULES = ("majority", "threshold", "soft")


@dataclass(frozen=True)
class Tally:
    """Per clip: weighted votes and summed probability per class, and how many rows voted."""

    votes: np.ndarray  # clips x classes
    prob_sum: np.ndarray  # clips x classes
    rows: np.ndarray  # rows per clip

    @property
    def empty(self) -> np.ndarray:
        return self.rows == 0


def row_weights(weighting: str, real_share: np.ndarray, n_rows: int) -> np.ndarray:
    """Each row's vote, as in training: a slice by its share of real audio under `real_share` weighting; rows of a
    whole-clip model (n_rows differs from the slices') one vote each."""
    if weighting == "real_share" and n_rows == len(real_share):
        return np.maximum(real_share, 1e-3)
    return np.ones(n_rows)


def tally(prob: np.ndarray, row_clip: np.ndarray, weights: np.ndarray, n_clips: int) -> Tally:
    n_classes = prob.shape[1]
    votes = np.zeros((n_clips, n_classes))
    np.add.at(votes, (row_clip, prob.argmax(1)), weights)
    prob_sum = np.zeros((n_clips, n_classes))
    np.add.at(prob_sum, row_clip, prob)
    return Tally(votes, prob_sum, np.bincount(row_clip, minlength=n_clips))


def majority(t: Tally) -> np.ndarray:
    tied = np.isclose(t.votes, t.votes.max(1, keepdims=True))
    # argmax takes the first of equal sums: the class listed first in the vocabulary
    pred = np.where(tied, t.prob_sum, -np.inf).argmax(1)
    return np.where(t.empty, ABSTAIN, pred)


def vote_share(t: Tally) -> np.ndarray:
    """The share of each clip's votes that its majority label won (0 for a clip with no rows)."""
    total = t.votes.sum(1)
    top = t.votes[np.arange(len(total)), np.maximum(majority(t), 0)]
    return np.divide(top, total, out=np.zeros_like(total), where=total > 0)


def threshold(t: Tally, share: float) -> np.ndarray:
    pred = majority(t)
    return np.where(vote_share(t) >= share - 1e-12, pred, ABSTAIN)


def soft(t: Tally) -> np.ndarray:
    mean = t.prob_sum / np.maximum(t.rows, 1)[:, None]
    return np.where(t.empty, ABSTAIN, mean.argmax(1))


def decide(t: Tally, rule: str, share: float) -> np.ndarray:
    if rule == "majority":
        return majority(t)
    if rule == "threshold":
        return threshold(t, share)
    if rule == "soft":
        return soft(t)
    raise ValueError(f"unknown voting rule {rule!r}; rules: {', '.join(RULES)}")


def correct_any(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The study's rule: right when the predicted label is among the song's labels (abstaining is not)."""
    answered = pred != ABSTAIN
    out = np.zeros(len(pred), bool)
    out[answered] = truth[np.flatnonzero(answered), pred[answered]]
    return out


def rank_scores(pred: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """The rank-aware score: the song's annotated strength (0-1) of the predicted label; NaN when abstaining
    or where the annotation gives no strength."""
    out = np.full(len(pred), np.nan)
    answered = pred != ABSTAIN
    out[answered] = strength[np.flatnonzero(answered), pred[answered]]
    return out


def effective_truth(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One true class per clip for confusion matrices and per-class scores: the predicted label where it is
    among the clip's labels (the study counts it right), otherwise the clip's first label in vocabulary order."""
    first = truth.argmax(1)
    hit = correct_any(pred, truth)
    return np.where(hit, pred, first)


def coverage_curve(share: np.ndarray, hit: np.ndarray, thresholds: np.ndarray) -> list[dict[str, float]]:
    """Per threshold: the share of songs that get a label, and the accuracy over those songs."""
    points = []
    for t in thresholds:
        answered = share >= t - 1e-12
        n = int(answered.sum())
        points.append({"threshold": float(t), "coverage": n / len(share) if len(share) else 0.0,
                       "accuracy": float(hit[answered].mean()) if n else float("nan"), "songs": n})  # fmt: skip
    return points
