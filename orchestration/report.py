"""The `report` stage: one page on what each finished stage of the run did and what it cost.

Writes `report.md` and the PNGs of `orchestration/report_plots.py` into its stage directory, and
the same page (links adjusted) to `<run_dir>/report.md`. It reads whichever stages have finished
in the run directory (the pipeline hands them over: `StageSpec.reads_all_manifests`); a plot with no data
is replaced by a note saying what it needs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestration.atomic import atomic_write_text
from orchestration.report_plots import PLOTS, StageRecord, save

# A stage's headline number in the summary tables: the first of these its manifest has.
KEY_METRICS = ("pass@1", "endpoint_pass@1", "pretrain_tokens", "plots")
PLOTS_DIR = "plots"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def key_metric(metrics: dict[str, Any]) -> str:
    """`name value` of the stage's headline metric, or "-" when it has none of KEY_METRICS."""
    key = next((k for k in KEY_METRICS if k in metrics), None)
    return "-" if key is None else f"{key} {fmt(metrics[key])}"


def load_records(run_dir: Path, stages: list[str]) -> list[StageRecord]:
    """The finished ones among `stages`, in the order they finished."""
    records = [rec for name in stages if (rec := StageRecord.load(run_dir / name)) is not None]
    return sorted(records, key=lambda r: r.manifest.finished_at)


def stale_note(rec: StageRecord, by_name: dict[str, StageRecord]) -> str:
    """Which upstream stages changed after `rec` consumed them (its figures describe older inputs)."""
    changed = [
        up
        for up, fp in rec.manifest.inputs.items()
        if up in by_name and by_name[up].manifest.fingerprint != fp
    ]
    return f"stale: built from an older {', '.join(changed)}" if changed else ""


def summary_table(records: list[StageRecord]) -> str:
    """Markdown table: per stage when it finished, wall time, key metric, artefacts."""
    by_name = {r.name: r for r in records}
    lines = [
        "| stage | finished | wall time | key metric | artefacts | note |",
        "|---|---|---:|---|---|---|",
    ]
    for rec in records:
        m = rec.manifest
        artefacts = f"`{rec.name}/` ({', '.join(m.outputs)})" if m.outputs else f"`{rec.name}/`"
        lines.append(
            f"| {rec.name} | {m.finished_at} | {m.wall_time_s:.1f} s | {key_metric(m.metrics)} "
            f"| {artefacts} | {stale_note(rec, by_name)} |"
        )
    total = sum(r.manifest.wall_time_s for r in records)
    lines.append(f"| **total** | | {total:.1f} s | | | |")
    return "\n".join(lines)


def stage_metrics(records: list[StageRecord]) -> str:
    """Every manifest metric of every stage, one line per stage."""
    return "\n".join(
        f"- **{rec.name}**: " + " · ".join(f"{k} {fmt(v)}" for k, v in rec.manifest.metrics.items())
        for rec in records
    )


def render(run_dir: Path, records: list[StageRecord], drawn: set[str], link_prefix: str) -> str:
    """The report page; `drawn` names the PNGs that exist, `link_prefix` leads from the page to them."""
    parts = [
        f"# ReasonForge run report: {run_dir.name}",
        f"Run directory `{run_dir}`, {len(records)} finished stage(s), generated "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}.",
        "## Stages",
        summary_table(records) if records else "*No stage has finished in this run directory.*",
    ]
    for plot in PLOTS:
        parts.append(f"## {plot.title}")
        if plot.file in drawn:
            parts.append(f"![{plot.title}]({link_prefix}{plot.file})")
        else:
            parts.append(f"*Not drawn: no finished stage recorded {plot.wants}.*")
    parts += ["## Stage metrics", stage_metrics(records) or "*None.*"]
    return "\n\n".join(parts) + "\n"


def write_report(run_dir: Path, stages: list[str], out_dir: Path) -> tuple[list[StageRecord], list[str]]:
    """Draw the plots and write `out_dir/report.md`; returns the records and the PNGs drawn."""
    records = load_records(run_dir, stages)
    drawn = []
    (out_dir / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        fig = plot.draw(records)
        if fig is not None:
            save(fig, out_dir / PLOTS_DIR / plot.file)
            drawn.append(plot.file)
    atomic_write_text(out_dir / "report.md", render(run_dir, records, set(drawn), f"{PLOTS_DIR}/"))
    return records, drawn
