"""Best-of-N test-time scaling: sample N completions per prompt, return the best n of them.

A scorer gives each of one prompt's N completions a score; the n highest are returned, ties broken
by mean token log-probability (the more confident first), then by sample order. Built in:
  majority_vote  self-consistency (Wang et al. 2023, arXiv:2203.11171): a completion scores the
                 number of samples whose extracted final answer equals its own; no answer scores 0.
  mean_logprob   OpenAI's `best_of`: the highest mean log-probability per token.
K2-Think picks its Best-of-N with a judge model; voting needs no second model and suits tasks with
one checkable final answer. Other scorers plug in by name (`register_scorer`) or by a
"package.module:function" path in `serve.best_of_scorer`.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Callable, Sequence

from serving.protocol import Completion

AnswerExtractor = Callable[[str], str | None]
# (one prompt's completions, the answer extractor) -> one score per completion; higher is better.
Scorer = Callable[[Sequence[Completion], AnswerExtractor], list[float]]

SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    def add(fn: Scorer) -> Scorer:
        if name in SCORERS:
            raise ValueError(f"Best-of-N scorer {name!r} is registered twice")
        SCORERS[name] = fn
        return fn

    return add


def mean_logprob(completion: Completion) -> float:
    lps = completion.logprobs or []
    return sum(lps) / len(lps) if lps else -math.inf


@register_scorer("majority_vote")
def majority_vote(completions: Sequence[Completion], extract: AnswerExtractor) -> list[float]:
    answers = [extract(c.text) for c in completions]
    votes = Counter(a for a in answers if a is not None)
    return [float(votes[a]) if a is not None else 0.0 for a in answers]


@register_scorer("mean_logprob")
def by_mean_logprob(completions: Sequence[Completion], extract: AnswerExtractor) -> list[float]:
    return [mean_logprob(c) for c in completions]


def select_best(
    completions: Sequence[Completion], n: int, scorer: Scorer, extract: AnswerExtractor
) -> list[Completion]:
    """The n best of one prompt's completions, best first."""
    scores = scorer(completions, extract)
    if len(scores) != len(completions):
        raise ValueError(f"Best-of-N scorer returned {len(scores)} scores for {len(completions)} completions")
    order = sorted(range(len(completions)), key=lambda i: (-scores[i], -mean_logprob(completions[i]), i))
    return [completions[i] for i in order[:n]]


def whole_text(text: str) -> str | None:
    """The answer extractor when none is configured: the whole completion, stripped (None if empty)."""
    return text.strip() or None


def load_callable(path: str, what: str) -> Callable:
    """Import "package.module:function"; `what` names the config key in errors."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what}={path!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what}={path!r} cannot be imported: {err}") from err
    if not callable(fn):
        raise ValueError(f"{what}={path!r} is not callable")
    return fn


def resolve_scorer(name: str) -> Scorer:
    """A registered scorer by name, else a "package.module:function" path."""
    if name in SCORERS:
        return SCORERS[name]
    if ":" not in name:
        raise ValueError(
            f"serve.best_of_scorer={name!r} is not one of {sorted(SCORERS)} nor a 'module:function'"
        )
    return load_callable(name, "serve.best_of_scorer")
