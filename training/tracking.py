"""One tracker for every stage: a `metrics.jsonl` beside the stage's outputs, plus wandb.

wandb runs offline unless the user sets `logging.wandb_mode=online` (or disables it), so nothing
leaves the machine by default.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


@dataclass
class LoggingConfig:
    # wandb mode: "offline" (default, files under the stage dir), "online", or "disabled".
    wandb_mode: str = "offline"
    # wandb project name; the run is named <run_name>/<stage>.
    wandb_project: str = "reasonforge"
    # Show tqdm progress bars on long loops (training steps, generation batches).
    progress: bool = True

    def __post_init__(self) -> None:
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(
                f"logging.wandb_mode must be one of offline, online, disabled; got {self.wandb_mode!r}"
            )


def _scalar(value: Any) -> Any:
    """Turn tensors and numpy scalars into plain floats so every line is valid JSON."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Tracker:
    """Logs step metrics to `<dir>/metrics.jsonl` and wandb; call `close()` when done."""

    def __init__(self, directory: str | Path, name: str, cfg: LoggingConfig, config: dict | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self._file = open(self.dir / "metrics.jsonl", "a")
        self._wandb = None
        if cfg.wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=cfg.wandb_project,
                name=name,
                dir=str(self.dir),
                mode=cfg.wandb_mode,
                config=config or {},
                reinit="finish_previous",
            )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: _scalar(v) for k, v in metrics.items()}
        record = {"time": time.time(), **({"step": step} if step is not None else {}), **row}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def progress(self, iterable=None, total: int | None = None, desc: str = ""):
        """A progress bar for a long loop, silenced by `logging.progress=false`."""
        return tqdm(iterable, total=total, desc=desc, disable=not self.cfg.progress, dynamic_ncols=True)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(directory: str | Path) -> list[dict[str, Any]]:
    """Rows of a stage's `metrics.jsonl`, in order."""
    path = Path(directory) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Where costly starts are counted, one JSON line each, when set (the test suite holds itself to a
# budget of Ray Train runs and Ray cluster starts with it: tests/cost_budget.py).
RUN_LEDGER_ENV = "REASONFORGE_RUN_LEDGER"


def record_cost(kind: str, name: str) -> None:
    """Append `{"kind", "name", "pid"}` to $REASONFORGE_RUN_LEDGER, if set (any process may)."""
    path = os.environ.get(RUN_LEDGER_ENV)
    if path:
        # One small O_APPEND write per line: concurrent processes never interleave within a line.
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "name": name, "pid": os.getpid()}) + "\n")
