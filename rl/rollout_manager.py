"""The rollout manager: one Ray actor between the learner ranks and the rollout workers.

Learner ranks ask it for step s's batch; it has the workers sample (or hands over what it
prefetched), and it pushes each new policy version to every worker. Version bookkeeping:
version v = the weights after v optimizer steps. In `sync` mode step s trains on rollouts of
version s (on-policy); in `async` mode the rollouts of step s+1 are generated while the learner
trains step s, with version s, so they are one version stale and the learner's importance ratio
uses the log-probs recorded at sampling time.

A worker that dies is restarted by Ray (`max_restarts`); the manager reinstalls the latest
weights on it and retries its share, or gives the share to a survivor.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import ray
import torch
from ray.exceptions import RayActorError

from rl.config import RlvrConfig
from rl.grpo import group_advantages
from rl.rollout import RolloutBatch, RolloutParams, Trajectory, rollout_worker_class
from training.data import batch_indices

log = logging.getLogger(__name__)


@dataclass
class StepRollouts:
    step: int
    trajectories: list[Trajectory]  # prompt-major: each prompt's group is contiguous
    version: int  # oldest policy version among the workers' shares
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


class RolloutManager:
    """Run as a threaded Ray actor (`max_concurrency` > 1): ranks fetch while workers generate."""

    def __init__(self, cfg: RlvrConfig, model_dir: str, prompts_dir: str):
        self.cfg = cfg
        self.rows = load_prompt_rows(prompts_dir)
        worker_cls = rollout_worker_class(cfg.rollout_cpus, cfg.rollout_gpus, cfg.rollout_max_restarts)
        self.workers = [
            worker_cls.remote(
                model_dir,
                cfg.rewards,
                cfg.reward_timeout_s,
                threads=cfg.rollout_threads,
                with_reference=cfg.kl_coef > 0,
            )
            for _ in range(cfg.num_rollout_workers)
        ]
        self.params = RolloutParams(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        self._init_state()

    def _init_state(self) -> None:
        """Version and per-step bookkeeping (subclasses, e.g. rl.distill_manager, call it too)."""
        self.version = 0
        self._weights: list = []  # [ObjectRef] of the latest weights (a list so Ray passes the ref)
        self._lock = threading.Lock()
        self._steps: dict[int, Future] = {}
        self._fetched: dict[int, int] = {}
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="rollout")
        self._drilled = False
        self.restarts = 0

    # -- called by the learner ---------------------------------------------------------------

    def push_weights(self, weights: list, version: int, nbytes: int) -> dict[str, float]:
        """Install `weights` ([ObjectRef] of an HF state dict) as `version` on every worker."""
        start = time.perf_counter()
        pending = [self._load(i, weights[0], version) for i in range(len(self.workers))]
        for i, ref in enumerate(pending):
            try:
                ray.get(ref)
            except RayActorError:  # died or restarting: wait for Ray's restart, then install
                self._on_worker(i, "load_weights", weights[0], version)
        with self._lock:
            self._weights, self.version = weights, version
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
            if self.cfg.mode == "async" and step + 1 not in self._steps:
                self._submit(step + 1)  # generate the next batch while the learner trains this one
        n = len(rollouts.trajectories)
        if n % world:
            raise ValueError(f"step {step}: {n} trajectories do not split over {world} learner ranks")
        share = n // world
        return rollouts.trajectories[rank * share : (rank + 1) * share], rollouts.metrics

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)

    def worker_pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    def worker_states(self) -> list:
        return ray.get([w.state_dict.remote() for w in self.workers])

    # -- internals ---------------------------------------------------------------------------

    def _load(self, i: int, weights_ref, version: int):
        return self.workers[i].load_weights.remote(weights_ref, version)

    def _submit(self, step: int) -> Future:
        """Start generating step `step` (caller holds the lock) with the current weights."""
        version = self.version
        if step - version > self.cfg.max_staleness or (self.cfg.mode == "sync" and step != version):
            raise RuntimeError(
                f"rollouts for step {step} would use policy version {version}; mode={self.cfg.mode} "
                f"allows {'none older' if self.cfg.mode == 'sync' else f'at most {self.cfg.max_staleness} older'}"
            )
        future = self._pool.submit(self._generate, step)
        self._steps[step] = future
        return future

    def _prompt_rows(self, step: int) -> list[int]:
        n = self.cfg.prompts_per_step
        return batch_indices(step, 0, 0, world=1, micro_bs=n, accum=1, n=len(self.rows), seed=self.cfg.seed)

    def _generate(self, step: int) -> StepRollouts:
        start = time.perf_counter()
        rows = [self.rows[i] for i in self._prompt_rows(step)]
        drill = self.cfg.kill_rollout_worker_at_step == step and not self._drilled
        self._drilled |= drill
        trajectories, batches = self._sample(self.workers, rows, step, drill=drill)
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
            "rollout_worker_restarts": float(self.restarts),
        }
        return StepRollouts(step, trajectories, min(versions), wall, metrics)

    def _sample(
        self, workers: list, rows: list[dict], step: int, *, drill: bool = False
    ) -> tuple[list[Trajectory], list[RolloutBatch | None]]:
        """Worker i samples rows i, i+k, ...; groups come back in prompt order. Only the policy's
        own workers (`self.workers`) are recovered with reinstalled weights; other pools (a
        frozen teacher's) rely on Ray's task retries."""
        k = len(workers)
        shares = [(rows[i::k], i) for i in range(k)]
        batches: list[RolloutBatch | None] = [None] * k
        refs = {
            i: workers[i].rollout.remote(share, 0, self.params, self._seed(step, i), die=drill and i == 0)
            for i, (share, _) in enumerate(shares)
            if share
        }
        for i, ref in refs.items():
            own = workers is self.workers
            batches[i] = self._get_or_recover(i, ref, shares[i][0], step) if own else ray.get(ref)
        return self._interleave(shares, batches), batches

    def _seed(self, step: int, worker: int) -> int:
        return (self.cfg.seed * 1_000_003 + step) * 1009 + worker

    def _get_or_recover(self, i: int, ref, share: list[dict], step: int) -> RolloutBatch:
        """The worker's batch; if it died, wait for Ray's restart, reinstall the latest weights
        and retry there, or on a survivor when it does not come back."""
        try:
            return ray.get(ref)
        except RayActorError as err:
            self.restarts += 1
            log.warning("rollout worker %d died at step %d (%s); restarting it", i, step, type(err).__name__)
        for j in [i] + [j for j in range(len(self.workers)) if j != i]:
            try:
                if self._weights:
                    self._on_worker(j, "load_weights", self._weights[0], self.version)
                return self._on_worker(j, "rollout", share, 0, self.params, self._seed(step, i))
            except RayActorError:
                log.warning("rollout worker %d unavailable for step %d; trying the next", j, step)
        raise RuntimeError(f"step {step}: no rollout worker could generate share {i} (all died)")

    def _on_worker(self, i: int, method: str, *args, timeout_s: float = 120.0):
        """Call a worker method, waiting out a restart (calls fail while Ray restarts the actor)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(getattr(self.workers[i], method).remote(*args))
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @staticmethod
    def _interleave(shares, batches: list[RolloutBatch | None]) -> list[Trajectory]:
        """Put groups back in prompt order (worker i had prompts i, i+k, ...) and renumber them."""
        k = len(shares)
        per_prompt: dict[int, list[Trajectory]] = {}
        for i, batch in enumerate(batches):
            if batch is None:
                continue
            for t in batch.trajectories:
                per_prompt.setdefault(t.prompt_index * k + i, []).append(t)
        out = []
        for new_index, key in enumerate(sorted(per_prompt)):
            for t in per_prompt[key]:
                t.prompt_index = new_index
                out.append(t)
        return out


def load_prompt_rows(prompts_dir: str) -> list[dict]:
    """The prompt, task, answer and meta of every row of a data-stage split (rl, sft or eval)."""
    from datasets import load_from_disk

    ds = load_from_disk(prompts_dir)
    missing = {"prompt", "task", "answer", "meta"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{prompts_dir}: RL prompts need columns {sorted(missing)}; has {ds.column_names}")
    return [dict(r) for r in ds.select_columns(["prompt", "task", "answer", "meta"])]


def start_manager(cfg: RlvrConfig, model_dir: str, prompts_dir: str):
    """The manager actor (on this node, a sliver of CPU: it only coordinates)."""
    return (
        ray.remote(RolloutManager)
        .options(num_cpus=0.01, max_concurrency=8)
        .remote(cfg, model_dir, prompts_dir)
    )
