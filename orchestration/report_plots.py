"""The report's plots: each reads finished stages' manifests and metrics.jsonl rows, draws one PNG.

A plot draws whatever stages logged its keys and returns None when none did, so the report works
on any prefix of the pipeline and on stages added later that log the same keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from orchestration.artifacts import Manifest
from training.tracking import read_metrics


@dataclass(frozen=True)
class StageRecord:
    """One finished stage as the report sees it."""

    name: str
    manifest: Manifest
    rows: list[dict[str, Any]]  # its metrics.jsonl, in order

    @classmethod
    def load(cls, stage_dir: Path) -> StageRecord | None:
        manifest = Manifest.load(stage_dir)
        return None if manifest is None else cls(stage_dir.name, manifest, read_metrics(stage_dir))

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of `key` over the rows that have both; non-finite values are dropped."""
        rows = [r for r in self.rows if _number(r.get("step")) and _number(r.get(key))]
        return [r["step"] for r in rows], [float(r[key]) for r in rows]

    def metric(self, key: str) -> float | None:
        value = self.manifest.metrics.get(key)
        return float(value) if _number(value) else None


def _number(value: Any) -> bool:
    # Tracker writes non-finite floats as strings ("nan"), so a float here is always finite.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _with_series(records: list[StageRecord], key: str) -> list[StageRecord]:
    return [r for r in records if r.series(key)[0]]


def _figure(ncols: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def draw_loss(records: list[StageRecord]) -> Figure | None:
    """Training loss per stage, one panel each: pretrain, SFT, GRPO and KD losses differ in scale."""
    stages = _with_series(records, "loss")
    if not stages:
        return None
    fig, axes = _figure(len(stages))
    for ax, rec in zip(axes, stages, strict=True):
        ax.plot(*rec.series("loss"))
        ax.set(title=f"{rec.name} loss", xlabel="step", ylabel="loss")
    return fig


def draw_rl(records: list[StageRecord]) -> Figure | None:
    """Mean reward and rollout pass rate, and mean response length, per RL step."""
    stages = _with_series(records, "reward_mean")
    if not stages:
        return None
    fig, (reward, length) = _figure(2)
    for rec in stages:
        reward.plot(*rec.series("reward_mean"), label=f"{rec.name} mean reward")
        if rec.series("pass_rate")[0]:
            reward.plot(*rec.series("pass_rate"), linestyle="--", label=f"{rec.name} rollout pass rate")
        length.plot(*rec.series("response_tokens_mean"), label=rec.name)
    reward.set(title="RL reward", xlabel="step")
    reward.legend(fontsize="small")
    length.set(title="response length", xlabel="step", ylabel="tokens")
    return fig


# Copies of an upstream stage's own pass@1 (the model a stage started from or learned from).
UPSTREAM_PASS_KEYS = ("start_pass@1", "teacher_pass@1")


def _prefixed(rec: StageRecord, suffix: str) -> list[str]:
    """Prefixes p such that the manifest has `p + suffix` ("" for the stage's own model, "baseline_"
    for a comparison model, ...)."""
    found = [
        k.removesuffix(suffix)
        for k in rec.manifest.metrics
        if k.endswith(suffix) and rec.metric(k) is not None
    ]
    return sorted(found, key=lambda p: (p != "", p))  # the stage's own model first


def _label(rec: StageRecord, prefix: str) -> str:
    return rec.name if not prefix else f"{rec.name}\n{prefix.rstrip('_')}"


def _pass_bars(rec: StageRecord) -> list[tuple[str, float, float | None]]:
    """(label, pass@1, its standard error or None) of each model a stage recorded one for; a model
    it started from outside the run (the user's `model.pretrained`) first, as its own bar."""
    bars = []
    if rec.manifest.sources.get("start", "").startswith("config:") and rec.metric("start_pass@1") is not None:
        bars.append((f"{rec.name}\nstart model", rec.metric("start_pass@1"), rec.metric("start_pass@1_se")))
    for p in _prefixed(rec, "pass@1"):
        if p + "pass@1" not in UPSTREAM_PASS_KEYS:
            bars.append((_label(rec, p), rec.metric(p + "pass@1"), rec.metric(p + "pass@1_se")))
    return bars


def draw_pass_at_1(records: list[StageRecord]) -> Figure | None:
    """Held-out pass@1 of every model a stage recorded one for, in pipeline order, with a
    one-standard-error whisker where the stage recorded one."""
    bars = [bar for rec in records for bar in _pass_bars(rec)]
    if not bars:
        return None
    fig, (ax,) = _figure(1, width=max(4.0, 1.1 * len(bars)))
    labels, values, errors = zip(*bars, strict=True)
    ax.bar(range(len(bars)), values, color="tab:blue")
    ax.errorbar(
        range(len(bars)), values, yerr=[e or 0.0 for e in errors], fmt="none", ecolor="black", capsize=3
    )
    ax.set_xticks(range(len(bars)), labels, fontsize="small")
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize="small")
    ax.set(title="held-out pass@1 per stage (± 1 s.e.)", ylim=(0, max(1.0, *values) * 1.1))
    return fig


# Student-teacher top-1 agreement: per training step (on the step's batches) in metrics.jsonl, and
# on held-out teacher completions in the manifest (rl/distill/draft_eval.py).
AGREEMENT_KEY = "top1_agreement"


def draw_agreement(records: list[StageRecord]) -> Figure | None:
    """Top-1 agreement with the teacher over training steps, and held-out per draft model."""
    stages = [r for r in records if r.series(AGREEMENT_KEY)[0] or _prefixed(r, AGREEMENT_KEY)]
    if not stages:
        return None
    fig, (ax,) = _figure(1, width=5.5)
    for rec in stages:
        steps, values = rec.series(AGREEMENT_KEY)
        if steps:
            ax.plot(steps, values, label=f"{rec.name} (training batches)")
        for p in _prefixed(rec, AGREEMENT_KEY):
            value = rec.metric(p + AGREEMENT_KEY)
            ax.axhline(value, linestyle="--", color="gray" if p else "black", linewidth=1)
            ax.annotate(
                f"{_label(rec, p).replace(chr(10), ' ')} held-out {value:.2f}",
                (0.01, value),
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize="small",
            )
    ax.set(title="student-teacher top-1 agreement", xlabel="step", ylim=(0, 1.05))
    ax.legend(fontsize="small", loc="lower right")
    return fig


# Speculative decoding in the manifest (rl/distill/draft_eval.py, serving/load.py): the share of drafted
# tokens the target accepted, and tokens/s with the draft over tokens/s of the target alone.
ACCEPTANCE_KEY = "acceptance_rate"
SPEEDUP_KEY = "speedup"


def draw_speculative(records: list[StageRecord]) -> Figure | None:
    """Acceptance rate and speedup of every draft model a stage measured."""
    drafts = [(rec, p) for rec in records for p in _prefixed(rec, ACCEPTANCE_KEY)]
    if not drafts:
        return None
    fig, (acc, speed) = _figure(2, width=max(4.0, 1.2 * len(drafts)))
    labels = [_label(rec, p) for rec, p in drafts]
    acc.bar(labels, [rec.metric(p + ACCEPTANCE_KEY) for rec, p in drafts], color="tab:green")
    acc.set(title="draft acceptance rate", ylim=(0, 1.05))
    # The serve stage measures acceptance over HTTP but no target-alone baseline: no speedup bar.
    timed = [
        (label, speedup)
        for label, (rec, p) in zip(labels, drafts, strict=True)
        if (speedup := rec.metric(p + SPEEDUP_KEY)) is not None
    ]
    if timed:
        speed.bar(*zip(*timed, strict=True), color="tab:orange")
    speed.axhline(1.0, color="black", linestyle=":", linewidth=1)
    speed.set(title="speedup vs target alone (x)")
    return fig


def expert_shares(rec: StageRecord) -> list[str]:
    """The stage's `expert_share/<i>` keys, in expert order."""
    keys = {k for row in rec.rows for k in row if k.startswith("expert_share/")}
    return sorted(keys, key=lambda k: int(k.split("/", 1)[1]))


def draw_expert_balance(records: list[StageRecord]) -> Figure | None:
    """Token share per expert at each stage's last step, and max share x experts over steps.

    The second is 1.0 when routing is perfectly balanced and `experts` when one expert takes all.
    """
    stages = [(r, keys) for r in records if (keys := expert_shares(r))]
    if not stages:
        return None
    fig, (final, peak) = _figure(2, width=4.8)
    width = 0.8 / len(stages)
    for j, (rec, keys) in enumerate(stages):
        last = next(row for row in reversed(rec.rows) if keys[0] in row)
        final.bar(
            [i + j * width for i in range(len(keys))], [last.get(k, 0.0) for k in keys], width, label=rec.name
        )
        rows = [
            row for row in rec.rows if _number(row.get("step")) and all(_number(row.get(k)) for k in keys)
        ]
        peak.plot(
            [r["step"] for r in rows], [max(r[k] for k in keys) * len(keys) for r in rows], label=rec.name
        )
    experts = len(stages[0][1])
    final.axhline(1 / experts, color="black", linestyle=":", linewidth=1, label="uniform")
    final.set_xticks(
        [i + (len(stages) - 1) * width / 2 for i in range(experts)], [str(i) for i in range(experts)]
    )
    final.set(title="token share per expert (last step)", xlabel="expert")
    final.legend(fontsize="small", loc="upper right")
    peak.axhline(1.0, color="black", linestyle=":", linewidth=1)
    peak.set(title="max expert share x experts (1 = balanced)", xlabel="step")
    peak.legend(fontsize="small")
    return fig


@dataclass(frozen=True)
class Plot:
    file: str  # PNG name under the report's plots/ directory
    title: str  # its section heading in report.md
    wants: str  # what a stage must have recorded for it; the note when no stage did
    draw: Callable[[list[StageRecord]], Figure | None]


PLOTS = (
    Plot("loss.png", "Training loss", "`loss` per step in metrics.jsonl", draw_loss),
    Plot("rl_reward.png", "RL reward and response length", "`reward_mean` per step", draw_rl),
    Plot("pass_at_1.png", "Held-out pass@1 per stage", "`pass@1` in the manifest", draw_pass_at_1),
    Plot(
        "distill_agreement.png",
        "Distillation: student-teacher agreement",
        f"`{AGREEMENT_KEY}` per step or in the manifest",
        draw_agreement,
    ),
    Plot(
        "speculative.png",
        "Speculative decoding: acceptance and speedup",
        f"`{ACCEPTANCE_KEY}` in the manifest",
        draw_speculative,
    ),
    Plot("expert_balance.png", "Expert load balance", "`expert_share/<i>` per step", draw_expert_balance),
)


def save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
