"""Best-of-N selection: majority vote over extracted answers, the log-prob scorer, tie-breaks, plug-ins."""

from __future__ import annotations

import pytest

from rl.tasks.format import extract_answer, format_solution
from serving.best_of_n import SCORERS, register_scorer, resolve_scorer, select_best
from serving.protocol import Completion, RequestMetrics


def _completion(i: int, text: str, logprobs: list[float]) -> Completion:
    metrics = RequestMetrics(0.0, 0.0, 1, len(logprobs), len(logprobs))
    return Completion(0, i, [1], list(range(len(logprobs))), text, logprobs, "stop", metrics)


def _answers(*answers: str | None) -> list[Completion]:
    texts = [format_solution("work", a) if a is not None else "no answer tags" for a in answers]
    return [_completion(i, t, [-1.0]) for i, t in enumerate(texts)]


def test_majority_vote_returns_a_sample_with_the_most_common_answer():
    samples = _answers("12", "7", "12", None, "7", "12")
    (best,) = select_best(samples, 1, SCORERS["majority_vote"], extract_answer)
    assert extract_answer(best.text) == "12" and best.sample_index == 0
    assert SCORERS["majority_vote"](samples, extract_answer) == [3.0, 2.0, 3.0, 0.0, 2.0, 3.0]


def test_majority_ties_go_to_the_more_confident_sample():
    samples = _answers("1", "2", "2", "1")
    samples[3].logprobs = [-0.1]  # the most confident of the "1"s and of all
    ranked = select_best(samples, 4, SCORERS["majority_vote"], extract_answer)
    assert [c.sample_index for c in ranked] == [3, 0, 1, 2]


def test_mean_logprob_scorer_is_openais_best_of():
    samples = [_completion(0, "a", [-2.0, -2.0]), _completion(1, "b", [-0.5, -1.5]), _completion(2, "c", [])]
    assert [c.text for c in select_best(samples, 2, SCORERS["mean_logprob"], extract_answer)] == ["b", "a"]


def test_scorers_plug_in_by_name_or_dotted_path():
    @register_scorer("longest_for_test")
    def longest(completions, extract):
        return [float(len(c.text)) for c in completions]

    samples = [_completion(0, "ab", [-1.0]), _completion(1, "abcd", [-1.0])]
    assert select_best(samples, 1, resolve_scorer("longest_for_test"), extract_answer)[0].text == "abcd"
    assert resolve_scorer("serving.best_of_n:by_mean_logprob") is SCORERS["mean_logprob"]
    with pytest.raises(ValueError, match="best_of_scorer='nope'"):
        resolve_scorer("nope")
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_scorer("serving.best_of_n:missing")
    with pytest.raises(ValueError, match="register"):
        register_scorer("majority_vote")(longest)
