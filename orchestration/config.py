"""The root config schema: typed dataclasses registered in Hydra's ConfigStore.

YAML under `conf/` only selects and overrides; every key must exist here, so a misspelt key or a
wrong type fails at start with Hydra naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from rl.config import DistillConfig, EvalConfig, RlvrConfig
from rl.tasks.config import TaskConfig
from serving.config import ServeConfig
from training.config import ExpertParallelConfig, ModelConfig, OptimizerConfig, StageTrainConfig
from training.tracking import LoggingConfig


@dataclass
class ClusterConfig:
    # Ray address: null starts a local Ray; "auto" joins the cluster this process runs in.
    address: str | None = None
    # CPUs the local Ray may use (ignored when joining a cluster). Rollout workers and Ray Train
    # workers take fractions of these.
    num_cpus: int = 4
    # Ray Train workers per training stage (DeepSpeed data/expert-parallel ranks).
    num_workers: int = 2
    use_gpu: bool = False
    # CPUs reserved per training worker.
    cpus_per_worker: float = 1.0
    # Where run directories live: a local path or any pyarrow filesystem URI (file://, s3://, gs://).
    # Remote URIs are mirrored stage by stage from a staging copy (orchestration/storage.py).
    storage_path: str = "outputs"
    # The staging copy of a remote storage_path; multi-node training needs it on a shared mount.
    staging_dir: str = "outputs/.staging"


@dataclass
class SweepConfig:
    """`reasonforge-sweep`: a Ray Tune search over one training stage (orchestration/sweep.py)."""

    # Names the sweep directory <storage_path>/<run_name>/sweeps/<name>; rerunning resumes it.
    name: str = "sweep"
    # The training stage to tune (a name in orchestration.stages.STAGES: pretrain, sft, ...). Its
    # upstream stages run once, through the pipeline, with the base config.
    stage: str = "pretrain"
    # Config key -> distribution, nested like the config (`pretrain: {lr: ...}`) or dotted
    # (`pretrain.train.lr: ...`): uniform(a, b), loguniform(a, b), randint(a, b) (b excluded),
    # choice([v, ...]) (sampled) or grid([v, ...]) (every value). The stage must read the key and
    # its upstream stages must not.
    space: dict[str, Any] = field(default_factory=dict)
    # Metric carried by every report of the stage, and whether lower or higher is better:
    # eval_loss (needs <stage>.eval_rows > 0), loss, reward_mean (rlvr), ...
    metric: str = "eval_loss"
    mode: str = "min"
    # Points drawn from the space; a grid is run num_samples times.
    num_samples: int = 4
    # Trial scheduler: asha (stops the worst trials at each rung) or fifo (all run to the end).
    scheduler: str = "asha"
    # ASHA: steps a trial runs before it may be stopped; 1/reduction_factor go on at each rung.
    grace_period: int = 10
    reduction_factor: int = 2
    # Trials running at once; each is a whole Ray Train run of cluster.num_workers workers.
    max_concurrent_trials: int = 1
    # CPUs held by each trial's driver, which runs the stage function: it launches the Ray Train
    # run, then does the stage's own work after training (Hugging Face export, pass@1).
    trial_cpus: float = 1.0
    # Seed of the random search.
    seed: int = 0
    # Continue an interrupted sweep of the same name, keeping finished trials; false starts over.
    resume: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"sweep.mode must be min or max; got {self.mode!r}")
        if self.num_samples < 1 or self.grace_period < 1 or self.max_concurrent_trials < 1:
            raise ValueError(
                "sweep.num_samples, sweep.grace_period and sweep.max_concurrent_trials must be >= 1; got "
                f"{self.num_samples}, {self.grace_period}, {self.max_concurrent_trials}"
            )
        if self.reduction_factor < 2 or self.trial_cpus < 0:
            raise ValueError(
                f"sweep.reduction_factor must be >= 2 and sweep.trial_cpus >= 0; got "
                f"{self.reduction_factor}, {self.trial_cpus}"
            )


DEFAULT_STAGES = ["data", "pretrain", "sft", "rlvr", "distill", "serve", "report"]


@dataclass
class RootConfig:
    # Names the run directory <storage_path>/<run_name>; rerunning the same name resumes.
    run_name: str = "demo"
    # Stages to run, in pipeline order.
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    # Skip stages whose manifest matches (same config slice and inputs); false re-runs everything.
    resume: bool = True
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Every training stage's section has one shape (StageTrainConfig): `train` and `optimizer`.
    pretrain: StageTrainConfig = field(default_factory=StageTrainConfig)
    sft: StageTrainConfig = field(default_factory=StageTrainConfig)
    rlvr: RlvrConfig = field(default_factory=RlvrConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # The OpenAI endpoint on Ray Serve and how the `serve` stage measures it.
    serve: ServeConfig = field(default_factory=ServeConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    expert_parallel: ExpertParallelConfig = field(default_factory=ExpertParallelConfig)
    # Held-out pass@1 measured after every stage that outputs a model.
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Read only by `reasonforge-sweep` (conf/sweep_config.yaml selects conf/sweep/default.yaml).
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    """Register the root schema; `conf/config.yaml` lists it first in its defaults."""
    ConfigStore.instance().store(name="root_schema", node=RootConfig)
