"""The `report` adapter: one page on every stage finished in the run (orchestration/report.py)."""

from __future__ import annotations

from orchestration.atomic import atomic_write_text
from orchestration.report import PLOTS_DIR, render, write_report
from orchestration.stages.context import StageContext, StageResult


def run(cfg, ctx: StageContext) -> StageResult:
    stages = [name for name in ctx.upstream_metrics if name != ctx.name]
    records, drawn = write_report(ctx.run_dir, stages, ctx.out_dir)
    # The run-level copy links into this stage's directory, where the PNGs are published.
    page = render(ctx.run_dir, records, set(drawn), f"{ctx.name}/{PLOTS_DIR}/")
    atomic_write_text(ctx.run_dir / "report.md", page)
    return StageResult(
        outputs={"report": "report.md", "plots": PLOTS_DIR},
        metrics={"plots": len(drawn), "stages_reported": len(records)},
    )
