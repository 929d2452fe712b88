"""The distillation manager: one Ray actor that prepares each step's sequences for the student.

A step's sequences are sampled by the teacher workers (sequence-level KD, or logit KD on teacher
outputs), or, on a share `on_policy_fraction` of the steps drawn by seed, by student rollout
workers holding the learner's latest weights (on-policy distillation: GKD's lambda). When the loss
needs them, the teacher workers then score every completion token of the step once, in batches,
and each learner rank receives only its share.

It is a `RolloutManager` whose policy workers are the student's: the per-step hand-out to the
ranks, the weight push after each step, async prefetch and the recovery of a dead student worker
are the rollout manager's. Its config (`DistillConfig`) has the scheduling fields the rollout
manager reads: prompts_per_step, mode, max_staleness, seed.
"""

from __future__ import annotations

import random
import time

import ray

from rl.config import DistillConfig
from rl.kd import KD_LOSSES
from rl.rollout import RolloutParams, Trajectory, rollout_worker_class
from rl.rollout_manager import RolloutManager, StepRollouts, load_prompt_rows
from rl.teacher import teacher_worker_class

# Workers score their samples with the verifier only for the sample pass-rate metric.
CORRECTNESS = [{"_target_": "rl.rewards.Correctness", "weight": 1.0}]
VERIFIER_TIMEOUT_S = 5.0


class DistillManager(RolloutManager):
    """Run as a threaded Ray actor (see `start_distill_manager`)."""

    def __init__(self, cfg: DistillConfig, teacher_dir: str, student_dir: str, prompts_dir: str):
        self.cfg = cfg
        self.rows = load_prompt_rows(prompts_dir)
        self.needs_teacher = KD_LOSSES[cfg.loss].needs_teacher
        resources = (cfg.worker_cpus, cfg.worker_gpus, cfg.worker_max_restarts)
        teacher_cls, student_cls = teacher_worker_class(*resources), rollout_worker_class(*resources)
        self.teachers = [
            teacher_cls.remote(teacher_dir, CORRECTNESS, VERIFIER_TIMEOUT_S, threads=cfg.worker_threads)
            for _ in range(cfg.num_teacher_workers)
        ]
        n_students = cfg.num_student_workers if cfg.on_policy_fraction > 0 else 0
        self.workers = [
            student_cls.remote(student_dir, CORRECTNESS, VERIFIER_TIMEOUT_S, threads=cfg.worker_threads)
            for _ in range(n_students)
        ]
        self.params = RolloutParams(cfg.samples_per_prompt, cfg.max_new_tokens, cfg.sample_temperature)
        self._init_state()

    def on_policy(self, step: int) -> bool:
        """Whether step `step` trains on the student's samples: a seeded draw, the same on resume."""
        return random.Random(f"{self.cfg.seed}:{step}").random() < self.cfg.on_policy_fraction

    def shutdown(self) -> None:
        for t in self.teachers:
            ray.kill(t)
        super().shutdown()

    def _generate(self, step: int) -> StepRollouts:
        start = time.perf_counter()
        rows = [self.rows[i] for i in self._prompt_rows(step)]
        on_policy = self.on_policy(step)
        trajectories, batches = self._sample(self.workers if on_policy else self.teachers, rows, step)
        sampled = time.perf_counter()
        nbytes = self._score(trajectories) if self.needs_teacher else 0
        wall = time.perf_counter() - start
        # Teacher samples do not depend on the student: they are never stale.
        version = min(b.version for b in batches if b is not None) if on_policy else step
        tokens = sum(len(t.completion_ids) for t in trajectories)
        metrics = {
            "on_policy": float(on_policy),
            # Verifier pass rate of the step's samples: the teacher's, or the student's when on-policy.
            "sample_pass_rate": sum(t.correct for t in trajectories) / len(trajectories),
            "response_tokens_mean": tokens / len(trajectories),
            "completion_tokens": float(tokens),
            "sample_time_s": sampled - start,
            "teacher_score_time_s": wall - (sampled - start),
            "teacher_logprob_bytes": float(nbytes),
            "rollout_staleness": float(step - version),
            "rollout_worker_restarts": float(self.restarts),
        }
        return StepRollouts(step, trajectories, version, wall, metrics)

    def _score(self, trajectories: list[Trajectory]) -> int:
        """Attach the teacher's log-distributions, each teacher scoring a contiguous slice; bytes."""
        k, n = len(self.teachers), len(trajectories)
        bounds = [n * i // k for i in range(k + 1)]
        refs = [
            self.teachers[i].score.remote([(t.prompt_ids, t.completion_ids) for t in trajectories[a:b]])
            for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
            if b > a
        ]
        scored = [lp for part in ray.get(refs) for lp in part]
        for t, lp in zip(trajectories, scored, strict=True):
            t.teacher_logprobs = lp
        return sum(lp.numel() * lp.element_size() for lp in scored)


def start_distill_manager(cfg: DistillConfig, teacher_dir: str, student_dir: str, prompts_dir: str):
    """The manager actor (on this node, a sliver of CPU: it only coordinates)."""
    return (
        ray.remote(DistillManager)
        .options(num_cpus=0.01, max_concurrency=8)
        .remote(cfg, teacher_dir, student_dir, prompts_dir)
    )
