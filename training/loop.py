"""The one training loop: Ray Train workers, each running a DeepSpeed engine.

Pretrain, SFT and distillation (and later the GRPO learner) differ only in their `Recipe`: how a
worker builds its data and what loss a batch gives. Everything else is shared: ZeRO, AutoEP,
MuonClip, the lr schedule, checkpoint/resume through Ray Train, failure injection, metrics, the
Hugging Face export.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from training import checkpoint, validation
from training.config import ExpertParallelConfig, LoraConfig, ModelConfig, OptimizerConfig, TrainConfig
from training.data import TokenBatch, batch_indices
from training.tracking import record_cost

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """Where a worker's batches come from: a dataset on disk, or rollouts generated on the fly."""

    def step_batches(
        self, step: int, rank: int, world: int, accum: int
    ) -> tuple[list[Any], dict[str, float]]:
        """This rank's `accum` micro-batches of optimizer step `step`, and metrics about them."""
        ...


@dataclass(frozen=True)
class Recipe:
    # (job, tokenizer) -> the BatchSource each worker draws its micro-batches from.
    make_source: Callable[[TrainJob, Any], BatchSource]
    # (model, batch) -> (loss, scalar metrics, router logits or None).
    loss: Callable[[Any, Any], tuple[torch.Tensor, dict[str, float], Any]]
    # (engine, version, rank) -> metrics; run on every rank before the first step (version = the
    # start step) and after each optimizer step. GRPO pushes the new weights to its rollout workers.
    after_step: Callable[[Any, int, int], dict[str, float]] | None = None


@dataclass(frozen=True)
class DatasetSource:
    """Micro-batches drawn from a dataset as a pure function of the step (see `batch_indices`)."""

    data: Any  # __len__, collate(rows) -> TokenBatch, and stats: counts of how its rows were built
    micro_bs: int
    seed: int
    # The last `held_out` rows: never trained on, evaluated every `train.eval_every` steps.
    held_out: int = 0

    def step_batches(
        self, step: int, rank: int, world: int, accum: int
    ) -> tuple[list[Any], dict[str, float]]:
        batches = [
            self.data.collate(
                batch_indices(
                    step,
                    micro,
                    rank,
                    world=world,
                    micro_bs=self.micro_bs,
                    accum=accum,
                    n=len(self.data) - self.held_out,
                    seed=self.seed,
                )
            )
            for micro in range(accum)
        ]
        return batches, {}

    def held_out_batches(self, rank: int, world: int) -> list[Any]:
        """This rank's equal share of the held-out rows (training.validation.HeldOut)."""
        per_rank = self.held_out // world
        first = len(self.data) - self.held_out + rank * per_rank
        return [
            self.data.collate(list(range(first + i, first + min(i + self.micro_bs, per_rank))))
            for i in range(0, per_rank, self.micro_bs)
        ]


def data_metrics(source: BatchSource) -> dict[str, float]:
    """A dataset source's `stats` (records kept, dropped, truncated, packed rows) as metrics named
    `data_<count>`; {} for sources that build their batches otherwise (rollouts)."""
    if not isinstance(source, DatasetSource):
        return {}
    return {f"data_{k}": v for k, v in source.data.stats.items()}


def _dataset_source(dataset_cls, job: TrainJob, tokenizer) -> DatasetSource:
    data = dataset_cls.from_config(job.data_dir, tokenizer, job.train)
    if job.train.eval_rows >= len(data):
        raise ValueError(
            f"{job.name}: eval_rows={job.train.eval_rows} must be less than the {len(data)} rows of {job.data_dir}"
        )
    return DatasetSource(data, job.train.micro_batch_per_worker, job.train.seed, job.train.eval_rows)


def dataset_recipe(dataset_cls, loss=None) -> Recipe:
    """A recipe over a dataset class built by `from_config(data_dir, tokenizer, train)`, with
    `__len__`, `collate` and `stats`."""
    return Recipe(make_source=partial(_dataset_source, dataset_cls), loss=loss or lm_loss)


def lm_loss(model, batch: TokenBatch):
    """Next-token cross-entropy on labelled tokens, plus the MoE load-balancing loss."""
    out = model(**batch.model_inputs(), labels=batch.labels)
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
    lora: LoraConfig = field(default_factory=LoraConfig)
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


@dataclass
class _Worker:
    """What one Ray Train worker built before its first step (`_build`)."""

    job: TrainJob
    engine: Any
    source: BatchSource
    tokenizer: Any
    recorder: Any  # training.qk_clip's max-attention-logit recorder
    device: torch.device
    rank: int
    world: int
    accum: int
    # Constant through the run, reported with every checkpoint so that `fit` returns them:
    # params_total and params_active of the whole model, and the dataset's data_* counts.
    summary: dict[str, float]
    flops_per_token: float
    peak_flops: float
    set_param: Callable
    top_k: int


def _setup_process(job: TrainJob) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if job.use_gpu else "cpu")
    # DeepSpeed JIT-builds its ops into one cache shared by every Python environment on the
    # machine; two checkouts with different include paths then rebuild each other's ops on every
    # start (minutes each). One cache per environment.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    # Ray Train logs every report at INFO from each worker; our progress bar says the same once.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if not job.use_gpu:
        import torch._dynamo

        torch.set_num_threads(max(1, int(job.cpus_per_worker)))
        # DeepSpeed's Muon compiles its Newton-Schulz step with torch.compile: 46 s of inductor
        # + gcc on the first CPU step, for no speed-up at these sizes. Eager on CPU.
        torch._dynamo.config.disable = True


def _build(job: TrainJob) -> _Worker:
    """Model, DeepSpeed engine (restored from the latest checkpoint) and batch source of this rank."""
    import deepspeed
    import ray.train

    from training.deepspeed_config import deepspeed_config
    from training.models import build_model, is_moe, parameter_counts
    from training.optim import route_routers_to_adamw, scheduler
    from training.qk_clip import attach_recorder
    from training.throughput import flops_per_token, measure_peak_flops
    from training.tokenizer import load_tokenizer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", ctx.get_local_rank()) if job.use_gpu else torch.device("cpu")
    if job.use_gpu:
        torch.cuda.set_device(device)
    tcfg, ocfg = job.train, job.optimizer
    tok = load_tokenizer(job.tokenizer_dir)
    source = job.recipe.make_source(job, tok)
    model = build_model(job.model, tok)
    counts = parameter_counts(model)
    if job.lora.enabled:
        model = _with_lora(job, model)
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
        # With LoRA only the adapters go to the optimizer; otherwise DeepSpeed takes every parameter.
        model_parameters=[p for p in model.parameters() if p.requires_grad] if job.lora.enabled else None,
        config=ds_cfg,
        lr_scheduler=scheduler(tcfg.warmup_steps, tcfg.max_steps, tcfg.min_lr_ratio),
    )
    local_params = sum(_numel(p) for p in engine.module.parameters())
    expert_local = sum(_numel(p) for n, p in engine.module.named_parameters() if ".experts." in n)
    print(
        f"[{job.name}] rank {rank}/{world}: {local_params:,} of {counts['total']:,} parameters local "
        f"({expert_local:,} expert parameters; autoep_size="
        f"{ds_cfg.get('expert_parallel', {}).get('autoep_size', 1)})",
        flush=True,
    )
    embed_params = _numel(engine.module.get_input_embeddings().weight)
    fpt = flops_per_token(
        counts["active"],
        embed_params,
        hf.num_hidden_layers,
        hf.num_attention_heads * getattr(hf, "head_dim", hf.hidden_size // hf.num_attention_heads),
        tcfg.seq_len,
    )
    return _Worker(
        job=job,
        engine=engine,
        source=source,
        tokenizer=tok,
        recorder=recorder,
        device=device,
        rank=rank,
        world=world,
        accum=ds_cfg["gradient_accumulation_steps"],
        summary={"params_total": counts["total"], "params_active": counts["active"]} | data_metrics(source),
        flops_per_token=fpt,
        peak_flops=tcfg.peak_flops_per_worker or measure_peak_flops(device),
        set_param=_deepspeed_set_param(tcfg.zero_stage),
        top_k=getattr(hf, "num_experts_per_tok", 0),
    )


def _with_lora(job: TrainJob, model):
    from training.lora import apply_lora
    from training.models import is_moe

    if job.train.zero_stage == 3:
        raise ValueError(f"{job.name}: LoRA runs with ZeRO stage 0-2; got train.zero_stage=3")
    if is_moe(model) and job.expert_parallel.enabled:
        # Not tried: AutoEP swaps the MoE layers of the model it is given, and a peft wrapper
        # renames every module under it. Fail rather than train something unverified.
        raise ValueError(f"{job.name}: LoRA on an MoE model needs expert_parallel.enabled=false")
    return apply_lora(model, job.lora)


def _numel(p) -> int:
    """A parameter's full size, also when ZeRO-3 has partitioned it away (`ds_shape`)."""
    return int(torch.Size(getattr(p, "ds_shape", p.shape)).numel())


def _step(w: _Worker, step: int) -> dict[str, float]:
    """One optimizer step (its micro-batches, then QK-clip); returns the step's metrics."""
    from training.optim import lr_factor
    from training.qk_clip import apply_qk_clip
    from training.throughput import expert_token_share, mfu

    tcfg, ocfg, engine = w.job.train, w.job.optimizer, w.engine
    t0 = time.perf_counter()
    w.recorder.reset()
    losses, parts, shares, tokens = [], {}, None, 0
    batches, source_metrics = w.source.step_batches(step, w.rank, w.world, w.accum)
    t_data = time.perf_counter() - t0
    for batch in batches:
        batch = batch.to(w.device)
        loss, m, router_logits = w.job.recipe.loss(engine, batch)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
        tokens += batch.num_tokens
        for k, v in m.items():
            parts[k] = parts.get(k, 0.0) + v / w.accum
        if router_logits and w.top_k:
            shares = expert_token_share(tuple(r.detach() for r in router_logits), w.top_k)
    w.recorder.all_reduce()
    clipped = (
        apply_qk_clip(engine.module, w.recorder, ocfg.qk_clip_tau, w.set_param)
        if (ocfg.name == "muonclip" and ocfg.qk_clip_tau)
        else 0
    )
    t_update = time.perf_counter() - t0 - t_data
    hook_metrics = w.job.recipe.after_step(engine, step + 1, w.rank) if w.job.recipe.after_step else {}
    dt = time.perf_counter() - t0
    global_tokens = tokens * w.world  # ranks see about equal-sized batches
    metrics = {
        "step": step + 1,
        "loss": sum(losses) / len(losses),
        **parts,
        # The AdamW lr; Muon's is optimizer.muon_lr_ratio times it.
        "lr": tcfg.lr
        * lr_factor(step, warmup=tcfg.warmup_steps, total=tcfg.max_steps, min_ratio=tcfg.min_lr_ratio),
        "tokens_per_s": global_tokens / dt,
        "step_time_s": dt,
        # Time to get this step's batches (waiting for rollouts, for GRPO) and to train on them.
        "data_time_s": t_data,
        "update_time_s": t_update,
        **source_metrics,
        **hook_metrics,
        "mfu": mfu(global_tokens / dt, w.flops_per_token, w.peak_flops * w.world),
        "max_attn_logit": w.recorder.overall_max(),
        "qk_clipped_heads": clipped,
    }
    if shares:
        metrics.update({f"expert_share/{i}": s for i, s in enumerate(shares)})
    return metrics


def _after_step(w: _Worker, step: int, metrics: dict[str, float]) -> None:
    """Held-out eval, the driver's metrics stream and checkpoints, each when due after `step`."""
    import ray.train

    tcfg, done = w.job.train, step + 1
    # --- sweep hook (training/validation.py): held-out metrics every `eval_every` steps, reported
    # through Ray Train (in a Tune trial, on to ASHA); checkpoint steps carry them in their report.
    if validation.eval_due(tcfg, done):
        metrics.update(
            validation.held_out_metrics(w.engine, w.source, w.job.recipe.loss, w.rank, w.world, w.device)
        )
        if not validation.checkpoint_due(tcfg, done):
            ray.train.report(metrics)
    # --- end sweep hook ---
    if w.rank == 0 and w.job.metrics_queue is not None and done % tcfg.log_every == 0:
        w.job.metrics_queue.put(metrics)
    # Ray Train's report is a cross-worker barrier through the controller (~2 s a call
    # measured here), so it only carries checkpoints; per-step metrics go through the queue.
    # The last one also carries the parameter counts `fit` returns.
    if done % tcfg.checkpoint_every == 0 or done == tcfg.max_steps:
        checkpoint.report(w.engine, done, metrics | w.summary)


def _log_data(w: _Worker) -> None:
    """Rank 0 logs how its dataset was built (records dropped, truncated, packed), once at start;
    the counts reach the manifest through `summary`."""
    data = {k: v for k, v in w.summary.items() if k.startswith("data_")}
    if w.rank == 0 and data:
        print(f"[{w.job.name}] data: " + ", ".join(f"{k}={v:.4g}" for k, v in data.items()), flush=True)


def _worker(config: dict) -> None:
    job: TrainJob = config["job"]
    _setup_process(job)
    w = _build(job)
    start = checkpoint.restore(w.engine)
    if start:
        print(f"[{job.name}] rank {w.rank}: resumed from step {start}", flush=True)
    _log_data(w)
    w.engine.train()
    if job.recipe.after_step:  # e.g. GRPO installs the start weights on its rollout workers
        job.recipe.after_step(w.engine, start, w.rank)
    for step in range(start, job.train.max_steps):
        _maybe_fail(job, step, w.rank)
        _after_step(w, step, _step(w, step))
    if start >= job.train.max_steps:  # an earlier attempt trained it all and died exporting
        import ray.train

        ray.train.report({"step": start, **w.summary})
    w.engine.eval()
    checkpoint.export_hf(w.engine, job.export_dir, w.tokenizer, w.rank)


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


def _tune_callbacks() -> list:
    """Inside a Ray Tune trial: forward every `ray.train.report` of the run to that trial.

    With Ray Train V2 (the default in Ray 2.60) Tune runs a trainer only from a Tune function
    that calls `trainer.fit()` (`Tuner(trainer)` is deprecated and rejects V2 trainers);
    TuneReportCallback carries the reports across. Ray has no public "in a Tune trial" check:
    `_in_tune_session` is the one TuneReportCallback itself uses (it raises outside a trial).
    """
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    if not _in_tune_session():
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def make_trainer(job: TrainJob):
    """The Ray Train `TorchTrainer` that runs `job` (its workers run `_worker`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    return TorchTrainer(
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
            callbacks=_tune_callbacks(),
        ),
    )


def fit(job: TrainJob, tracker) -> dict:
    """Run `job` on Ray Train; stream worker metrics into `tracker`; returns the last metrics,
    with the model's `params_total` and `params_active` and the dataset's `data_*` counts."""
    from ray.util.queue import Queue

    job.train.accumulation_steps(job.num_workers)  # on the driver, not once per started worker
    record_cost("train_run", job.name)
    job.metrics_queue = Queue()
    trainer = make_trainer(job)
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
