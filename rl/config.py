"""The `task` config group (which problems the data stage makes, how many, how hard) and `rlvr`.

Hydra's root schema types `task` as `TaskConfig`; the YAML files in `conf/task/` only override fields.
Lists, not dicts, hold the task mixture because OmegaConf merges dicts key by key: a YAML that set
`tasks: {countdown: 1.0}` over a default `{arithmetic: 1.0}` would silently train on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.config import ModelConfig, TrainConfig


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


@dataclass
class EvalConfig:
    # Held-out prompts scored per evaluation (the first N of the data stage's eval split).
    limit: int = 200
    # Generation budget per answer; an answer cut off before </answer> scores 0.
    max_new_tokens: int = 64
    batch_size: int = 64


# KD losses by name -> whether the teacher workers must score every token (full-vocabulary
# log-probabilities). The losses themselves are rl/kd.py's KD_LOSSES, which must offer exactly
# these (tests/rl/test_kd.py); named here so that composing a config imports no torch.
KD_LOSS_NEEDS_TEACHER = {"seq_kd": False, "forward_kl": True, "reverse_kl": True, "jsd": True}


def _default_rewards() -> list[Any]:
    return [{"_target_": "rl.rewards.Correctness", "weight": 1.0}]


@dataclass
class RlvrConfig:
    """The `rlvr` stage: GRPO with verifiable rewards, rollout actors beside a DeepSpeed learner."""

    # The learner's loop settings (lr, steps, ZeRO, checkpoints...). Its global_batch_size is
    # ignored: a step trains on prompts_per_step * group_size sequences.
    train: TrainConfig = field(default_factory=TrainConfig)
    # Prompts per step and samples per prompt (a GRPO group).
    prompts_per_step: int = 16
    group_size: int = 8
    # sync: on-policy, rollouts for step s use the weights after s updates. async: rollouts for
    # step s+1 are generated while the learner trains step s (at most max_staleness versions old).
    mode: str = "sync"
    max_staleness: int = 1
    # Sampling for rollouts; the learner recomputes log-probs at the same temperature.
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    # PPO ratio clip range [1 - clip_low, 1 + clip_high] (clip_high > clip_low: DAPO clip-higher).
    clip_low: float = 0.2
    clip_high: float = 0.28
    # Divide advantages by the group's reward std (GRPO); false keeps them centred only (Dr. GRPO).
    scale_advantages: bool = True
    # Weight of the k3 KL to the frozen starting policy; 0 turns the reference off (no cost).
    kl_coef: float = 0.0
    # Optimizer for the policy update, overriding the root `optimizer.name` for this stage: Muon's
    # orthogonalised step has a fixed size whatever the gradient's, so GRPO's noisy policy gradient
    # became full-size random steps (measured: rollout reward fell with muonclip at lr 2e-4..1e-3).
    # null uses the root optimizer.
    optimizer: str | None = "adamw"
    # Weight of the MoE load-balancing loss during RL. Its gradient reaches every layer below a
    # router and, next to GRPO's small policy gradient, steered the updates (measured: reward
    # fell); balance was set in pretraining, so RL leaves it out by default.
    aux_loss_coef: float = 0.0
    # Reward callables by Hydra _target_, summed: rl.rewards.Correctness, Format, LengthPenalty
    # or your own `(rl.rewards.Scored) -> float`.
    rewards: list[Any] = field(default_factory=_default_rewards)
    # A reward call running longer than this scores 0 (a hanging verifier cannot stall the loop).
    reward_timeout_s: float = 5.0
    # Rollout actors, their CPU share (fractions fit beside the learner), GPU share, restarts.
    num_rollout_workers: int = 2
    rollout_cpus: float = 0.5
    rollout_gpus: float = 0.0
    # Torch threads per rollout actor.
    rollout_threads: int = 1
    rollout_max_restarts: int = 3
    # Testing: rollout worker 0 dies (once per run) when asked for this step's rollouts.
    kill_rollout_worker_at_step: int | None = None
    # Data seed for the prompt order and sampling.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in (None, "muonclip", "adamw"):
            raise ValueError(f"rlvr.optimizer must be muonclip, adamw or null; got {self.optimizer!r}")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"rlvr.mode must be sync or async; got {self.mode!r}")
        if self.group_size < 2:
            raise ValueError(
                f"rlvr.group_size must be >= 2 (advantages compare samples of a group); got {self.group_size}"
            )
        if self.prompts_per_step < 1 or self.num_rollout_workers < 1:
            raise ValueError("rlvr.prompts_per_step and rlvr.num_rollout_workers must be >= 1")
        if self.temperature <= 0:
            raise ValueError(
                f"rlvr.temperature must be > 0 (GRPO needs sampled groups); got {self.temperature}"
            )
        if self.max_staleness < 1 and self.mode == "async":
            raise ValueError("rlvr.max_staleness must be >= 1 in async mode (the next batch is one step old)")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ValueError(
                f"rlvr.clip_low must be in [0, 1) and clip_high >= 0; got {self.clip_low}, {self.clip_high}"
            )


@dataclass
class DistillConfig:
    """The `distill` stage: the RL teacher teaches a small dense student that then drafts for it."""

    # The student's architecture (conf/distill/default.yaml selects the dense_tiny preset); it
    # shares the data stage's tokenizer. student.pretrained starts from a local checkpoint.
    student: ModelConfig = field(default_factory=lambda: ModelConfig(arch="qwen3"))
    # The student's loop settings. Its global_batch_size is ignored: a step trains on
    # prompts_per_step * samples_per_prompt sequences.
    train: TrainConfig = field(default_factory=TrainConfig)
    # seq_kd (SFT on the teacher's samples), forward_kl, reverse_kl or jsd (rl.kd.KD_LOSSES).
    loss: str = "forward_kl"
    # jsd's weight of the teacher in the mixture, in (0, 1); 0.5 is the symmetric JSD.
    beta: float = 0.5
    # Softmax temperature of the token-level losses (which are scaled by its square).
    temperature: float = 1.0
    # GKD's lambda: the share of steps (drawn by seed) whose sequences the student samples, with the
    # learner's latest weights, for the teacher to score; the teacher samples the rest.
    on_policy_fraction: float = 0.0
    # Data-stage split whose prompts are sampled on; sft is the one the baseline trains on.
    prompts_split: str = "sft"
    prompts_per_step: int = 16
    samples_per_prompt: int = 2
    # Sampling temperature of the teacher's and the student's solutions (0 = greedy).
    sample_temperature: float = 1.0
    max_new_tokens: int = 64
    # sync: every step waits for its sequences. async: they are sampled while the learner trains
    # the step before (student samples then are at most max_staleness versions old).
    mode: str = "sync"
    max_staleness: int = 1
    num_teacher_workers: int = 2
    # Student rollout workers, started only when on_policy_fraction > 0.
    num_student_workers: int = 1
    # CPU share, GPU share and torch threads of each teacher or student worker; restarts allowed.
    worker_cpus: float = 0.5
    worker_gpus: float = 0.0
    worker_threads: int = 1
    worker_max_restarts: int = 3
    # Also train a same-size student from the same init for as many steps on the SFT data alone
    # (no teacher), and report its pass@1 and draft figures beside the distilled student's.
    compare_baseline: bool = True
    # Speculative decoding check: draft tokens per step, and held-out prompts (greedy, batch 1)
    # for it and for the top-1 agreement.
    draft_k: int = 4
    draft_eval_prompts: int = 20
    # Seed of the prompt order, sampling and on-policy step draw.
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in KD_LOSS_NEEDS_TEACHER:
            raise ValueError(f"distill.loss={self.loss!r} is not one of {sorted(KD_LOSS_NEEDS_TEACHER)}")
        if not KD_LOSS_NEEDS_TEACHER[self.loss] and self.on_policy_fraction > 0:
            raise ValueError(
                f"distill.loss={self.loss!r} trains on the sampled tokens themselves, so it cannot learn "
                "from the student's own samples; set distill.on_policy_fraction=0 or a token-level loss"
            )
        checks = {
            "beta": 0.0 < self.beta < 1.0,
            "temperature": self.temperature > 0,
            "on_policy_fraction": 0.0 <= self.on_policy_fraction <= 1.0,
            "mode": self.mode in ("sync", "async"),
            "max_staleness": self.max_staleness >= 1 or self.mode == "sync",
            "sample_temperature": self.sample_temperature >= 0,
        }
        counts = (
            "prompts_per_step",
            "samples_per_prompt",
            "max_new_tokens",
            "num_teacher_workers",
            "num_student_workers",
            "draft_k",
            "draft_eval_prompts",
        )
        checks.update({name: getattr(self, name) >= 1 for name in counts})
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"distill: invalid {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}; expected "
                "0<beta<1, temperature>0, 0<=on_policy_fraction<=1, mode sync or async, max_staleness>=1 "
                "in async mode, sample_temperature>=0, and counts >= 1"
            )
