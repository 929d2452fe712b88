"""The task configs: which problems the data stage makes, how many, how hard.

Hydra's root schema types `task` as `TaskConfig`; the YAML files in `conf/task/` only override fields.
Lists, not dicts, hold the task mixture because OmegaConf merges dicts key by key: a YAML that set
`tasks: {countdown: 1.0}` over a default `{arithmetic: 1.0}` would silently train on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
class TaskConfig:
    # Task names (see `rl.tasks.available_tasks()`): arithmetic, countdown, gsm8k.
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
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"task.eval_fraction must be in (0, 1); got {self.eval_fraction}")
        if "gsm8k" in self.tasks and not self.gsm8k_files:
            raise ValueError(
                "task.tasks includes gsm8k but task.gsm8k_files is empty; list local JSONL or parquet "
                "files with `question` and `answer` columns (nothing is downloaded)"
            )
        if self.vocab_size < 300:
            raise ValueError(
                f"task.vocab_size must be >= 300 (256 byte tokens + special and format tokens); got {self.vocab_size}"
            )
        if self.block_size < 1:
            raise ValueError(f"task.block_size must be >= 1; got {self.block_size}")

    def mixture(self) -> dict[str, float]:
        """Task name -> normalised weight."""
        weights = self.weights or [1.0] * len(self.tasks)
        total = float(sum(weights))
        return {name: w / total for name, w in zip(self.tasks, weights, strict=True)}
