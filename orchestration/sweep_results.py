"""A finished (or interrupted) sweep's results: the trials table, the best trial, its overrides."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.atomic import atomic_write_json, atomic_write_text
from orchestration.config import SweepConfig
from orchestration.search_space import override, render_value

log = logging.getLogger("reasonforge.sweep")


@dataclass
class SweepOutcome:
    sweep_dir: Path
    trials: list[dict[str, Any]]  # the rows of trials.csv
    best: dict[str, Any] | None  # best.json; None when no trial reported the metric
    unfinished: int  # trials an interrupted sweep left to do


def _status(result, stage: dict | None) -> str:
    if result.error is not None:
        return "error"
    if stage is not None:  # the stage function returned: the trial trained to its last step
        return "completed"
    # Tune marks a result done when the trial ended, here by the scheduler stopping it.
    return "stopped" if (result.metrics or {}).get("done") else "unfinished"


def _last_checkpoint(result) -> str | None:
    df = result.metrics_dataframe
    if df is None or "checkpoint_path" not in df:
        return None
    paths = df["checkpoint_path"].dropna()
    return str(paths.iloc[-1]) if len(paths) else None


def _point(result) -> dict[str, Any]:
    # Tune knows no config of a trial that an interrupt left pending, before its first report.
    return (result.config or {}).get("point", {})


def trial_row(result, sweep_dir: Path, metric: str) -> dict[str, Any]:
    metrics = result.metrics or {}
    trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
    stage_file = sweep_dir / "trials" / trial_id / "stage.json"
    stage = json.loads(stage_file.read_text()) if stage_file.exists() else None
    return {
        "trial_id": trial_id,
        "status": _status(result, stage),
        "step": metrics.get("step"),
        metric: metrics.get(metric),
        **_point(result),
        "checkpoint_path": _last_checkpoint(result),
        "model_dir": (stage or {}).get("outputs", {}).get("model"),
        **{f"stage/{k}": v for k, v in (stage or {}).get("metrics", {}).items()},
        "error": str(result.error).splitlines()[0] if result.error is not None else None,
    }


def best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The trial whose last reported `metric` is best (any status but error)."""
    scored = [
        r
        for r in rows
        if r["status"] != "error" and isinstance(r[metric], int | float) and math.isfinite(r[metric])
    ]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda r: r[metric])


def best_overrides(point: dict[str, Any], base: tuple[str, ...], stages: list[str]) -> list[str]:
    """Base overrides, then the pipeline up to the swept stage (unless the base picks stages),
    then the point: what `reasonforge` needs to rerun the best trial."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in base}
    up_to = [] if "stages" in keys else [f"stages={render_value(stages)}"]
    return [*base, *up_to, *(override(k, v) for k, v in point.items())]


def _csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_results(
    grid, sweep_dir: Path, sweep: SweepConfig, base: tuple[str, ...], stages: list[str]
) -> SweepOutcome:
    """trials.csv, best.json and best_overrides.txt in `sweep_dir`, from Tune's ResultGrid."""
    rows, points = [], {}
    for result in grid:
        rows.append(trial_row(result, sweep_dir, sweep.metric))
        points[rows[-1]["trial_id"]] = _point(result)
    rows.sort(key=lambda r: r["trial_id"])
    atomic_write_text(sweep_dir / "trials.csv", _csv(rows))
    unfinished = sum(r["status"] == "unfinished" for r in rows)
    best = best_row(rows, sweep.metric, sweep.mode)
    if best is not None:
        point = points[best["trial_id"]]
        lines = best_overrides(point, base, stages)
        best = {
            "trial_id": best["trial_id"],
            "status": best["status"],
            "metric": sweep.metric,
            "value": best[sweep.metric],
            "step": best["step"],
            "point": point,
            "checkpoint_path": best["checkpoint_path"],
            "model_dir": best["model_dir"],
            "overrides": lines,
        }
        atomic_write_json(sweep_dir / "best.json", best)
        atomic_write_text(sweep_dir / "best_overrides.txt", "\n".join(lines) + "\n")
    _log_summary(sweep_dir, rows, points, sweep.metric, best)
    return SweepOutcome(sweep_dir, rows, best, unfinished)


def _log_summary(sweep_dir: Path, rows: list[dict], points: dict, metric: str, best: dict | None) -> None:
    lines = [f"\nReasonForge sweep {sweep_dir}", f"{'trial':<14}{'status':<12}{'step':>6}{metric:>14}  point"]
    for r in rows:
        value = f"{r[metric]:.4f}" if isinstance(r[metric], float) else str(r[metric])
        point = " ".join(f"{k}={v}" for k, v in points[r["trial_id"]].items())
        lines.append(f"{r['trial_id']:<14}{r['status']:<12}{r['step']!s:>6}{value:>14}  {point}")
    if best is None:
        lines.append(f"no trial reported {metric!r}; see trials.csv and the trial logs")
    else:
        lines.append(f"best: {best['trial_id']} {metric}={best['value']:.4f} at step {best['step']}")
        lines.append(f"rerun it: reasonforge $(cat {sweep_dir / 'best_overrides.txt'})")
        lines.append(f"checkpoint: {best['checkpoint_path']}")
    log.info("\n".join(lines))
