"""What a task is (a problem source plus a verifier), the task registry and the `verify` entry point."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rl.tasks.config import TaskConfig
from rl.tasks.format import ANSWER_FORMAT_KEY, as_tagged


@dataclass
class Sample:
    # "<task>-<16 hex digits of sha256(canonical key)>": the same problem always has the same id.
    id: str
    # Registered task name; selects the verifier.
    task: str
    # The question as a user asks it, without chat markup (see `training.tokenizer.render_prompt`).
    prompt: str
    # The target completion in the answer format `<think>…</think> <answer>…</answer>`.
    solution: str
    # The reference final answer the verifier compares against.
    answer: str
    # JSON-serialisable data the verifier or an analysis needs (e.g. countdown's numbers).
    meta: dict[str, Any] = field(default_factory=dict)
    # The turns before the answer when there is more than the one user question `prompt`: OpenAI-
    # style `{"role", "content"}` dicts (a system turn, earlier user/assistant turns), ending with
    # the user turn whose content is `prompt`. None: the conversation is just `prompt`.
    messages: list[dict[str, str]] | None = None

    @classmethod
    def create(
        cls,
        task: str,
        key: str,
        prompt: str,
        solution: str,
        answer: str,
        meta: dict[str, Any] | None = None,
        messages: list[dict[str, str]] | None = None,
    ) -> Sample:
        """A sample whose id derives from `key`, the problem's canonical form (equal problems, equal keys)."""
        digest = hashlib.sha256(f"{task}\x00{key}".encode()).hexdigest()[:16]
        return cls(f"{task}-{digest}", task, prompt, solution, answer, dict(meta or {}), messages)


class Task:
    """A problem source and its verifier; subclasses register with `@register_task(name)`.

    Generated tasks implement `sample(rng)`. A task that reads a fixed set of problems sets
    `finite = True` and overrides `block`, returning an empty list once it runs out.
    """

    name: ClassVar[str] = ""
    finite: ClassVar[bool] = False

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg

    def block(self, seed: int, index: int, size: int) -> list[Sample]:
        """Problems `index*size` to `(index+1)*size - 1` of this seed's stream.

        Each block has its own RNG, seeded by a string (stable across processes, unlike `hash`),
        so any worker can make any block and the stream does not depend on how blocks are spread.
        """
        rng = random.Random(f"{self.name}/{seed}/{index}")
        return [self.sample(rng) for _ in range(size)]

    def sample(self, rng: random.Random) -> Sample:
        raise NotImplementedError(f"task {self.name!r} generates no problems; it must override block()")

    @staticmethod
    def verify(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
        """Reward in [0, 1] for `completion`; never raises on any completion text."""
        raise NotImplementedError


_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make the task available as `name` in `task.tasks` and to `verify`."""

    def add(cls: type[Task]) -> type[Task]:
        if name in _TASKS:
            raise ValueError(
                f"task {name!r} is registered twice ({_TASKS[name].__qualname__}, {cls.__qualname__})"
            )
        cls.name = name
        _TASKS[name] = cls
        return cls

    return add


def get_task(name: str) -> type[Task]:
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {available_tasks()}")
    return _TASKS[name]


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def verify(task: str, completion: str, answer: str, meta: Mapping[str, Any] | str | None = None) -> float:
    """Reward of `completion` for a problem of `task`: 1.0 correct, 0.0 otherwise.

    `meta` may be the dict or the JSON string stored in the datasets. Malformed completions score
    0.0; only an unknown task name or unreadable `meta` (a data bug, not a model error) raises.
    """
    if isinstance(meta, str):
        meta = json.loads(meta)
    meta = meta or {}
    completion = as_tagged(completion, meta.get(ANSWER_FORMAT_KEY, "tags"))
    return get_task(task).verify(completion, answer, meta)


def generate_block(cfg: TaskConfig, task: str, seed: int, index: int, size: int) -> list[Sample]:
    """Block `index` of `task`'s problem stream: the unit of work the data stage sends to Ray.
    A run's `task.answer_format` other than tags travels in each sample's meta to every verifier."""
    samples = get_task(task)(cfg).block(seed, index, size)
    if cfg.answer_format != "tags":
        for sample in samples:
            sample.meta[ANSWER_FORMAT_KEY] = cfg.answer_format
    return samples
