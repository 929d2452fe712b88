"""The stage table: each pipeline stage, its entry function, the config it reads, what it needs.

A stage entry is a plain function `run(cfg: RootConfig, ctx: StageContext) -> StageResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rl import datagen
from training.stage import StageContext, StageResult


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: Callable[..., StageResult]
    # Root config keys this stage reads: a change in any re-runs it (and everything after it).
    config_keys: tuple[str, ...]
    # Stages whose outputs it consumes.
    needs: tuple[str, ...] = ()


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec("data", datagen.run, config_keys=("task",)),
    ]
}

__all__ = ["STAGES", "StageSpec", "StageContext", "StageResult"]
