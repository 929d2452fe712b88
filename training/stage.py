"""What a stage receives and returns. The pipeline driver in `orchestration` builds these.

A stage is a plain function `run(cfg, ctx) -> StageResult`. It writes only under `ctx.out_dir`
(a fresh temp directory the driver publishes atomically when the stage returns) and keeps anything
that must survive a crash for resumption (checkpoints) under `ctx.work_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.tracking import Tracker


@dataclass
class StageResult:
    # name -> path relative to the stage's output dir (e.g. {"model": "hf"}).
    outputs: dict[str, str] = field(default_factory=dict)
    # Headline numbers recorded in the manifest (e.g. {"pass@1": 0.42}).
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class StageContext:
    name: str
    run_dir: Path  # outputs/<run_name>
    out_dir: Path  # where this attempt writes its outputs (published atomically on success)
    work_dir: Path  # survives failed attempts: checkpoints to resume from
    tracker: Tracker
    # Outputs of the stages this run already finished: stage -> name -> absolute path.
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    # Manifest metrics of finished stages: stage -> metrics.
    upstream_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def artifact(self, stage: str, name: str) -> Path:
        """Path of output `name` of an earlier stage, with an error that says what is missing."""
        if stage not in self.artifacts:
            raise KeyError(
                f"stage {self.name!r} needs the output of stage {stage!r}, which has not run in "
                f"{self.run_dir}; add it to `stages` or run it first"
            )
        outputs = self.artifacts[stage]
        if name not in outputs:
            raise KeyError(f"stage {stage!r} has no output {name!r}; it has {sorted(outputs)}")
        return Path(outputs[name])
