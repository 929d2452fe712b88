"""Problems from one of reasoning-gym's procedural generators, scored by that generator's own scorer.

`task.reasoning_gym.dataset` names any registered generator and `task.reasoning_gym.config` its
settings. Each block is one `reasoning_gym.create_dataset(name, seed=<hash of seed and block
index>, size=block_size, **config)`, so any worker makes any block and the stream depends only on
the seed. The solution is `<think></think> <answer>{reference answer}</answer>`: reasoning-gym
0.1.25 entries carry no worked reasoning. The verifier passes the `<answer>` text to the
generator's `score_answer(answer, entry)` with the entry rebuilt from the sample's meta, which
holds it as JSON, and counts full credit only; the scorer's dataset object is built once per
(name, config) in each process.

Entries the answer format cannot score are dropped with a warning: those without a reference
answer (boxnet, graph_color, rubiks_cube: many answers are right), with a reference answer longer
than the format reads (game_of_life grids), with metadata that is not JSON, or whose reference
answer no longer scores 1 from the rebuilt entry (arc_agi and rearc compare tuples). A generator
that yields no usable entry in a block fails naming the reasons.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any

from rl.tasks.base import Sample, Task, register_task
from rl.tasks.config import ReasoningGymConfig
from rl.tasks.format import MAX_ANSWER_CHARS, extract_answer, format_solution

# Settings every block sets itself.
_RESERVED = ("seed", "size")
# reasoning-gym scorers parse model text themselves and some raise on text they cannot read
# (prime_factorization: ValueError, boxnet: TypeError, measured on 0.1.25): a wrong answer, not a
# data bug. An entry the scorer cannot use is caught earlier: its own reference answer scores 0.
_SCORER_ERRORS = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    IndexError,
    KeyError,
    RecursionError,
    SyntaxError,
    TypeError,
    ValueError,
)


def _registered() -> list[str]:
    from reasoning_gym.factory import DATASETS  # numpy, sympy and more: ~2 s, only where used

    return sorted(DATASETS)


def _create(name: str, config_json: str, seed: int, size: int) -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


@functools.lru_cache(maxsize=16)
def _scorer(name: str, config_json: str) -> Any:
    """The dataset object whose `score_answer` scores `name`'s problems, built once per process:
    some generators load data files or build tables when created."""
    return _create(name, config_json, seed=0, size=1)


def _config_json(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), sort_keys=True)


def check_generator(cfg: ReasoningGymConfig) -> None:
    """Fail at start, naming the key, on an unknown generator or settings it rejects."""
    names = _registered()
    if cfg.dataset not in names:
        close = difflib.get_close_matches(cfg.dataset, names, n=3, cutoff=0.5)
        raise ValueError(
            f"task.reasoning_gym.dataset={cfg.dataset!r} is not a reasoning-gym dataset"
            + (f"; did you mean {close}?" if close else "")
            + f" {len(names)} are registered, e.g. {names[:8]} (all: reasoning_gym.factory.DATASETS)"
        )
    reserved = [key for key in _RESERVED if key in cfg.config]
    if reserved:
        raise ValueError(
            f"task.reasoning_gym.config sets {reserved}; each block sets the seed and size itself "
            "(task.seed, task.block_size)"
        )
    try:
        _scorer(cfg.dataset, _config_json(cfg.config))
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(
            f"task.reasoning_gym.config={dict(cfg.config)} is not a valid config for {cfg.dataset!r}: {err}"
        ) from err


def block_seed(name: str, seed: int, index: int) -> int:
    """The generator seed of block `index`: a string hash (stable across processes), 31 bits because
    generators add the entry index to it and some seed numpy, which takes < 2**32."""
    return int(hashlib.sha256(f"reasoning_gym/{name}/{seed}/{index}".encode()).hexdigest()[:8], 16) >> 1


def score(answer: str, meta: Mapping[str, Any]) -> float:
    """The generator's score of `answer` against the entry stored in `meta`; 0.0 where the scorer
    cannot read the answer."""
    scorer, entry = _scorer(meta["dataset"], _config_json(meta["config"])), meta["entry"]
    try:
        return float(scorer.score_answer(answer, entry))
    except _SCORER_ERRORS:
        return 0.0


def to_sample(entry: Mapping[str, Any], cfg: ReasoningGymConfig) -> Sample | str:
    """The sample for one generated entry, or why the answer format cannot score it."""
    if entry["answer"] is None:
        return "without a reference answer (only the scorer can tell a right one)"
    answer = str(entry["answer"]).strip()
    if len(answer) > MAX_ANSWER_CHARS:
        return (
            f"whose reference answer is longer than the {MAX_ANSWER_CHARS} characters the answer format reads"
        )
    try:
        stored = json.loads(json.dumps({key: entry[key] for key in ("question", "answer", "metadata")}))
    except TypeError as err:
        return f"whose entry is not JSON-serialisable ({err})"
    meta = {"dataset": cfg.dataset, "config": json.loads(_config_json(cfg.config)), "entry": stored}
    if score(answer, meta) != 1.0:
        return "whose reference answer does not score 1 against the entry rebuilt from JSON"
    question = entry["question"]
    return Sample.create(
        task="reasoning_gym",
        key=f"{cfg.dataset}\x00{' '.join(question.split())}",
        prompt=question.strip(),
        solution=format_solution("", answer),
        answer=answer,
        meta=meta,
    )


@register_task("reasoning_gym")
class ReasoningGymTask(Task):
    def block(self, seed: int, index: int, size: int) -> list[Sample]:
        cfg = self.cfg.reasoning_gym
        data = _create(cfg.dataset, _config_json(cfg.config), block_seed(cfg.dataset, seed, index), size)
        made = [to_sample(data[i], cfg) for i in range(size)]
        dropped = Counter(reason for reason in made if isinstance(reason, str))
        samples = [sample for sample in made if isinstance(sample, Sample)]
        if size and not samples:
            raise ValueError(
                f"reasoning-gym dataset {cfg.dataset!r} (task.reasoning_gym) gave no entry the answer format "
                f"can score in block {index}: of {size}, {dict(dropped)}"
            )
        for reason in dropped:
            # One line per reason and process: the text repeats, and Python shows a warning once.
            warnings.warn(f"reasoning-gym dataset {cfg.dataset!r}: dropping entries {reason}", stacklevel=2)
        return samples

    @staticmethod
    def verify(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
        """1.0 when the generator's scorer gives full credit, else 0.0. Many generators inherit
        reasoning-gym's default scorer, which gives len(reference) / len(answer) to an answer that
        merely contains the reference: "-1" or "10" for 1 would score 0.5, a reward for wrong
        answers and a fraction in pass@1."""
        extracted = extract_answer(completion)
        return float(extracted is not None and score(extracted, meta) == 1.0)
