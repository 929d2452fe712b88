"""The task configs: which problems the data stage makes, how many, how hard.

Hydra's root schema types `task` as `TaskConfig`; the YAML files in `conf/task/` only override fields.
Lists, not dicts, hold the task mixture because OmegaConf merges dicts key by key: a YAML that set
`tasks: {countdown: 1.0}` over a default `{arithmetic: 1.0}` would silently train on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rl.tasks.format import ANSWER_FORMATS

# Data shipped inside the package (rl/tasks/data/), found wherever the package is installed.
DATA_DIR = Path(__file__).resolve().parent / "data"

# `${task_data:gsm8k/train.jsonl}` in conf/task/*.yaml: a shipped file's absolute path. A plain
# relative path would be resolved against the user's working directory (orchestration/paths.py).
if not OmegaConf.has_resolver("task_data"):
    OmegaConf.register_new_resolver("task_data", lambda relative: str(DATA_DIR / relative))


def _check_range(name: str, value: list[int], low: int) -> None:
    if len(value) != 2 or value[0] > value[1] or value[0] < low:
        raise ValueError(
            f"{name} must be an inclusive range [min, max] with {low} <= min <= max; got {value}"
        )


@dataclass
class ArithmeticConfig:
    # Inclusive [min, max] number of binary operations per problem; each one is one step of the
    # worked solution, so this is the reasoning depth.
    num_ops: list[int] = field(default_factory=lambda: [2, 3])
    # Inclusive [min, max] of every operand.
    operands: list[int] = field(default_factory=lambda: [1, 9])
    # Operators to draw from. Division is not offered so that every answer is an integer.
    ops: list[str] = field(default_factory=lambda: ["+", "-", "*"])

    def __post_init__(self) -> None:
        _check_range("task.arithmetic.num_ops", list(self.num_ops), low=1)
        _check_range("task.arithmetic.operands", list(self.operands), low=0)
        bad = [op for op in self.ops if op not in ("+", "-", "*")]
        if not self.ops or bad:
            raise ValueError(
                f"task.arithmetic.ops must be a non-empty subset of ['+', '-', '*']; got {self.ops}"
            )


@dataclass
class CountdownConfig:
    # Inclusive [min, max] count of the numbers given in a problem. The solver enumerates every
    # expression over them, so keep the max at 5 or below.
    num_numbers: list[int] = field(default_factory=lambda: [3, 4])
    # Inclusive [min, max] of each given number.
    numbers: list[int] = field(default_factory=lambda: [1, 25])
    # Inclusive [min, max] of the target; only targets some expression reaches are asked for.
    target: list[int] = field(default_factory=lambda: [10, 100])

    def __post_init__(self) -> None:
        _check_range("task.countdown.num_numbers", list(self.num_numbers), low=2)
        if self.num_numbers[1] > 5:
            raise ValueError(
                f"task.countdown.num_numbers max is {self.num_numbers[1]}; the exhaustive solver is only "
                "practical up to 5 numbers"
            )
        _check_range("task.countdown.numbers", list(self.numbers), low=1)
        _check_range("task.countdown.target", list(self.target), low=1)


@dataclass
class DatasetColumns:
    """Where each field of a record is; a file holds prompt/completion records or messages records,
    told apart by whether it has the `messages` column."""

    # The question, a string (prompt/completion records).
    prompt: str = "prompt"
    # The reference completion, a string used verbatim as the SFT target (prompt/completion records).
    completion: str = "completion"
    # The reference answer the verifier compares against: a string, a list of strings (joined one per
    # line: the code verifier's test statements) or another JSON value (kept as its JSON text).
    # null: no answers, allowed only with task.rl_prompts=0 and task.eval_prompts=0.
    answer: str | None = "answer"
    # OpenAI-style turns `[{"role", "content"}, ...]`: an optional system turn, then user/assistant
    # turns; a final assistant turn is the completion, the last user turn the prompt.
    messages: str = "messages"


@dataclass
class DatasetConfig:
    """The `dataset` task: the user's own problems, from local files or the Hugging Face hub."""

    # Local .jsonl, .json or .parquet files, or directories written by `datasets.save_to_disk`.
    files: list[str] = field(default_factory=list)
    # A Hugging Face hub dataset name ("openai/gsm8k"), read with `datasets.load_dataset`; needs a
    # network (or a warm hub cache). Either `files` or `hub`, not both.
    hub: str | None = None
    # The hub dataset's configuration name ("main" for openai/gsm8k); null: its default.
    hub_config: str | None = None
    # The split read from a hub dataset or from a `save_to_disk` directory holding several splits.
    split: str = "train"
    # Column names in the records (see DatasetColumns).
    columns: DatasetColumns = field(default_factory=DatasetColumns)
    # How completions are scored against the answer column: exact (stripped string equality of the
    # `<answer>` text), numeric, math (math-verify equivalence) or code (runs the answer's tests).
    # exact and numeric read `<answer>…</answer>`, so the completions should end in one.
    verifier: str = "exact"

    def __post_init__(self) -> None:
        from rl.tasks.dataset import VERIFIERS  # the registry imports this module

        if self.verifier not in VERIFIERS:
            raise ValueError(f"task.dataset.verifier={self.verifier!r} is not one of {sorted(VERIFIERS)}")


@dataclass
class ReasoningGymConfig:
    """The `reasoning_gym` task: problems from one of reasoning-gym's procedural generators."""

    # A registered reasoning-gym dataset name (`reasoning_gym.factory.DATASETS`), e.g. chain_sum,
    # leg_counting, basic_arithmetic.
    dataset: str = "chain_sum"
    # Keyword arguments of that dataset's config class (difficulty ranges and the like), e.g.
    # {min_terms: 2, max_terms: 4}; `seed` and `size` are set per block and may not appear.
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    # Task names (see `rl.tasks.available_tasks()`): arithmetic, countdown, gsm8k, dataset,
    # reasoning_gym.
    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    # Mixture weight of each entry of `tasks`, same order; empty means equal weights.
    weights: list[float] = field(default_factory=list)
    # Seed of all generation and shuffling: the same seed gives byte-identical data.
    seed: int = 0
    # Pretraining documents (one problem with its worked solution each, in the chat format).
    pretrain_docs: int = 20000
    # Supervised fine-tuning (prompt, completion) pairs, from problems disjoint from pretraining.
    sft_pairs: int = 5000
    # RL prompts (with the reference answer for the verifier), disjoint from pretrain and SFT.
    rl_prompts: int = 2000
    # Held-out evaluation prompts, drawn only from the held-out part of the problem space.
    eval_prompts: int = 500
    # Share of the problem space held out for evaluation. Each problem's side is decided by a hash
    # of its canonical form, so no problem is ever on both sides, whatever the seed or counts.
    eval_fraction: float = 0.1
    # Local GSM8K-style files (JSONL or parquet with `question` and `answer` "...#### final"
    # columns) for the gsm8k task. Nothing is downloaded.
    gsm8k_files: list[str] = field(default_factory=list)
    # A system turn put before every prompt (pretrain, SFT, RL, eval), rendered by the tokenizer's
    # chat template; null: none (a pretrained model's template may still add its own default, as
    # SmolLM2's does). A record's own system message (a `messages` dataset) takes precedence.
    system_prompt: str | None = None
    # Where verifiers read the answer (rl/tasks/format.py): `tags`, the last `<answer>...</answer>`
    # (what this pipeline's own models learn); `last_number`, the last number in the reply, for a
    # pretrained chat model that answers in prose (numeric answers only). Recorded in every sample.
    answer_format: str = "tags"
    # Upper bound on the trained tokenizer's vocabulary, special and format tokens included; the
    # model's embedding size should be `len(tokenizer)`, which can be smaller on a small corpus.
    vocab_size: int = 512
    # Problems per Ray generation task. It is part of the data's identity (same seed and
    # block_size give the same data at any parallelism); raise it to cut scheduling overhead.
    block_size: int = 64
    # Difficulty of the arithmetic task.
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    # Difficulty of the countdown task.
    countdown: CountdownConfig = field(default_factory=CountdownConfig)
    # Source, columns and verifier of the `dataset` task (the user's own data).
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # Generator and its settings for the `reasoning_gym` task.
    reasoning_gym: ReasoningGymConfig = field(default_factory=ReasoningGymConfig)

    def __post_init__(self) -> None:
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task.tasks must be a non-empty list of distinct task names; got {self.tasks}")
        if self.weights and len(self.weights) != len(self.tasks):
            raise ValueError(
                f"task.weights has {len(self.weights)} entries but task.tasks has {len(self.tasks)} "
                f"({self.tasks}); give one weight per task or leave weights empty for equal weights"
            )
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise ValueError(f"task.weights must be >= 0 with a positive sum; got {self.weights}")
        for name in ("pretrain_docs", "sft_pairs", "rl_prompts", "eval_prompts"):
            if getattr(self, name) < 0:
                raise ValueError(f"task.{name} must be >= 0; got {getattr(self, name)}")
        if self.pretrain_docs + self.sft_pairs + self.rl_prompts == 0:
            raise ValueError(
                "task.pretrain_docs, task.sft_pairs and task.rl_prompts are all 0; nothing to train on"
            )
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(
                f"task.answer_format must be one of {ANSWER_FORMATS}; got {self.answer_format!r}"
            )
        if self.answer_format == "last_number":
            wordy = [
                t
                for t in self.tasks
                if t == "countdown" or (t == "dataset" and self.dataset.verifier != "numeric")
            ]
            if wordy:
                raise ValueError(
                    f"task.answer_format=last_number reads a number from the reply, but the answers of {wordy} "
                    "are not numbers (countdown: an expression; dataset: unless task.dataset.verifier=numeric); "
                    "use task.answer_format=tags"
                )
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"task.eval_fraction must be in (0, 1); got {self.eval_fraction}")
        if "gsm8k" in self.tasks and not self.gsm8k_files:
            raise ValueError(
                "task.tasks includes gsm8k but task.gsm8k_files is empty; list local JSONL or parquet "
                "files with `question` and `answer` columns (nothing is downloaded)"
            )
        if "dataset" in self.tasks:
            self._check_dataset()
        if "reasoning_gym" in self.tasks:
            from rl.tasks.reasoning_gym import check_generator  # imports reasoning-gym, ~2 s

            check_generator(self.reasoning_gym)
        if self.vocab_size < 300:
            raise ValueError(
                f"task.vocab_size must be >= 300 (256 byte tokens + special and format tokens); got {self.vocab_size}"
            )
        if self.block_size < 1:
            raise ValueError(f"task.block_size must be >= 1; got {self.block_size}")

    def _check_dataset(self) -> None:
        if bool(self.dataset.files) == (self.dataset.hub is not None):
            raise ValueError(
                "task.tasks includes dataset, which needs exactly one source: task.dataset.files (local "
                ".jsonl/.json/.parquet files or save_to_disk directories) or task.dataset.hub (a hub "
                f"dataset name); got files={self.dataset.files} and hub={self.dataset.hub!r}"
            )
        if self.dataset.columns.answer is None and self.rl_prompts + self.eval_prompts > 0:
            raise ValueError(
                "task.dataset.columns.answer is null, but task.rl_prompts="
                f"{self.rl_prompts} and task.eval_prompts={self.eval_prompts} ask for prompts the "
                "verifier scores against an answer: name the answer column, or set both counts to 0"
            )

    def mixture(self) -> dict[str, float]:
        """Task name -> normalised weight."""
        weights = self.weights or [1.0] * len(self.tasks)
        total = float(sum(weights))
        return {name: w / total for name, w in zip(self.tasks, weights, strict=True)}
