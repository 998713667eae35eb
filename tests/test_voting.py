"""The song-level voting and correctness rules on hand-made slice predictions."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluate import voting
from tasks.evaluate.scoring import interval

# 3 classes; clip 0: two votes for class 1, one for class 0; clip 1: a 1-1 tie between classes 0 and 2
# that class 2 wins on summed probability; clip 2: no slices at all.
PROB = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1],
                 [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])  # fmt: skip
ROW_CLIP = np.array([0, 0, 0, 1, 1])


def tally(weights: np.ndarray | None = None) -> voting.Tally:
    return voting.tally(PROB, ROW_CLIP, np.ones(5) if weights is None else weights, n_clips=3)


def test_majority_breaks_ties_by_summed_probability_and_reports_empty_songs() -> None:
    assert voting.majority(tally()).tolist() == [1, 2, voting.ABSTAIN]
    # equal votes and equal summed probability: the class listed first
    flat = voting.tally(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0, 0]), np.ones(2), 1)
    assert voting.majority(flat).tolist() == [0]


def test_vote_weights_can_turn_the_majority() -> None:
    # the class-0 slice weighs 3: it outvotes the two class-1 slices of clip 0
    assert voting.majority(tally(np.array([1, 1, 3, 1, 1.0]))).tolist()[0] == 0


def test_threshold_voting_abstains_below_the_share() -> None:
    t = tally()
    assert voting.vote_share(t) == pytest.approx([2 / 3, 0.5, 0.0])
    assert voting.threshold(t, 0.6).tolist() == [1, voting.ABSTAIN, voting.ABSTAIN]
    assert voting.threshold(t, 0.5).tolist() == [1, 2, voting.ABSTAIN]
    assert voting.threshold(t, 2 / 3).tolist()[0] == 1  # the share reaches the threshold exactly


def test_soft_voting_takes_the_highest_mean_probability() -> None:
    # clip 0: mean (0.3, 0.6, 0.1) -> 1; clip 1: mean (0.3, 0.1, 0.6) -> 2
    assert voting.soft(tally()).tolist() == [1, 2, voting.ABSTAIN]
    with pytest.raises(ValueError, match="unknown voting rule 'median'"):
        voting.decide(tally(), "median", 0.5)


def test_multi_label_songs_are_right_when_the_vote_is_among_their_labels() -> None:
    truth = np.array([[False, True, True], [True, False, False], [False, False, True]])  # {b, c}, {a}, {c}
    pred = np.array([2, 2, voting.ABSTAIN])
    assert voting.correct_any(pred, truth).tolist() == [True, False, False]
    # confusion matrices credit the voted label where it is among the song's labels, else its first label
    assert voting.effective_truth(pred, truth).tolist() == [2, 0, 2]


def test_rank_score_is_the_annotated_strength_of_the_voted_label() -> None:
    strength = np.array([[0.0, 0.9, 0.6], [0.2, np.nan, 0.4]])
    scores = voting.rank_scores(np.array([2, voting.ABSTAIN]), strength)
    assert scores[0] == pytest.approx(0.6) and np.isnan(scores[1])


def test_coverage_curve_trades_songs_for_accuracy() -> None:
    share = np.array([1.0, 0.8, 0.5, 0.4])
    hit = np.array([True, True, False, False])
    points = voting.coverage_curve(share, hit, np.array([0.0, 0.5, 0.9]))
    assert [(p["coverage"], p["accuracy"]) for p in points] == [(1.0, 0.5), (0.75, 2 / 3), (0.25, 1.0)]


def test_bootstrap_interval_is_seeded_and_brackets_the_accuracy() -> None:
    hits = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], bool)
    low, high = interval(hits, 1000, seed=3)
    assert (low, high) == interval(hits, 1000, seed=3)
    assert low < hits.mean() < high
    assert interval(np.ones(4, bool), 1000, 0) == (1.0, 1.0)
