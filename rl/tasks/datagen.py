"""Data generation: problems drawn on Ray and split into pretrain, SFT, RL and held-out eval.

Problems come from each task's stream in fixed-size blocks (`task.block_size`), one Ray task per
block, consumed in block order: the data depend on the seed and the block size only, not on how
many workers ran. Each problem's split is a hash of its id, itself a hash of the problem's
canonical form: the held-out `eval` region of the problem space is the same for every seed and
count, and a problem can never be on both sides. The training region is cut the same way into
pretrain, SFT and RL parts sized like the requested counts, so the three are disjoint too. A final
check on the written records raises if any eval prompt still shows up in training data.
(`training.corpus` turns the samples into the datasets and tokenizer the training loop reads.)
"""

from __future__ import annotations

import hashlib
import math
import random
import warnings
from typing import Any

import ray
from omegaconf import OmegaConf

from rl.tasks.base import Sample, generate_block, get_task
from rl.tasks.config import TaskConfig

TRAIN_SPLITS = ("pretrain", "sft", "rl")
SPLITS = (*TRAIN_SPLITS, "eval")
# The TaskConfig field that sets each split's size, for error messages.
COUNT_FIELDS = {"pretrain": "pretrain_docs", "sft": "sft_pairs", "rl": "rl_prompts", "eval": "eval_prompts"}
# Consecutive blocks that add nothing before a generated task is declared exhausted.
MAX_IDLE_BLOCKS = 100
# Most blocks in flight at once, which bounds the driver's memory.
MAX_WAVE_BLOCKS = 256

_generate_block = ray.remote(generate_block)


def as_task_config(node: Any) -> TaskConfig:
    """`cfg.task` as a validated TaskConfig, whether Hydra passed a DictConfig or a dataclass."""
    if isinstance(node, TaskConfig):
        return node
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), node))


def apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to `total`, proportional to `weights` (largest remainder)."""
    exact = {name: total * w / sum(weights.values()) for name, w in weights.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def assign_split(sample_id: str, eval_fraction: float, train_shares: dict[str, float]) -> str:
    """The split a problem belongs to, from its id alone."""
    u = int(hashlib.sha256(f"split/{sample_id}".encode()).hexdigest()[:15], 16) / 16**15
    if u < eval_fraction:
        return "eval"
    v = (u - eval_fraction) / (1 - eval_fraction)
    for split in TRAIN_SPLITS:
        v -= train_shares[split]
        if v < 0:
            return split
    return max(train_shares, key=train_shares.__getitem__)  # float rounding at the very top


def collect(
    cfg: TaskConfig, cfg_ref: ray.ObjectRef, task: str, quotas: dict[str, int], tracker: Any
) -> dict[str, list[Sample]]:
    """Read `task`'s blocks in order until every split has its quota (or a finite task runs out)."""
    counts = {split: getattr(cfg, COUNT_FIELDS[split]) for split in TRAIN_SPLITS}
    shares = {split: n / sum(counts.values()) for split, n in counts.items()}
    probability = {"eval": cfg.eval_fraction} | {s: (1 - cfg.eval_fraction) * shares[s] for s in TRAIN_SPLITS}
    chosen: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    finite = get_task(task).finite
    next_block, idle, exhausted = 0, 0, False
    with tracker.progress(total=sum(quotas.values()), desc=f"data {task}") as bar:
        while not exhausted and (
            missing := {s: quotas[s] - len(chosen[s]) for s in SPLITS if len(chosen[s]) < quotas[s]}
        ):
            draws = max(n / probability[s] for s, n in missing.items())
            wave = min(MAX_WAVE_BLOCKS, math.ceil(1.2 * draws / cfg.block_size))
            refs = [
                _generate_block.remote(cfg_ref, task, cfg.seed, index, cfg.block_size)
                for index in range(next_block, next_block + wave)
            ]
            next_block += wave
            for block in ray.get(refs):
                exhausted = exhausted or not block
                added = 0
                for sample in block:
                    if sample.id in seen:
                        continue
                    seen.add(sample.id)
                    split = assign_split(sample.id, cfg.eval_fraction, shares)
                    if len(chosen[split]) < quotas[split]:
                        chosen[split].append(sample)
                        added += 1
                bar.update(added)
                idle = 0 if added else idle + 1
                if not finite and idle >= MAX_IDLE_BLOCKS and any(len(chosen[s]) < quotas[s] for s in SPLITS):
                    raise RuntimeError(_exhausted_message(cfg, task, chosen, quotas, next_block))
            tracker.log(
                {f"data/{task}/{split}": len(chosen[split]) for split in SPLITS}
                | {f"data/{task}/blocks": next_block}
            )
    for split in SPLITS:
        if len(chosen[split]) < quotas[split]:
            warnings.warn(
                f"task {task!r} ran out of problems: {split} has {len(chosen[split])} of the {quotas[split]} "
                f"asked for (task.{COUNT_FIELDS[split]}); the files hold too few distinct problems",
                stacklevel=2,
            )
    return chosen


def _exhausted_message(cfg: TaskConfig, task: str, chosen: dict, quotas: dict, blocks: int) -> str:
    short = {s: f"{len(chosen[s])}/{quotas[s]}" for s in SPLITS if len(chosen[s]) < quotas[s]}
    return (
        f"task {task!r} found no new problem in {MAX_IDLE_BLOCKS} consecutive blocks ({blocks} blocks of "
        f"{cfg.block_size} drawn); still short: {short}. The problem space at this difficulty is used up: "
        f"lower the counts ({', '.join(f'task.{COUNT_FIELDS[s]}' for s in short)}) or widen task.{task}"
    )


def draw_samples(task: Any, tracker: Any) -> tuple[TaskConfig, dict[str, list[Sample]]]:
    """`task` (a TaskConfig or its DictConfig) validated, and its problems per split, shuffled by
    seed. `tracker` (training.tracking.Tracker) shows progress and records counts per block."""
    task_cfg = as_task_config(task)
    for name in task_cfg.tasks:
        get_task(name)  # unknown names fail here, before any work
    mixture = task_cfg.mixture()
    quotas = {split: apportion(getattr(task_cfg, COUNT_FIELDS[split]), mixture) for split in SPLITS}
    cfg_ref = ray.put(task_cfg)
    samples: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for name in task_cfg.tasks:
        chosen = collect(task_cfg, cfg_ref, name, {s: quotas[s][name] for s in SPLITS}, tracker)
        for split in SPLITS:
            samples[split] += chosen[split]
    for split in SPLITS:
        random.Random(f"{task_cfg.seed}/{split}").shuffle(samples[split])
    return task_cfg, samples
