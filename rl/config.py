"""The RL configs: held-out evaluation, GRPO (`rlvr`) and distillation (`distill`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.config import ModelConfig, StageTrainConfig, TrainConfig


@dataclass
class EvalConfig:
    # Held-out prompts scored per evaluation (the first N of the data stage's eval split).
    limit: int = 200
    # Generation budget per answer; an answer cut off before </answer> scores 0.
    max_new_tokens: int = 64
    batch_size: int = 64


# KD losses by name -> whether the teacher workers must score every token (their top-k
# log-probabilities). The losses themselves are rl/distill/kd.py's KD_LOSSES, which must offer exactly
# these (tests/rl/test_kd.py); named here so that composing a config imports no torch.
KD_LOSS_NEEDS_TEACHER = {"seq_kd": False, "forward_kl": True, "reverse_kl": True, "jsd": True}


def _default_rewards() -> list[Any]:
    return [{"_target_": "rl.rollout.rewards.Correctness", "weight": 1.0}]


def _derived_batch() -> TrainConfig:
    return TrainConfig(global_batch_size=None)


@dataclass
class RlvrConfig(StageTrainConfig):
    """The `rlvr` stage: GRPO with verifiable rewards, rollout actors beside a DeepSpeed learner."""

    # The learner's loop settings (lr, steps, ZeRO, checkpoints...; train.seed orders the prompts
    # and seeds sampling). A step trains on prompts_per_step * group_size sequences: that is its
    # global_batch_size, which stays unset here.
    train: TrainConfig = field(default_factory=_derived_batch)
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
    # AdamW, not the root muonclip: Muon's orthogonalised step has a fixed size whatever the
    # gradient's, so GRPO's noisy policy gradient became full-size random steps (measured: rollout
    # reward fell with muonclip at lr 2e-4..1e-3). null uses the root optimizer.
    optimizer: str | None = "adamw"
    # Weight of the MoE load-balancing loss during RL. Its gradient reaches every layer below a
    # router and, next to GRPO's small policy gradient, steered the updates (measured: reward
    # fell); balance was set in pretraining, so RL leaves it out by default.
    aux_loss_coef: float = 0.0
    # Reward callables by Hydra _target_, summed: rl.rollout.rewards.Correctness, Format, LengthPenalty
    # or your own `(rl.rollout.rewards.Scored) -> float`.
    rewards: list[Any] = field(default_factory=_default_rewards)
    # A reward call running longer than this scores 0 (a hanging verifier cannot stall the loop).
    reward_timeout_s: float = 5.0
    # Rollout actors, their CPU share (fractions fit beside the learner), GPU share, restarts.
    num_rollout_workers: int = 2
    rollout_cpus: float = 0.5
    rollout_gpus: float = 0.0
    # Torch threads per rollout actor.
    rollout_threads: int = 1
    # Rollout engine on CPU: "int8" samples from an int8 copy of the policy (serving.optimize;
    # ~1.4x faster decode, re-quantised at every weight push). Rollout log-probs then come from
    # that copy, and the clipped PPO ratio against the learner's fp32 log-probs corrects for the
    # difference; null samples from the fp32 policy itself.
    rollout_quantize: str | None = None
    rollout_max_restarts: int = 3
    # Testing: rollout worker 0 dies (once per run) when asked for this step's rollouts.
    kill_rollout_worker_at_step: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("sync", "async"):
            raise ValueError(f"rlvr.mode must be sync or async; got {self.mode!r}")
        if self.rollout_quantize not in (None, "int8"):
            raise ValueError(f"rlvr.rollout_quantize must be null or 'int8'; got {self.rollout_quantize!r}")
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
class DistillConfig(StageTrainConfig):
    """The `distill` stage: the RL teacher teaches a small dense student that then drafts for it."""

    # The student's architecture (conf/distill/default.yaml selects the dense_tiny preset); it
    # shares the data stage's tokenizer. student.pretrained starts from a local checkpoint.
    student: ModelConfig = field(default_factory=lambda: ModelConfig(arch="qwen3"))
    # Start the student from these decoder layers of the teacher (with its embeddings, final norm
    # and head) instead: e.g. [0, 5, 10, 15, 20, 25, 29] of SmolLM2's 30 keeps 23% of its
    # non-embedding parameters. `student`'s shape is then unused. null: `student` as configured.
    student_layers: list[int] | None = None
    # The student's loop settings (train.seed orders the prompts and seeds sampling and the
    # on-policy step draw). A step trains on prompts_per_step * samples_per_prompt sequences: that
    # is its global_batch_size, which stays unset here.
    train: TrainConfig = field(default_factory=_derived_batch)
    # seq_kd (SFT on the teacher's samples), forward_kl, reverse_kl or jsd (rl.distill.kd.KD_LOSSES).
    loss: str = "forward_kl"
    # jsd's weight of the teacher in the mixture, in (0, 1); 0.5 is the symmetric JSD.
    beta: float = 0.5
    # Softmax temperature of the token-level losses (which are scaled by its square). The teacher
    # workers apply it before taking their top-k: truncated log-probs cannot be softened exactly.
    temperature: float = 1.0
    # The token-level losses see the teacher's kd_top_k most likely tokens at each position plus one
    # tail bucket holding the rest of its mass (rl.distill.kd); null ships the whole vocabulary
    # (exact, but V values and V ids a token). 64 ships 512 bytes a token instead of 196,608 at
    # V = 49152, while a trained teacher, peaked at most positions, leaves little mass to the tail
    # bucket, which still charges the student for what it puts there.
    kd_top_k: int | None = 64
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

    def __post_init__(self) -> None:
        super().__post_init__()
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
            "kd_top_k": self.kd_top_k is None or self.kd_top_k >= 1,
            "on_policy_fraction": 0.0 <= self.on_policy_fraction <= 1.0,
            "mode": self.mode in ("sync", "async"),
            "max_staleness": self.max_staleness >= 1 or self.mode == "sync",
            "sample_temperature": self.sample_temperature >= 0,
            "prompts_split": self.prompts_split in ("rl", "sft"),
            "student_layers": self.student_layers is None
            or (
                len(self.student_layers) > 0
                and len(set(self.student_layers)) == len(self.student_layers)
                and min(self.student_layers) >= 0
            ),
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
                "0<beta<1, temperature>0, kd_top_k>=1 or null, 0<=on_policy_fraction<=1, mode sync or "
                "async, max_staleness>=1 in async mode, sample_temperature>=0, prompts_split rl or sft, "
                "counts >= 1, and student_layers null or distinct layer indices >= 0"
            )
