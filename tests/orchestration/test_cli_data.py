"""The `reasonforge` command on the real data stage: outputs, run log, skip on rerun, wandb offline."""

from __future__ import annotations

import json
import subprocess
import sys

SMALL = [
    "task.pretrain_docs=300",
    "task.sft_pairs=100",
    "task.rl_prompts=50",
    "task.eval_prompts=40",
    "stages=[data]",
]


def _run(tmp_path, *overrides):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestration.pipeline",
            f"cluster.storage_path={tmp_path}",
            "run_name=cli",
            "cluster.num_cpus=2",
            *SMALL,
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_cli_runs_data_stage_then_skips_it_then_reruns_on_seed_change(tmp_path):
    run_dir = tmp_path / "cli"
    first = _run(tmp_path)
    assert "[data] running: no finished manifest" in first
    assert str(run_dir / "data" / "tokenizer") in first  # the summary says where outputs are
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"tokenizer", "pretrain", "sft", "rl", "eval"}
    # wandb ran offline inside the stage directory; metrics.jsonl sits beside it.
    assert list((run_dir / "data" / "wandb").glob("offline-run-*"))
    assert (run_dir / "data" / "metrics.jsonl").read_text().strip()
    assert "[data] running" in (run_dir / "pipeline.log").read_text()

    second = _run(tmp_path)
    assert "[data] skipped" in second and "[data] running" not in second

    third = _run(tmp_path, "task.seed=1")
    assert "[data] running: config changed" in third
    assert json.loads((run_dir / "data" / "manifest.json").read_text())["config"]["task"]["seed"] == 1
