"""The one training loop: Ray Train workers, each running a DeepSpeed engine.

Pretrain, SFT and distillation (and later the GRPO learner) differ only in their `Recipe`: how a
worker builds its data and what loss a batch gives. Everything else is shared: ZeRO, AutoEP,
MuonClip, the lr schedule, checkpoint/resume through Ray Train, failure injection, metrics, the
Hugging Face export.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training import checkpoint
from training.config import ExpertParallelConfig, ModelConfig, OptimizerConfig, TrainConfig
from training.data import TokenBatch, batch_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    # (data_dir, tokenizer, seq_len) -> a source with __len__ and collate(rows) -> TokenBatch.
    make_data: Callable[[str, Any, int], Any]
    # (model, batch) -> (loss, scalar metrics, router logits or None).
    loss: Callable[[Any, TokenBatch], tuple[torch.Tensor, dict[str, float], Any]]


def lm_loss(model, batch: TokenBatch):
    """Next-token cross-entropy on labelled tokens, plus the MoE load-balancing loss."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    aux = getattr(out, "aux_loss", None)
    metrics = {"aux_loss": float(aux)} if aux is not None else {}
    return out.loss, metrics, getattr(out, "router_logits", None)


@dataclass
class TrainJob:
    """Everything a worker needs (pickled to each Ray Train worker)."""

    name: str
    recipe: Recipe
    model: ModelConfig
    train: TrainConfig
    optimizer: OptimizerConfig
    expert_parallel: ExpertParallelConfig
    tokenizer_dir: str
    data_dir: str
    export_dir: str  # the Hugging Face export lands here
    work_dir: str  # Ray Train storage: checkpoints, failure marker
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    metrics_queue: Any = None  # ray.util.queue.Queue the driver drains into its tracker
    summary: dict = field(default_factory=dict)


def _maybe_fail(job: TrainJob, step: int, rank: int) -> None:
    marker = Path(job.work_dir) / f"{job.name}.failure_injected"
    if job.train.fail_at_step == step and rank == 1 and not marker.exists():
        marker.write_text(f"worker rank 1 exited at step {step}\n")
        # Ray Train's controller registers a reported checkpoint asynchronously; a crash within
        # about a second of the report can lose it (the run then resumes from the one before).
        # The drill waits so that it always tests recovery from the latest checkpoint.
        time.sleep(5)
        os._exit(1)  # abrupt, like an OOM kill: no exception, no cleanup


def _deepspeed_set_param(zero_stage: int):
    """QK-clip's parameter setter: updates DeepSpeed's fp32 master copy as well as the module."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    def set_param(param, fn):
        master = safe_get_full_fp32_param(param)
        if master is None:  # no ZeRO optimizer: the module weight is the master
            param.data.copy_(fn(param.data))
            return
        new = fn(master)
        safe_set_full_fp32_param(param, new)
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=zero_stage == 3):
            param.data.copy_(new.to(param.dtype))

    return set_param


def _worker(config: dict) -> None:
    job: TrainJob = config["job"]
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if job.use_gpu else "cpu")
    import deepspeed
    import ray.train
    import torch._dynamo

    from training.deepspeed_config import deepspeed_config
    from training.models import build_model, is_moe, parameter_counts
    from training.optim import lr_factor, route_routers_to_adamw, scheduler
    from training.qk_clip import apply_qk_clip, attach_recorder
    from training.throughput import expert_token_share, flops_per_token, measure_peak_flops, mfu
    from training.tokenizer import load_tokenizer

    # Ray Train logs every report at INFO from each worker; our progress bar says the same once.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if job.use_gpu:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(job.cpus_per_worker)))
        # DeepSpeed's Muon compiles its Newton-Schulz step with torch.compile: 46 s of inductor
        # + gcc on the first CPU step, for no speed-up at these sizes. Eager on CPU.
        torch._dynamo.config.disable = True
    tcfg, ocfg = job.train, job.optimizer

    tok = load_tokenizer(job.tokenizer_dir)
    data = job.recipe.make_data(job.data_dir, tok, tcfg.seq_len)
    model = build_model(job.model, tok)
    counts = parameter_counts(model)
    recorder = attach_recorder(model)
    if ocfg.name == "muonclip":
        route_routers_to_adamw()
    hf = model.config
    n_experts = (
        (getattr(hf, "num_experts", None) or getattr(hf, "num_local_experts", 0)) if is_moe(model) else 0
    )
    ds_cfg = deepspeed_config(
        tcfg,
        ocfg,
        job.expert_parallel,
        world_size=world,
        model_type=hf.model_type,
        num_experts=n_experts,
        on_gpu=job.use_gpu,
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        config=ds_cfg,
        lr_scheduler=scheduler(tcfg.warmup_steps, tcfg.max_steps, tcfg.min_lr_ratio),
    )
    accum = ds_cfg["gradient_accumulation_steps"]
    local_params = sum(
        int(torch.Size(getattr(p, "ds_shape", p.shape)).numel()) for p in engine.module.parameters()
    )
    expert_local = sum(
        int(torch.Size(getattr(p, "ds_shape", p.shape)).numel())
        for n, p in engine.module.named_parameters()
        if ".experts." in n
    )
    print(
        f"[{job.name}] rank {rank}/{world}: {local_params:,} of {counts['total']:,} parameters local "
        f"({expert_local:,} expert parameters; autoep_size="
        f"{ds_cfg.get('expert_parallel', {}).get('autoep_size', 1)})",
        flush=True,
    )

    start = checkpoint.restore(engine)
    if start:
        print(f"[{job.name}] rank {rank}: resumed from step {start}", flush=True)
    peak = tcfg.peak_flops_per_worker or measure_peak_flops(device)
    embed = engine.module.get_input_embeddings().weight
    embed_params = int(torch.Size(getattr(embed, "ds_shape", embed.shape)).numel())
    fpt = flops_per_token(
        counts["active"],
        embed_params,
        hf.num_hidden_layers,
        hf.num_attention_heads * getattr(hf, "head_dim", hf.hidden_size // hf.num_attention_heads),
        tcfg.seq_len,
    )
    set_param = _deepspeed_set_param(tcfg.zero_stage)
    top_k = getattr(hf, "num_experts_per_tok", 0)

    engine.train()
    for step in range(start, tcfg.max_steps):
        _maybe_fail(job, step, rank)
        t0 = time.perf_counter()
        recorder.reset()
        losses, parts, shares, tokens = [], {}, None, 0
        for micro in range(accum):
            rows = batch_indices(
                step,
                micro,
                rank,
                world=world,
                micro_bs=tcfg.micro_batch_per_worker,
                accum=accum,
                n=len(data),
                seed=tcfg.seed,
            )
            batch = data.collate(rows).to(device)
            loss, m, router_logits = job.recipe.loss(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss))
            tokens += batch.num_tokens
            for k, v in m.items():
                parts[k] = parts.get(k, 0.0) + v / accum
            if router_logits and top_k:
                shares = expert_token_share(tuple(r.detach() for r in router_logits), top_k)
        recorder.all_reduce()
        clipped = (
            apply_qk_clip(engine.module, recorder, ocfg.qk_clip_tau, set_param)
            if (ocfg.name == "muonclip" and ocfg.qk_clip_tau)
            else 0
        )
        dt = time.perf_counter() - t0
        global_tokens = tokens * world  # ranks see equal-sized batches
        metrics = {
            "step": step + 1,
            "loss": sum(losses) / len(losses),
            **parts,
            # The AdamW lr; Muon's is optimizer.muon_lr_ratio times it.
            "lr": tcfg.lr
            * lr_factor(step, warmup=tcfg.warmup_steps, total=tcfg.max_steps, min_ratio=tcfg.min_lr_ratio),
            "tokens_per_s": global_tokens / dt,
            "step_time_s": dt,
            "mfu": mfu(global_tokens / dt, fpt, peak * world),
            "max_attn_logit": recorder.overall_max(),
            "qk_clipped_heads": clipped,
        }
        if shares:
            metrics.update({f"expert_share/{i}": s for i, s in enumerate(shares)})
        if rank == 0 and job.metrics_queue is not None and (step + 1) % tcfg.log_every == 0:
            job.metrics_queue.put(metrics)
        # Ray Train's report is a cross-worker barrier through the controller (~2 s a call
        # measured here), so it only carries checkpoints; per-step metrics go through the queue.
        if (step + 1) % tcfg.checkpoint_every == 0 or step + 1 == tcfg.max_steps:
            checkpoint.report(engine, step + 1, metrics)

    engine.eval()
    checkpoint.export_hf(engine, job.export_dir, tok, rank)


def _drain(queue, tracker, total: int, stop: threading.Event, last: dict) -> None:
    from ray.util.queue import Empty

    bar = tracker.progress(total=total, desc="train")
    while not (stop.is_set() and queue.empty()):
        try:
            m = queue.get(timeout=0.5)
        except Empty:
            continue
        step = int(m.pop("step"))
        tracker.log(m, step=step)
        last.update(m, step=step)
        bar.n = step
        bar.set_postfix(loss=f"{m['loss']:.3f}", refresh=True)
    bar.close()


def fit(job: TrainJob, tracker) -> dict:
    """Run `job` on Ray Train; stream worker metrics into `tracker`; returns the last metrics."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    job.metrics_queue = Queue()
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=job.num_workers,
            use_gpu=job.use_gpu,
            resources_per_worker={"CPU": job.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if job.use_gpu else "gloo"),
        run_config=RunConfig(
            name=job.name,
            storage_path=str(Path(job.work_dir).resolve()),
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.keep_checkpoints),
        ),
    )
    stop, last = threading.Event(), {}
    drainer = threading.Thread(
        target=_drain, args=(job.metrics_queue, tracker, job.train.max_steps, stop, last), daemon=True
    )
    drainer.start()
    try:
        result = trainer.fit()
    finally:
        stop.set()
        drainer.join(timeout=30)
    if result.error is not None:
        raise RuntimeError(f"training {job.name!r} failed") from result.error
    return {**last, **(result.metrics or {})}
