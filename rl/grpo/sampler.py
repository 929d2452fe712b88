"""GRPO's step sampler: a group of completions per prompt from the policy's rollout workers,
scored by the verifiable rewards, with group-relative advantages."""

from __future__ import annotations

import time
from functools import partial

import torch

from rl.config import RlvrConfig
from rl.grpo.loss import group_advantages
from rl.rollout.actor_group import ActorGroup
from rl.rollout.manager import RolloutSchedule, StepRollouts, start_manager, worker_seed
from rl.rollout.worker import RolloutParams, rollout_worker_class


class GroupSampler:
    """Built inside the manager actor (`start_grpo_manager`), where it starts the rollout workers."""

    def __init__(self, cfg: RlvrConfig, model_dir: str):
        self.cfg = cfg
        worker_cls = rollout_worker_class(cfg.rollout_cpus, cfg.rollout_gpus, cfg.rollout_max_restarts)
        workers = [
            worker_cls.remote(
                model_dir,
                cfg.rewards,
                cfg.reward_timeout_s,
                threads=cfg.rollout_threads,
                quantize=cfg.rollout_quantize,
                with_reference=cfg.kl_coef > 0,
            )
            for _ in range(cfg.num_rollout_workers)
        ]
        self.policy = ActorGroup(workers, recover=True)
        self.params = RolloutParams(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        self._drilled = False

    def shutdown(self) -> None:
        self.policy.kill()

    def sample_step(self, step: int, rows: list[dict]) -> StepRollouts:
        start = time.perf_counter()
        drill = self.cfg.kill_rollout_worker_at_step == step and not self._drilled
        self._drilled |= drill
        seed = partial(worker_seed, self.cfg.train.seed, step)
        trajectories, batches = self.policy.sample(rows, self.params, seed, die=drill)
        advantages = group_advantages(
            torch.tensor([t.reward for t in trajectories]),
            self.cfg.group_size,
            scale=self.cfg.scale_advantages,
        )
        for t, a in zip(trajectories, advantages.tolist(), strict=True):
            t.advantage = a
        wall = time.perf_counter() - start
        versions = [b.version for b in batches if b is not None]
        tokens = sum(len(t.completion_ids) for t in trajectories)
        rewards = [t.reward for t in trajectories]
        metrics = {
            "reward_mean": sum(rewards) / len(rewards),
            "pass_rate": sum(t.correct for t in trajectories) / len(trajectories),
            "response_tokens_mean": tokens / len(trajectories),
            "completion_tokens": float(tokens),
            # Groups whose rewards all tie: advantage 0, no learning signal.
            "zero_signal_groups": float(
                (advantages.view(-1, self.cfg.group_size).abs().sum(1) == 0).float().mean()
            ),
            "rollout_tokens_per_s": tokens / wall,
            "rollout_time_s": wall,
            "rollout_staleness": float(step - min(versions)),
            "reward_timeouts": float(sum(b.reward_timeouts for b in batches if b is not None)),
            "rollout_worker_restarts": float(self.policy.restarts),
        }
        return StepRollouts(step, trajectories, min(versions), wall, metrics)


def start_grpo_manager(cfg: RlvrConfig, model_dir: str, prompts_dir: str):
    """The rollout manager actor for GRPO on the policy in `model_dir`, prompts from `prompts_dir`."""
    schedule = RolloutSchedule(cfg.prompts_per_step, cfg.mode, cfg.max_staleness, cfg.train.seed)
    return start_manager(schedule, prompts_dir, partial(GroupSampler, cfg, model_dir))
