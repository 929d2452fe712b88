"""How well a student drafts for its teacher: top-1 agreement and speculative-decoding figures.

Both are measured on held-out prompts with greedy decoding at batch 1, the setting in which a draft
model pays off. Under greedy verification a draft token is accepted exactly when it is the
teacher's argmax, so the acceptance rate follows the top-1 agreement on the teacher's own path
(DistillSpec, Zhou et al. 2023). The speedup is tokens/s with the draft over tokens/s of the
teacher alone, on the same prompts, the engines taking turns prompt by prompt.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rl.distill.kd import top1_agreement
from rl.rollout.teacher import completion_logprobs
from serving.config import SpeculativeConfig
from serving.engine import Engine
from serving.metrics import summarize
from serving.protocol import Completion, SamplingParams
from training.models import load_model

TEACHER = "teacher"  # the engine without a draft, in `_interleaved`'s results


def mean_top1_agreement(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> float:
    """Share of all completion positions (over sequences of different lengths) where the two
    models' most likely tokens are the same; per position it is rl.distill.kd.top1_agreement."""
    same = sum(float(top1_agreement(s, t).sum()) for t, s in zip(teacher, student, strict=True))
    return same / max(1, sum(len(t) for t in teacher))


def _interleaved(
    engines: dict[str, Engine], prompts: list[str], params: SamplingParams
) -> dict[str, tuple[list[Completion], dict]]:
    """Each engine's completions and figures, running the engines in turn prompt by prompt, so
    that a change in machine load (a shared CPU) falls on all of them alike."""
    outs: dict[str, list[Completion]] = {name: [] for name in engines}
    seconds = dict.fromkeys(engines, 0.0)
    for engine in engines.values():
        engine.generate(prompts[:1], params)  # warm-up: first-call allocations stay out of the timing
    for prompt in prompts:
        for name, engine in engines.items():
            start = time.perf_counter()
            outs[name].extend(engine.generate([prompt], params))
            seconds[name] += time.perf_counter() - start
    return {name: (outs[name], summarize(outs[name], seconds[name])) for name in engines}


def draft_report(
    teacher_dir: str | Path, drafts: dict[str, Path], prompts: list[str], *, k: int, max_new_tokens: int
) -> dict[str, float]:
    """For each draft model (keyed by its metric prefix): top-1 agreement with the teacher on the
    teacher's greedy completions, and acceptance rate and speedup drafting `k` tokens for it."""
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, logprobs=False)
    speculative = SpeculativeConfig(method="draft", k=k)
    engines = {TEACHER: Engine.from_pretrained(teacher_dir, max_batch_size=1)} | {
        prefix: Engine.from_pretrained(teacher_dir, draft_dir=d, speculative=speculative, max_batch_size=1)
        for prefix, d in drafts.items()
    }
    runs = _interleaved(engines, prompts, params)
    reference, alone = runs.pop(TEACHER)
    teacher = engines[TEACHER]
    sequences = [(c.prompt_token_ids, c.token_ids) for c in reference]
    teacher_lp = completion_logprobs(teacher.model, sequences)
    out = {"teacher_tokens_per_s": alone["tokens_per_s"]}
    for prefix, (outs, spec) in runs.items():
        student_lp = completion_logprobs(load_model(drafts[prefix]).to(teacher.device), sequences)
        out.update(
            {
                f"{prefix}top1_agreement": mean_top1_agreement(teacher_lp, student_lp),
                f"{prefix}acceptance_rate": spec["acceptance_rate"],
                f"{prefix}mean_accepted_length": spec["mean_accepted_length"],
                f"{prefix}speedup": spec["tokens_per_s"] / alone["tokens_per_s"],
                # Greedy speculative decoding must reproduce the teacher's own greedy output.
                f"{prefix}same_as_teacher": sum(
                    o.token_ids == r.token_ids for o, r in zip(outs, reference, strict=True)
                )
                / len(outs),
            }
        )
    return out
