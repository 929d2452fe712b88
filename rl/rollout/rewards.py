"""Verifiable rewards: scored by the task verifiers, never by a reward model.

A reward function is any callable `(completion: Scored) -> float`, named in the config by Hydra
`_target_` (e.g. `{_target_: rl.rollout.rewards.Correctness}`), so users plug their own in without
touching this package. `RewardScorer` sums them, each call under a timeout.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rl.tasks import verify
from rl.tasks.format import is_well_formed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """What a reward function sees: one sampled completion and its problem."""

    text: str
    num_tokens: int
    max_tokens: int
    task: str
    answer: str
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class Correctness:
    """`weight` when the task verifier accepts the final answer, else 0."""

    weight: float = 1.0

    def __call__(self, c: Scored) -> float:
        return self.weight * verify(c.task, c.text, c.answer, c.meta)


@dataclass(frozen=True)
class Format:
    """`weight` for a well-formed `<think>...</think> <answer>...</answer>` completion."""

    weight: float = 0.1

    def __call__(self, c: Scored) -> float:
        return self.weight if is_well_formed(c.text) else 0.0


@dataclass(frozen=True)
class LengthPenalty:
    """-weight * (tokens / max_tokens) on correct completions: the shorter correct chain wins.

    Only correct answers are penalised, so the model is never pushed towards short wrong ones.
    """

    weight: float = 0.1

    def __call__(self, c: Scored) -> float:
        if not verify(c.task, c.text, c.answer, c.meta):
            return 0.0
        return -self.weight * c.num_tokens / max(1, c.max_tokens)


def instantiate_rewards(specs: Sequence[Mapping[str, Any]]) -> list[Callable[[Scored], float]]:
    """Build reward callables from `{_target_: ..., **kwargs}` specs (Hydra's instantiate)."""
    from hydra.utils import instantiate

    if not specs:
        raise ValueError(
            "rlvr.rewards is empty; give at least one, e.g. [{_target_: rl.rollout.rewards.Correctness}]"
        )
    out = []
    for i, spec in enumerate(specs):
        if "_target_" not in spec:
            raise ValueError(f"rlvr.rewards[{i}]={dict(spec)} has no _target_ naming the reward callable")
        fn = instantiate(dict(spec))
        if not callable(fn):
            raise TypeError(f"rlvr.rewards[{i}]: {spec['_target_']} built {fn!r}, which is not callable")
        out.append(fn)
    return out


class RewardScorer:
    """Sums the reward functions for each completion, each call bounded by `timeout_s`.

    A call that overruns scores 0 and is counted in `timeouts`. Python cannot kill a thread, so a
    hung call keeps its thread; the scorer moves to a fresh pool so the next calls still run.
    """

    def __init__(self, fns: Sequence[Callable[[Scored], float]], timeout_s: float, threads: int = 4):
        self.fns = list(fns)
        self.timeout_s = timeout_s
        self.threads = threads
        self.timeouts = 0
        self.errors = 0
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="reward")

    def score(self, completions: Sequence[Scored]) -> list[float]:
        futures = [[self._pool.submit(fn, c) for fn in self.fns] for c in completions]
        return [sum(self._result(f) for f in row) for row in futures]

    def _result(self, future: cf.Future) -> float:
        try:
            return float(future.result(timeout=self.timeout_s))
        except cf.TimeoutError:
            self.timeouts += 1
            log.warning("a reward call ran past %.1fs; scored 0", self.timeout_s)
            self._pool.shutdown(wait=False, cancel_futures=False)
            self._pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="reward")
            return 0.0
        except Exception:  # a broken user reward must not take the rollout worker down
            self.errors += 1
            log.exception("a reward call raised; scored 0")
            return 0.0


def scored(text: str, num_tokens: int, max_tokens: int, row: Mapping[str, Any]) -> Scored:
    """A Scored from a data-stage row (columns task, answer, meta as JSON)."""
    meta = row["meta"]
    return Scored(
        text=text,
        num_tokens=num_tokens,
        max_tokens=max_tokens,
        task=row["task"],
        answer=row["answer"],
        meta=json.loads(meta) if isinstance(meta, str) else meta,
    )
