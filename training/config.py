"""Typed configs for the gradient side: the model, the optimizer, expert parallelism, the loop."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

MOE_ARCHS = ("qwen3_moe", "mixtral")


@dataclass
class ModelConfig:
    # Architecture registered in training.models: qwen3_moe (default), mixtral, qwen3, qwen2, llama
    # (dense). Only for fresh models: a pretrained one keeps its own.
    arch: str = "qwen3_moe"
    # Start from this local Hugging Face directory instead of a fresh init: any causal LM
    # (Llama, Qwen2/3, Qwen3-MoE, Mixtral, ...) with its own tokenizer and chat template, which
    # every stage then uses (the data stage trains no tokenizer). The shape fields below are then
    # ignored. Nothing is downloaded: see `model=smollm2_135m` and `make smollm2`.
    pretrained: str | None = None
    hidden_size: int = 64
    intermediate_size: int = 128  # dense MLP width (dense archs)
    moe_intermediate_size: int = 64  # width of each expert's MLP
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    num_experts: int = 4
    num_experts_per_tok: int = 2
    # Weight of the load-balancing auxiliary loss the model adds to the LM loss.
    router_aux_loss_coef: float = 0.01
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model.num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"model.num_key_value_heads={self.num_key_value_heads}"
            )
        if self.arch in MOE_ARCHS and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"model.num_experts_per_tok={self.num_experts_per_tok} must be in 1..model.num_experts={self.num_experts}"
            )


@dataclass
class OptimizerConfig:
    """MuonClip (Kimi K2) or AdamW; shared by every training stage, each with its own lr."""

    # muonclip: Muon for 2-D hidden matrices (attention projections, experts), AdamW for
    # embeddings, norms, routers and the output head, plus QK-clip. adamw: AdamW everywhere.
    name: str = "muonclip"
    # Muon's lr as a multiple of the stage's lr (which is the AdamW lr): orthogonalised updates
    # have unit spectral scale and want a larger step than Adam's.
    muon_lr_ratio: float = 10.0
    momentum: float = 0.95
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    # QK-clip threshold: heads whose max pre-softmax logit exceeds tau are rescaled after the
    # step (Kimi K2 uses 100). null disables QK-clip (max logits are still logged).
    qk_clip_tau: float | None = 100.0

    def __post_init__(self) -> None:
        if self.name not in ("muonclip", "adamw"):
            raise ValueError(f"optimizer.name must be muonclip or adamw; got {self.name!r}")


@dataclass
class ExpertParallelConfig:
    """DeepSpeed AutoEP: the MoE layers' experts are split across ranks."""

    enabled: bool = True
    # Ranks that share one copy of the experts; null = the worker count when the experts divide
    # evenly over it (else 1).
    autoep_size: int | None = None
    # torch._grouped_mm expert kernels (fast on Hopper GPUs; works on CPU too).
    use_grouped_mm: bool = False


# train.overlong's choices (training.data.ON_OVERLONG implements them).
OVERLONG = ("drop", "truncate", "error")


@dataclass
class TrainConfig:
    """One config for pretrain and SFT (and later stages): all run the same training loop."""

    max_steps: int = 100
    # AdamW learning rate (Muon's is `optimizer.muon_lr_ratio` times this).
    lr: float = 3e-3
    # Cosine decay to lr * min_lr_ratio after `warmup_steps` of linear warmup.
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    # Gradient-norm clipping; 0 turns it off; null clips at 1.0 with adamw and not with muonclip,
    # where DeepSpeed would clip after Muon orthogonalises and shrink every Muon update (~40x
    # measured here): a value set with muonclip fails instead of being ignored.
    grad_clip: float | None = None
    # Sequences per optimizer step summed over all workers; accumulation steps are derived.
    # null in rlvr and distill, whose batch is derived from their sampling knobs (see with_global_batch).
    global_batch_size: int | None = 32
    micro_batch_per_worker: int = 8
    seq_len: int = 128
    # DeepSpeed ZeRO stage: 0, 1, 2 or 3.
    zero_stage: int = 1
    # Mixed precision on GPUs: bf16 or fp32. CPUs always run fp32 (no native bf16: ~100x slower).
    precision: str = "bf16"
    checkpoint_every: int = 50
    # Checkpoints kept in storage (oldest deleted first).
    keep_checkpoints: int = 2
    log_every: int = 1
    # Every this many steps (and at each checkpoint) compute held-out metrics (`eval_loss`) and
    # report them through Ray Train, which a sweep's ASHA reads; 0 turns it off. Each report is a
    # cross-worker barrier (~2 s on CPU here).
    eval_every: int = 0
    # Rows at the end of the stage's dataset held out of training for `eval_loss` (rounded down
    # to a multiple of the worker count); 0 holds out nothing.
    eval_rows: int = 0
    # Peak FLOP/s of one worker for MFU; null measures an fp32 (CPU) or bf16 (GPU) matmul at start.
    peak_flops_per_worker: float | None = None
    # Ray Train restarts the worker group this many times after a failure.
    max_failures: int = 2
    # Testing: worker rank 1 exits abruptly (once per run) at this step, to prove recovery.
    fail_at_step: int | None = None
    # Data order seed (the model init is seeded separately and identically on every worker).
    seed: int = 0
    # SFT records longer than seq_len (prompt + completion tokens): drop (skip them), truncate
    # (keep their first seq_len tokens: the loss then never sees the end of turn) or error (fail
    # naming the first). A prompt of seq_len tokens or more leaves nothing to learn: dropped under
    # truncate too. The counts reach the stage's metrics (data_dropped, data_truncated).
    overlong: str = "drop"
    # SFT: pack several prompt + completion sequences into each row of at most seq_len tokens,
    # attention kept within each sequence; batch sizes and eval_rows then count rows. Pretraining
    # always packs: its documents are concatenated and cut into seq_len blocks.
    pack: bool = False

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3; got {self.zero_stage}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32; got {self.precision!r}")
        if self.max_steps < 1 or (self.global_batch_size or 1) < 1 or self.micro_batch_per_worker < 1:
            raise ValueError("max_steps, global_batch_size and micro_batch_per_worker must be >= 1")
        if self.eval_every < 0 or self.eval_rows < 0:
            raise ValueError(
                f"eval_every and eval_rows must be >= 0; got {self.eval_every}, {self.eval_rows}"
            )
        if self.overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {OVERLONG}; got {self.overlong!r}")

    def accumulation_steps(self, world_size: int) -> int:
        if self.global_batch_size is None:
            raise ValueError("global_batch_size is not set")
        per_step = self.micro_batch_per_worker * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_per_worker "
                f"({self.micro_batch_per_worker}) x workers ({world_size}) = {per_step}"
            )
        return self.global_batch_size // per_step


def with_global_batch(train: TrainConfig, batch: int, world_size: int, source: str) -> TrainConfig:
    """`train` with the batch a stage derives from its own knobs (`source`, e.g. prompts x group),
    checked on the driver: a batch the workers cannot split fails before any actor starts, and a
    `global_batch_size` set to something else fails instead of being ignored."""
    if train.global_batch_size not in (None, batch):
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size}, but {source} = {batch} sets the learner's "
            "batch; leave global_batch_size unset (null) here"
        )
    train = replace(train, global_batch_size=batch)
    try:
        train.accumulation_steps(world_size)
    except ValueError as err:
        raise ValueError(f"{source} = {batch} sets the learner's batch: {err}") from None
    return train


OPTIMIZERS = ("muonclip", "adamw")


@dataclass
class LoraConfig:
    """LoRA adapters instead of full fine-tuning (training/lora.py); exports are merged models."""

    enabled: bool = False
    r: int = 16
    # The update is scaled by alpha / r.
    alpha: float = 32.0
    dropout: float = 0.0
    # Module names (last path component) that get adapters: attention and MLP projections of
    # Llama/Qwen-style models. MoE experts are fused parameters, not linear modules, so they stay frozen.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0 or not self.target_modules:
            raise ValueError(
                f"lora needs r >= 1, alpha > 0, 0 <= dropout < 1 and target_modules; got r={self.r}, "
                f"alpha={self.alpha}, dropout={self.dropout}, target_modules={self.target_modules}"
            )

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class StageTrainConfig:
    """The shape every training stage's config shares (pretrain, sft, rlvr, distill): the loop's
    settings under `train`, and the optimizer it uses."""

    train: TrainConfig = field(default_factory=TrainConfig)
    # Another optimizer than the root `optimizer.name` for this stage, with the root's settings
    # otherwise; null uses the root optimizer.
    optimizer: str | None = None
    # Train LoRA adapters only (`<stage>.lora.enabled=true`); the stage still exports a full model.
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if self.optimizer not in (None, *OPTIMIZERS):
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} or null; got {self.optimizer!r}")
