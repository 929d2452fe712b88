"""Rollout workers: Ray actors that hold a policy copy in the serving engine, sample groups of
completions with their log-probabilities, and score them with the verifiable rewards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Trajectory:
    """One sampled completion of one prompt, with what the learner needs to train on it."""

    prompt_index: int  # index into the step's prompts; a group shares it
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # the sampling policy's log pi(token), one per completion token
    reward: float
    correct: bool
    ref_logprobs: list[float] | None = None  # the frozen reference's, when a KL term is on
    advantage: float = 0.0  # set by the rollout manager once the whole group is in
    # When distilling, at each completion token: (C, k) a teacher's k largest log-probabilities (at
    # the distillation temperature, most likely first) and (C, k) int32 their token ids.
    teacher_logprobs: torch.Tensor | None = None
    teacher_ids: torch.Tensor | None = None


@dataclass
class RolloutBatch:
    trajectories: list[Trajectory]
    version: int  # policy version (optimizer steps applied) that generated them
    seconds: float
    reward_timeouts: int


@dataclass(frozen=True)
class RolloutParams:
    group_size: int
    max_tokens: int
    temperature: float
    top_p: float = 1.0


class RolloutWorker:
    """A Ray actor (see `rollout_worker_class`): the engine plus the reward functions."""

    def __init__(
        self,
        model_dir: str,
        rewards: Sequence[Mapping[str, Any]],
        reward_timeout_s: float,
        *,
        max_batch_size: int = 64,
        threads: int = 1,
        quantize: str | None = None,
        with_reference: bool = False,
    ):
        from rl.rollout.rewards import RewardScorer, instantiate_rewards
        from serving.engine import Engine

        torch.set_num_threads(threads)
        self.engine = Engine.from_pretrained(
            model_dir, device="auto", max_batch_size=max_batch_size, quantize=quantize
        )
        self.scorer = RewardScorer(instantiate_rewards(rewards), reward_timeout_s)
        # The frozen reference for the KL term: the starting policy, never updated.
        self.reference = Engine.from_pretrained(model_dir, device="auto").model if with_reference else None
        self.version = 0

    def pid(self) -> int:
        return os.getpid()

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Install the learner's weights (Hugging Face names) as policy `version`; returns the
        version held. Never goes back: a recovery that re-sends the weights it knew of can race
        the push of a newer version (seen with async rollouts), and must not undo it."""
        if version < self.version:
            return self.version
        self.engine.load_weights(state)
        self.version = version
        return version

    def state_dict(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, weights): lets a test compare a worker's policy with the learner's."""
        return self.version, {k: v.detach().clone() for k, v in self.engine.float_model.state_dict().items()}

    def rollout(
        self, rows: list[dict], first_index: int, params: RolloutParams, seed: int, die: bool = False
    ) -> RolloutBatch:
        """Sample `params.group_size` completions for each row (prompt, task, answer, meta)."""
        from rl.rollout.rewards import scored
        from serving.protocol import SamplingParams

        if die:  # fault drill: the process vanishes mid-call, as with an OOM kill
            os._exit(1)
        start = time.perf_counter()
        timeouts_before = self.scorer.timeouts
        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            n=params.group_size,
            seed=seed,
        )
        outs = self.engine.generate([r["prompt"] for r in rows], sampling)
        items = [scored(o.text, len(o.token_ids), params.max_tokens, rows[o.prompt_index]) for o in outs]
        rewards = self.scorer.score(items)
        correct = [self._correct(item) for item in items]
        refs = (
            self._reference_logprobs(outs, params.temperature)
            if self.reference is not None
            else [None] * len(outs)
        )
        trajectories = [
            Trajectory(
                prompt_index=first_index + o.prompt_index,
                prompt_ids=o.prompt_token_ids,
                completion_ids=o.token_ids,
                logprobs=o.logprobs,
                reward=r,
                correct=ok,
                ref_logprobs=ref,
            )
            for o, r, ok, ref in zip(outs, rewards, correct, refs, strict=True)
        ]
        return RolloutBatch(
            trajectories, self.version, time.perf_counter() - start, self.scorer.timeouts - timeouts_before
        )

    @staticmethod
    def _correct(item) -> bool:
        from rl.tasks import verify

        return verify(item.task, item.text, item.answer, item.meta) > 0

    @torch.inference_mode()
    def _reference_logprobs(self, outs, temperature: float) -> list[list[float]]:
        from rl.tokens import token_logprobs

        result = []
        for o in outs:  # one sequence at a time: no padding to get wrong, and the KL path is optional
            ids = torch.tensor([o.prompt_token_ids + o.token_ids], device=self.engine.device)
            logits = self.reference(input_ids=ids).logits[:, :-1]
            lp = token_logprobs(logits, ids[:, 1:], temperature)[0, len(o.prompt_token_ids) - 1 :]
            result.append(lp.tolist())
        return result


def rollout_worker_class(num_cpus: float, num_gpus: float, max_restarts: int):
    """The RolloutWorker as a Ray actor class with its resources and restart policy."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0)(
        RolloutWorker
    )
