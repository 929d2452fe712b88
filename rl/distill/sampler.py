"""Distillation's step sampler: the sequences each student step trains on.

A step's sequences are sampled by the teacher workers (sequence-level KD, or logit KD on teacher
outputs), or, on a share `on_policy_fraction` of the steps drawn by seed, by student rollout
workers holding the learner's latest weights (on-policy distillation: GKD's lambda). When the loss
needs them, the teacher workers then score every completion token of the step once, in batches:
the teacher's `distill.kd_top_k` most likely tokens and their log-probabilities at the distillation
temperature (rl.distill.kd says why not the whole vocabulary). Each learner rank receives only its
share.

The rollout manager runs it: the per-step hand-out to the ranks, the weight push to the student
workers after each step, async prefetch and the recovery of a dead student worker are its own.
"""

from __future__ import annotations

import random
import time
from functools import partial

import ray

from rl.config import DistillConfig
from rl.distill.kd import KD_LOSSES
from rl.rollout.actor_group import ActorGroup
from rl.rollout.manager import RolloutSchedule, StepRollouts, start_manager, worker_seed
from rl.rollout.teacher import teacher_worker_class
from rl.rollout.worker import RolloutParams, Trajectory, rollout_worker_class

# Workers score their samples with the verifier only for the sample pass-rate metric.
CORRECTNESS = [{"_target_": "rl.rollout.rewards.Correctness", "weight": 1.0}]
VERIFIER_TIMEOUT_S = 5.0


class DistillSampler:
    """Built inside the manager actor (`start_distill_manager`), where it starts the workers."""

    def __init__(self, cfg: DistillConfig, teacher_dir: str, student_dir: str):
        self.cfg = cfg
        self.needs_teacher = KD_LOSSES[cfg.loss].needs_teacher
        resources = (cfg.worker_cpus, cfg.worker_gpus, cfg.worker_max_restarts)
        teacher_cls, student_cls = teacher_worker_class(*resources), rollout_worker_class(*resources)
        # A frozen teacher: Ray's task retries are its recovery.
        self.teachers = ActorGroup(
            [
                teacher_cls.remote(teacher_dir, CORRECTNESS, VERIFIER_TIMEOUT_S, threads=cfg.worker_threads)
                for _ in range(cfg.num_teacher_workers)
            ],
            recover=False,
        )
        n_students = cfg.num_student_workers if cfg.on_policy_fraction > 0 else 0
        self.policy = ActorGroup(
            [
                student_cls.remote(student_dir, CORRECTNESS, VERIFIER_TIMEOUT_S, threads=cfg.worker_threads)
                for _ in range(n_students)
            ],
            recover=True,
        )
        self.params = RolloutParams(cfg.samples_per_prompt, cfg.max_new_tokens, cfg.sample_temperature)

    def on_policy(self, step: int) -> bool:
        """Whether step `step` trains on the student's samples: a seeded draw, the same on resume."""
        return random.Random(f"{self.cfg.train.seed}:{step}").random() < self.cfg.on_policy_fraction

    def shutdown(self) -> None:
        self.teachers.kill()
        self.policy.kill()

    def sample_step(self, step: int, rows: list[dict]) -> StepRollouts:
        start = time.perf_counter()
        on_policy = self.on_policy(step)
        group = self.policy if on_policy else self.teachers
        trajectories, batches = group.sample(
            rows, self.params, partial(worker_seed, self.cfg.train.seed, step)
        )
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
            "rollout_worker_restarts": float(self.policy.restarts),
        }
        return StepRollouts(step, trajectories, version, wall, metrics)

    def _score(self, trajectories: list[Trajectory]) -> int:
        """Attach the teacher's top-k, each teacher scoring a contiguous slice; the bytes shipped."""
        teachers, n = self.teachers.actors, len(trajectories)
        bounds = [n * i // len(teachers) for i in range(len(teachers) + 1)]
        refs = [
            teachers[i].score.remote(
                [(t.prompt_ids, t.completion_ids) for t in trajectories[a:b]],
                self.cfg.kd_top_k,
                self.cfg.temperature,
            )
            for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
            if b > a
        ]
        scored = [topk for part in ray.get(refs) for topk in part]
        for t, (values, ids) in zip(trajectories, scored, strict=True):
            t.teacher_logprobs, t.teacher_ids = values, ids
        return sum(x.numel() * x.element_size() for topk in scored for x in topk)


def start_distill_manager(cfg: DistillConfig, teacher_dir: str, student_dir: str, prompts_dir: str):
    """The rollout manager actor for distilling `teacher_dir` into the student in `student_dir`."""
    schedule = RolloutSchedule(cfg.prompts_per_step, cfg.mode, cfg.max_staleness, cfg.train.seed)
    return start_manager(schedule, prompts_dir, partial(DistillSampler, cfg, teacher_dir, student_dir))
