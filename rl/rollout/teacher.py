"""Teacher workers: Ray actors holding the frozen teacher. They sample solutions, as rollout workers
do, and score sequences: the teacher's log-distribution over the whole vocabulary at every
completion token, which the token-level KD losses need.

The full vocabulary is shipped: our tokenizers have at most 512 tokens, so a 64-token completion is
64 x 512 fp32 values (128 KiB). A 150k-token vocabulary would want the top-k instead.
"""

from __future__ import annotations

import torch

from rl.rollout.worker import RolloutWorker

# (prompt token ids, completion token ids)
PromptCompletion = tuple[list[int], list[int]]


@torch.inference_mode()
def completion_logprobs(model, sequences: list[PromptCompletion], batch_size: int = 32) -> list[torch.Tensor]:
    """log softmax(logits) at the position predicting each completion token: `(C, V)` per sequence.

    Batches are right-padded: in a causal model no real token attends to the padding after it, so
    no position ids or per-row offsets are needed.
    """
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, (p, c) in enumerate(chunk):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attn[i, : len(p) + len(c)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        # clone: a slice pickles its whole storage, which Ray would ship to the learner.
        out.extend(logp[i, len(p) - 1 : len(p) - 1 + len(c)].clone() for i, (p, c) in enumerate(chunk))
    return out


class TeacherWorker(RolloutWorker):
    """A rollout worker whose model is the teacher (never updated), which also scores sequences."""

    def score(self, sequences: list[PromptCompletion]) -> list[torch.Tensor]:
        return completion_logprobs(self.engine.model, sequences, self.engine.max_batch_size)


def teacher_worker_class(num_cpus: float, num_gpus: float, max_restarts: int):
    """The TeacherWorker as a Ray actor class. It holds no state that changes, so a restarted one
    is as good as the old: Ray retries its calls itself."""
    import ray

    return ray.remote(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=max_restarts
    )(TeacherWorker)
