"""The root config schema: typed dataclasses registered in Hydra's ConfigStore.

YAML under `conf/` only selects and overrides; every key must exist here, so a misspelt key or a
wrong type fails at start with Hydra naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from rl.config import TaskConfig
from rl.evaluate import EvalConfig
from training.config import ExpertParallelConfig, ModelConfig, OptimizerConfig, TrainConfig
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
    storage_path: str = "outputs"


DEFAULT_STAGES = ["data", "pretrain", "sft"]


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
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    sft: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    expert_parallel: ExpertParallelConfig = field(default_factory=ExpertParallelConfig)
    # Held-out pass@1 measured after every stage that outputs a model.
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def register_configs() -> None:
    """Register the root schema; `conf/config.yaml` lists it first in its defaults."""
    ConfigStore.instance().store(name="root_schema", node=RootConfig)
