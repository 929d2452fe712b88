"""The rollout manager: one Ray actor between the learner ranks and the workers that sample.

Learner ranks ask it for step s's batch; its `StepSampler` (GRPO's group sampler, distillation's
teacher/student sampler) makes the batch from the step's prompts (or the manager hands over what
it prefetched), and it pushes each new policy version to the sampler's policy workers. Version
bookkeeping: version v = the weights after v optimizer steps. In `sync` mode step s trains on
samples of version s (on-policy); in `async` mode the samples of step s+1 are generated while the
learner trains step s, with version s, so they are one version stale and the learner's importance
ratio uses the log-probs recorded at sampling time.

A policy worker that dies is restarted by Ray (`max_restarts`); its `ActorGroup` reinstalls the
latest weights on it and retries its share, or gives the share to a survivor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import ray

from rl.rollout.actor_group import ActorGroup
from rl.rollout.worker import Trajectory
from training.data import batch_indices


@dataclass
class StepRollouts:
    step: int
    trajectories: list[Trajectory]  # prompt-major: each prompt's group is contiguous
    version: int  # oldest policy version among the workers' shares
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutSchedule:
    """Which prompts each step samples and how far sampling may run ahead of the learner."""

    prompts_per_step: int
    mode: str  # sync: step s waits for samples of version s; async: sampled a step ahead
    max_staleness: int  # async: most versions a step's samples may lag behind
    seed: int  # prompt order


class StepSampler(Protocol):
    """Makes one step's trajectories from its prompts (inside the manager actor)."""

    # The workers that get each new policy version (empty when nothing samples from the learner).
    policy: ActorGroup

    def sample_step(self, step: int, rows: list[dict]) -> StepRollouts: ...

    def shutdown(self) -> None: ...


class RolloutManager:
    """Run as a threaded Ray actor (`max_concurrency` > 1): ranks fetch while workers generate."""

    def __init__(self, schedule: RolloutSchedule, prompts_dir: str, make_sampler: Callable[[], StepSampler]):
        self.schedule = schedule
        self.rows = load_prompt_rows(prompts_dir)
        self.sampler = make_sampler()  # starts its worker actors from inside this actor
        self.version = 0
        self._lock = threading.Lock()
        self._steps: dict[int, Future] = {}
        self._fetched: dict[int, int] = {}
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="rollout")

    # -- called by the learner ---------------------------------------------------------------

    def push_weights(self, weights: list, version: int, nbytes: int) -> dict[str, float]:
        """Install `weights` ([ObjectRef] of an HF state dict) as `version` on the policy workers."""
        start = time.perf_counter()
        self.sampler.policy.push(weights, version)
        with self._lock:
            self.version = version
        return {
            "sync_time_s": time.perf_counter() - start,
            "sync_bytes": float(nbytes),
            "policy_version": version,
        }

    def step_batch(self, step: int, rank: int, world: int) -> tuple[list[Trajectory], dict[str, float]]:
        """Rank `rank`'s contiguous share of step `step`'s trajectories, and the step's metrics."""
        with self._lock:
            future = self._steps.get(step) or self._submit(step)
        rollouts: StepRollouts = future.result()
        with self._lock:
            self._fetched[step] = self._fetched.get(step, 0) + 1
            if self._fetched[step] == world:  # every rank has its share: free it
                self._steps.pop(step, None)
                self._fetched.pop(step)
            if self.schedule.mode == "async" and step + 1 not in self._steps:
                self._submit(step + 1)  # generate the next batch while the learner trains this one
        n = len(rollouts.trajectories)
        if n % world:
            raise ValueError(f"step {step}: {n} trajectories do not split over {world} learner ranks")
        share = n // world
        return rollouts.trajectories[rank * share : (rank + 1) * share], rollouts.metrics

    def shutdown(self) -> None:
        self.sampler.shutdown()

    def worker_pids(self) -> list[int]:
        return self.sampler.policy.call("pid")

    def worker_states(self) -> list:
        return self.sampler.policy.call("state_dict")

    # -- internals ---------------------------------------------------------------------------

    def _submit(self, step: int) -> Future:
        """Start generating step `step` (caller holds the lock) with the current weights."""
        version, sched = self.version, self.schedule
        if step - version > sched.max_staleness or (sched.mode == "sync" and step != version):
            raise RuntimeError(
                f"rollouts for step {step} would use policy version {version}; mode={sched.mode} "
                f"allows {'none older' if sched.mode == 'sync' else f'at most {sched.max_staleness} older'}"
            )
        future = self._pool.submit(self._generate, step)
        self._steps[step] = future
        return future

    def _generate(self, step: int) -> StepRollouts:
        n = self.schedule.prompts_per_step
        rows = batch_indices(
            step, 0, 0, world=1, micro_bs=n, accum=1, n=len(self.rows), seed=self.schedule.seed
        )
        return self.sampler.sample_step(step, [self.rows[i] for i in rows])


def worker_seed(seed: int, step: int, worker: int) -> int:
    """The sampling seed of one worker's share of one step."""
    return (seed * 1_000_003 + step) * 1009 + worker


def load_prompt_rows(prompts_dir: str) -> list[dict]:
    """The prompt, task, answer and meta of every row of a data-stage split (rl, sft or eval)."""
    from datasets import load_from_disk

    ds = load_from_disk(prompts_dir)
    missing = {"prompt", "task", "answer", "meta"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{prompts_dir}: RL prompts need columns {sorted(missing)}; has {ds.column_names}")
    return [dict(r) for r in ds.select_columns(["prompt", "task", "answer", "meta"])]


def start_manager(schedule: RolloutSchedule, prompts_dir: str, make_sampler: Callable[[], StepSampler]):
    """The manager actor (on this node, a sliver of CPU: it only coordinates)."""
    return (
        ray.remote(RolloutManager)
        .options(num_cpus=0.01, max_concurrency=8)
        .remote(schedule, prompts_dir, make_sampler)
    )


@contextmanager
def running(manager):
    """Use a manager actor (`start_manager`, `start_distill_manager`), then stop it and its workers."""
    try:
        yield manager
    finally:
        ray.get(manager.shutdown.remote())
        ray.kill(manager)
