"""A group of worker actors of one role (rollout or teacher workers), called together.

`sample` deals a step's prompts round-robin over the workers and puts the groups back in prompt
order. A group whose weights change (`recover=True`: the policy's, or an on-policy student's)
survives a worker's death: the call waits for Ray's restart, reinstalls the latest weights and
retries there, or gives the share to a survivor. A frozen group (a teacher) relies on Ray's own
task retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from ray.exceptions import RayActorError

from rl.rollout.worker import RolloutBatch, RolloutParams, Trajectory

log = logging.getLogger(__name__)


class ActorGroup:
    def __init__(self, actors: list, *, recover: bool):
        self.actors = actors
        self.recover = recover
        self.restarts = 0
        # ([ObjectRef] of the latest weights (a list so Ray passes the ref), their version), set in
        # one assignment: the recovery thread must never pair one push's weights with another's version.
        self._latest: tuple[list, int] | None = None

    def __len__(self) -> int:
        return len(self.actors)

    def push(self, weights: list, version: int) -> None:
        """Install `weights` ([ObjectRef] of an HF state dict) as `version` on every worker."""
        # Newest first: a share recovered while this push runs gets these weights, not older ones.
        self._latest = (weights, version)
        pending = [a.load_weights.remote(weights[0], version) for a in self.actors]
        for i, ref in enumerate(pending):
            try:
                ray.get(ref)
            except RayActorError:  # died or restarting: wait for Ray's restart, then install
                self._on_worker(i, "load_weights", weights[0], version)

    def call(self, method: str, *args) -> list:
        """`method(*args)` on every worker, results in worker order."""
        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)

    def sample(
        self, rows: list[dict], params: RolloutParams, seed: Callable[[int], int], *, die: bool = False
    ) -> tuple[list[Trajectory], list[RolloutBatch | None]]:
        """Worker i samples rows i, i+k, ... with seed `seed(i)`; groups come back in prompt order.
        `die`: fault drill, worker 0 exits mid-call."""
        k = len(self.actors)
        shares = [rows[i::k] for i in range(k)]
        batches: list[RolloutBatch | None] = [None] * k
        refs = {
            i: self.actors[i].rollout.remote(share, 0, params, seed(i), die=die and i == 0)
            for i, share in enumerate(shares)
            if share
        }
        for i, ref in refs.items():
            batches[i] = (
                self._get_or_recover(i, ref, shares[i], params, seed(i)) if self.recover else ray.get(ref)
            )
        return interleave(batches), batches

    def _get_or_recover(
        self, i: int, ref, share: list[dict], params: RolloutParams, seed: int
    ) -> RolloutBatch:
        try:
            return ray.get(ref)
        except RayActorError as err:
            self.restarts += 1
            log.warning("worker %d died (%s); restarting it", i, type(err).__name__)
        for j in [i] + [j for j in range(len(self.actors)) if j != i]:
            try:
                if (latest := self._latest) is not None:
                    self._on_worker(j, "load_weights", latest[0][0], latest[1])
                return self._on_worker(j, "rollout", share, 0, params, seed)
            except RayActorError:
                log.warning("worker %d unavailable for share %d; trying the next", j, i)
        raise RuntimeError(f"no worker could generate share {i} (all died)")

    def _on_worker(self, i: int, method: str, *args, timeout_s: float = 120.0):
        """Call a worker method, waiting out a restart (calls fail while Ray restarts the actor)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(getattr(self.actors[i], method).remote(*args))
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def interleave(batches: list[RolloutBatch | None]) -> list[Trajectory]:
    """Put groups back in prompt order (worker i of k had prompts i, i+k, ...) and renumber them."""
    k = len(batches)
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
