"""Held-out scores: standard errors by hand, paired gains, and the file a stage keeps them in."""

from __future__ import annotations

import math

import pytest

from rl.evaluate import EvalScores, binomial_se, gain_metrics, paired_difference


def test_binomial_standard_error_by_hand():
    assert binomial_se(0.2, 100) == pytest.approx(0.04)  # sqrt(0.2 * 0.8 / 100)
    assert binomial_se(0.0, 50) == 0.0


def test_paired_difference_by_hand():
    # d = [1, 1, 0, 0, 0]: mean 0.4, sample variance (2 * 0.36 + 3 * 0.16) / 4 = 0.3, se sqrt(0.3 / 5)
    mean, se = paired_difference([0, 0, 0, 0, 1], [1, 1, 0, 0, 1])
    assert mean == pytest.approx(0.4) and se == pytest.approx(math.sqrt(0.06))
    # Two models that swap one right answer each: no gain, se sqrt((2/3) / 4)
    mean, se = paired_difference([1, 0, 0, 1], [1, 1, 0, 0])
    assert mean == 0.0 and se == pytest.approx(math.sqrt(1 / 6))
    with pytest.raises(ValueError, match="same n >= 2"):
        paired_difference([1, 0], [1])


def _scores(values, sha="s", strict=None):
    return EvalScores(prompts_sha=sha, scores=values, strict_scores=strict, response_tokens=[3] * len(values))


def test_gain_is_paired_on_the_same_prompts_only():
    gain = gain_metrics(_scores([0, 0, 0, 0, 1]), _scores([1, 1, 0, 0, 1]))
    assert gain == pytest.approx(
        {
            "start_pass@1": 0.2,
            "start_pass@1_se": math.sqrt(0.2 * 0.8 / 5),
            "pass@1_gain": 0.4,
            "pass@1_gain_se": math.sqrt(0.06),
        }
    )
    # One prompt: a gain, but no standard error to give (and no failure after a stage's training).
    assert gain_metrics(_scores([0]), _scores([1])) == {"start_pass@1": 0.0, "pass@1_gain": 1.0}
    with pytest.raises(ValueError, match="other eval prompts"):
        gain_metrics(_scores([0, 1]), _scores([1, 1], sha="t"))


def test_scores_round_trip_and_report_the_strict_figure_beside_the_lenient_one(tmp_path):
    scores = _scores([1, 0, 1, 1], strict=[0, 0, 1, 0])
    scores.save(tmp_path / "s.json")
    assert EvalScores.load(tmp_path / "s.json") == scores
    assert scores.metrics() == pytest.approx(
        {
            "pass@1": 0.75,
            "pass@1_se": math.sqrt(0.75 * 0.25 / 4),
            "pass@1_strict": 0.25,
            "eval_prompts": 4.0,
            "mean_response_tokens": 3.0,
        }
    )
    assert "pass@1_strict" not in _scores([1, 0]).metrics()


def test_an_empty_eval_split_fails_naming_what_to_set(tmp_path):
    from datasets import Dataset

    from rl.config import EvalConfig
    from rl.evaluate import eval_split

    Dataset.from_dict({"prompt": ["What is 2 + 2?"]}).save_to_disk(str(tmp_path / "eval"))
    assert len(eval_split(tmp_path / "eval", EvalConfig())) == 1
    with pytest.raises(ValueError, match="set task.eval_prompts and eval.limit >= 1"):
        eval_split(tmp_path / "eval", EvalConfig(limit=0))
