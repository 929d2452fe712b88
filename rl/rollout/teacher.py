"""Teacher workers: Ray actors holding the frozen teacher. They sample solutions, as rollout workers
do, and score sequences: at every completion token, the teacher's k most likely tokens and their
log-probabilities at the distillation temperature, which the token-level KD losses need.

Only the top-k travels: the whole vocabulary is V fp32 values a token (196,608 bytes at V = 49152),
the top-k is k fp32 values and k int32 ids (512 bytes at k = 64). The temperature is applied here,
before the top-k, because truncated log-probabilities cannot be softened exactly afterwards.
"""

from __future__ import annotations

import torch

from rl.rollout.worker import RolloutWorker

# (prompt token ids, completion token ids)
PromptCompletion = tuple[list[int], list[int]]
# (C, k) log-probabilities, most likely first, and (C, k) int32 token ids, one row per completion token.
TopK = tuple[torch.Tensor, torch.Tensor]


def _chunk_logprobs(model, chunk: list[PromptCompletion], temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of the right-padded chunk, `(n, width, V)` on the model's device.

    In a causal model no real token attends to the padding after it, so no position ids or per-row
    offsets are needed.
    """
    width = max(len(p) + len(c) for p, c in chunk)
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (p, c) in enumerate(chunk):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _completion_rows(x: torch.Tensor, chunk: list[PromptCompletion]) -> list[torch.Tensor]:
    """Per sequence, the rows of `x` `(n, width, ...)` at the positions predicting its completion."""
    # clone: a slice pickles its whole storage, which Ray would ship to the learner.
    return [x[i, len(p) - 1 : len(p) - 1 + len(c)].clone() for i, (p, c) in enumerate(chunk)]


@torch.inference_mode()
def completion_logprobs(model, sequences: list[PromptCompletion], batch_size: int = 32) -> list[torch.Tensor]:
    """log softmax(logits) at the position predicting each completion token: `(C, V)` per sequence."""
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        out.extend(_completion_rows(_chunk_logprobs(model, chunk, 1.0).cpu(), chunk))
    return out


@torch.inference_mode()
def completion_topk(
    model, sequences: list[PromptCompletion], top_k: int | None, temperature: float, batch_size: int = 32
) -> list[TopK]:
    """The `top_k` largest of log softmax(logits / T) at each completion token, with their ids.

    `top_k` None, or at least V, takes the whole vocabulary (sorted).
    """
    out: list[TopK] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        logp = _chunk_logprobs(model, chunk, temperature)
        k = logp.shape[-1] if top_k is None else min(top_k, logp.shape[-1])
        values, ids = logp.topk(k, dim=-1)  # (n, width, k), on the device: only these cross to the CPU
        rows = _completion_rows(values.cpu(), chunk), _completion_rows(ids.int().cpu(), chunk)
        out.extend(zip(*rows, strict=True))
    return out


class TeacherWorker(RolloutWorker):
    """A rollout worker whose model is the teacher (never updated), which also scores sequences."""

    def score(self, sequences: list[PromptCompletion], top_k: int | None, temperature: float) -> list[TopK]:
        return completion_topk(self.engine.model, sequences, top_k, temperature, self.engine.max_batch_size)


def teacher_worker_class(num_cpus: float, num_gpus: float, max_restarts: int):
    """The TeacherWorker as a Ray actor class. It holds no state that changes, so a restarted one
    is as good as the old: Ray retries its calls itself."""
    import ray

    return ray.remote(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=max_restarts
    )(TeacherWorker)
