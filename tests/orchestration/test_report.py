"""The report stage: every plot is a real PNG, the table lists every stage, absent data is noted.

The run directory is written with the project's own Tracker and Manifest (what a finished stage
leaves behind), with metric rows shaped like the real stages' (keys from training/loop.py,
orchestration/stages/rlvr.py, rl/distill/recipe.py, orchestration/stages/serve.py), so the test takes seconds instead of training models.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from matplotlib.image import imread

from orchestration import pipeline
from orchestration.artifacts import MANIFEST, Manifest, hash_json, hash_path, layout_of
from orchestration.atomic import atomic_write_json
from orchestration.cli import compose
from orchestration.report import key_metric, write_report
from orchestration.report_plots import PLOTS
from orchestration.stages import STAGES
from training.tracking import LoggingConfig, Tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 6
EXPERTS = 4


def _training_rows(loss0: float) -> list[dict]:
    rows = []
    for step in range(1, STEPS + 1):
        skew = 0.3 / step  # routing drifts towards balance
        shares = [1 / EXPERTS + skew * (1 if i == 0 else -1 / (EXPERTS - 1)) for i in range(EXPERTS)]
        rows.append(
            {"step": step, "loss": loss0 * math.exp(-0.2 * step), "aux_loss": 0.01, "tokens_per_s": 900.0}
            | {f"expert_share/{i}": s for i, s in enumerate(shares)}
        )
    return rows


def _rl_rows() -> list[dict]:
    return [
        {
            "step": s,
            "loss": 0.1 / s,
            "reward_mean": 0.1 * s,
            "pass_rate": 0.08 * s,
            "response_tokens_mean": 40.0 - s,
        }
        for s in range(1, STEPS + 1)
    ]


# stage -> (manifest metrics, metrics.jsonl rows, upstream stages); in pipeline order.
TINY_RUN = {
    "data": (
        {"pretrain_count": 400, "pretrain_tokens": 21000, "eval_count": 20},
        [{"data/arithmetic/eval": 20}],
        [],
    ),
    "pretrain": ({"loss": 2.1, "pass@1": 0.05, "steps": STEPS}, _training_rows(4.0), ["data"]),
    "sft": ({"loss": 1.2, "pass@1": 0.3, "steps": STEPS}, _training_rows(2.0), ["data", "pretrain"]),
    "rlvr": ({"reward_mean": 0.6, "pass@1": 0.45, "start_pass@1": 0.3}, _rl_rows(), ["data", "sft"]),
    "distill": (  # keys of rl/distill/recipe.py and rl/distill/draft_eval.py, with the baseline student
        {"pass@1": 0.35, "teacher_pass@1": 0.45, "baseline_pass@1": 0.2, "top1_agreement": 0.8}
        | {"acceptance_rate": 0.75, "speedup": 1.3, "baseline_acceptance_rate": 0.5, "baseline_speedup": 0.9},
        [
            {"step": s, "loss": 1.0 / s, "kd_loss": 1.0 / s, "top1_agreement": 0.5 + 0.05 * s}
            for s in range(1, STEPS + 1)
        ],
        ["data", "rlvr"],
    ),
    "serve": (  # keys of orchestration/stages/serve.py and serving/load.py
        {"endpoint_pass@1": 0.45, "acceptance_rate": 0.7, "latency_p50_s": 0.2, "latency_p99_s": 0.9},
        [{"serve/endpoint_pass@1": 0.45}],
        ["data", "rlvr", "distill"],
    ),
}


def finish_stage(
    run_dir: Path, name: str, metrics: dict, rows: list[dict], inputs: list[str], at: int
) -> None:
    """Leave what a finished stage leaves: an output, metrics.jsonl and a manifest naming its inputs."""
    stage_dir = run_dir / name
    (stage_dir / "out").mkdir(parents=True, exist_ok=True)
    (stage_dir / "out" / "weights.txt").write_text(f"{name} output\n")
    tracker = Tracker(stage_dir, name, LoggingConfig(wandb_mode="disabled", progress=False))
    for row in rows:
        step = row.get("step")
        tracker.log({k: v for k, v in row.items() if k != "step"}, step=step)
    tracker.close()
    manifest = Manifest(
        stage=name,
        config_hash=hash_json([name, metrics]),
        config={},
        inputs={up: Manifest.load(run_dir / up).fingerprint for up in inputs},
        outputs={"out": "out"},
        output_hashes={"out": hash_path(stage_dir / "out")},
        output_layout={"out": layout_of(stage_dir / "out")},
        metrics=metrics,
        wall_time_s=10.0 + at,
        finished_at=f"2026-01-01T00:00:{at:02d}+00:00",
    )
    atomic_write_json(stage_dir / MANIFEST, manifest.to_json())


def make_run(run_dir: Path, stages: list[str]) -> None:
    for at, name in enumerate(stages):
        metrics, rows, inputs = TINY_RUN[name]
        finish_stage(run_dir, name, metrics, rows, inputs, at)


def table_stages(report: str) -> list[str]:
    """Stage names in the report's summary table, in order."""
    table = report.split("## Stages", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| (\w+) \|", table, re.MULTILINE) if m.group(1) != "stage"]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, image.shape


def test_report_draws_every_plot_as_png_and_lists_every_stage(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    make_run(run_dir, list(TINY_RUN))
    records, drawn = write_report(run_dir, list(TINY_RUN), out)
    assert sorted(drawn) == sorted(p.file for p in PLOTS)
    for plot in PLOTS:
        assert_png(out / "plots" / plot.file)
    report = (out / "report.md").read_text()
    assert table_stages(report) == list(TINY_RUN)
    assert "Not drawn" not in report
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    assert "| sft | 2026-01-01T00:00:02+00:00 | 12.0 s | pass@1 0.3 |" in report


def test_report_on_a_partial_run_notes_what_it_could_not_draw(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    make_run(run_dir, ["data", "pretrain"])
    _, drawn = write_report(run_dir, list(TINY_RUN), out)
    assert sorted(drawn) == ["expert_balance.png", "loss.png", "pass_at_1.png"]
    report = (out / "report.md").read_text()
    assert table_stages(report) == ["data", "pretrain"]
    assert "*Not drawn: no finished stage recorded `reward_mean` per step.*" in report
    assert report.count("Not drawn") == 3


def test_report_marks_a_stage_built_from_an_older_upstream_as_stale(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    make_run(run_dir, ["data", "pretrain", "sft"])
    finish_stage(run_dir, "pretrain", {"pass@1": 0.07}, [], ["data"], at=9)  # re-ran after sft
    write_report(run_dir, ["data", "pretrain", "sft"], out)
    report = (out / "report.md").read_text()
    assert table_stages(report) == ["data", "sft", "pretrain"]  # the order they finished in
    assert re.search(r"^\| sft \|.*stale: built from an older pretrain \|$", report, re.MULTILINE)
    assert not re.search(r"^\| pretrain \|.*stale", report, re.MULTILINE)


def test_key_metric_prefers_pass_at_1_and_says_when_there_is_none():
    assert key_metric({"loss": 1.0, "pass@1": 0.25}) == "pass@1 0.25"
    assert key_metric({"pretrain_tokens": 21000}) == "pretrain_tokens 21,000"
    assert key_metric({"endpoint_pass@1": 0.5, "latency_p50_s": 0.2}) == "endpoint_pass@1 0.5"
    assert key_metric({"loss": 1.0}) == "-"


@pytest.fixture
def report_cfg(ray_session, tmp_path):
    def cfg():
        return compose(
            [
                f"cluster.storage_path={tmp_path}",
                "run_name=r",
                "stages=[report]",
                "logging.wandb_mode=disabled",
                "logging.progress=false",
            ]
        )

    return cfg, tmp_path / "r"


def test_report_stage_reads_finished_stages_and_reruns_when_one_changes(report_cfg, caplog):
    cfg, run_dir = report_cfg
    registered = [s for s in TINY_RUN if s in STAGES]  # distill/serve count once registered
    make_run(run_dir, registered)
    caplog.set_level("INFO", logger="reasonforge.pipeline")
    manifest = pipeline.run_pipeline(cfg())["report"]
    assert manifest.inputs == {s: Manifest.load(run_dir / s).fingerprint for s in registered}
    for plot in PLOTS:
        if (run_dir / "report" / "plots" / plot.file).exists():
            assert_png(run_dir / "report" / "plots" / plot.file)
    # The run-level copy links into the report stage's directory.
    top = (run_dir / "report.md").read_text()
    assert table_stages(top) == registered
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", top)
    assert links and all((run_dir / link).is_file() for link in links)
    assert re.search(r"^report\s+ran\s+[\d.]+\s+plots \d", caplog.text, re.MULTILINE)

    caplog.clear()
    pipeline.run_pipeline(cfg())
    assert "[report] skipped" in caplog.text

    finish_stage(run_dir, "sft", {"pass@1": 0.5}, [], ["data", "pretrain"], at=30)
    caplog.clear()
    pipeline.run_pipeline(cfg())
    assert "[report] running: inputs changed" in caplog.text
    assert "| sft | 2026-01-01T00:00:30+00:00 | 40.0 s | pass@1 0.5 |" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "report" / MANIFEST).read_text())["metrics"]["stages_reported"] == len(
        registered
    )


def test_the_pass_at_1_bars_show_a_users_start_model_and_each_standard_error():
    from orchestration.report_plots import StageRecord, _pass_bars

    def record(sources: dict, metrics: dict) -> StageRecord:
        manifest = Manifest("rlvr", "h", {}, {}, {}, {}, {}, metrics, 0.0, "", {}, sources)
        return StageRecord("rlvr", manifest, [])

    metrics = {"pass@1": 0.4, "pass@1_se": 0.02, "start_pass@1": 0.17, "start_pass@1_se": 0.01}
    own = record({"start": "config:model.pretrained"}, metrics)
    assert _pass_bars(own) == [("rlvr\nstart model", 0.17, 0.01), ("rlvr", 0.4, 0.02)]
    # Started from sft in the same run: sft has its own bar, so no copy of it here.
    assert _pass_bars(record({"start": "sft.model"}, metrics)) == [("rlvr", 0.4, 0.02)]
