"""The pipeline's serve stage (orchestration/stages/serve.py): deploy the run's model with its draft, answer the eval prompts over
HTTP, record pass@1, latency and acceptance, write a deployable Serve config, delete the app."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from datasets import Dataset
from net import free_port
from ray import serve
from ray._common.utils import import_attr
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema
from served_model import save_tiny_models

from orchestration.cli import compose
from orchestration.stages import StageContext
from orchestration.stages import serve as serve_stage
from serving.engine import Engine
from serving.protocol import SamplingParams
from training.tokenizer import render_prompt
from training.tracking import LoggingConfig, Tracker

QUESTIONS = ["What is 3 + 4?", "What is 2 * 5?", "The quick brown", "Reasoning models", "step by", "fox"]


def _eval_split(path, answers: list[str]) -> None:
    n = len(QUESTIONS)
    Dataset.from_dict(
        {
            "id": [f"q{i}" for i in range(n)],
            "task": ["arithmetic"] * n,
            "question": QUESTIONS,
            "messages": [json.dumps([{"role": "user", "content": q}]) for q in QUESTIONS],
            "prompt": [render_prompt(q) for q in QUESTIONS],
            "answer": answers,
            "meta": [json.dumps({"row": i}) for i in range(n)],
        }
    ).save_to_disk(str(path))


def test_serve_stage_scores_the_endpoints_answers_and_deletes_the_app(ray_session, tmp_path, monkeypatch):
    models = save_tiny_models(tmp_path / "models")
    engine = Engine.from_pretrained(models.target, "cpu")
    greedy = engine.generate(
        [render_prompt(q) for q in QUESTIONS], SamplingParams(max_tokens=12, temperature=0)
    )
    # Rows 0, 2, 4 hold the model's own greedy answer: a verifier comparing texts scores exactly 1/2,
    # and only if every answer reached the row it belongs to.
    answers = [g.text if i % 2 == 0 else "not this" for i, g in enumerate(greedy)]
    _eval_split(tmp_path / "eval", answers)

    def verify(task, text, answer, meta):
        assert task == "arithmetic" and answer == answers[meta["row"]]
        return float(text == answer)

    monkeypatch.setattr(serve_stage, "verify", verify)  # a verifier that also checks the routing

    # With API keys on: the stage's own eval client must authenticate like any other client.
    key = "sk-rf-stage-test-0123456789"
    (tmp_path / "keys").write_text(f"{key}\n")
    cfg = compose(
        [
            f"serve.api_key_file={tmp_path / 'keys'}",
            f"serve.port={free_port()}",
            "serve.eval_concurrency=3",
            "serve.max_batch_size=4",
            "eval.limit=6",
            "eval.max_new_tokens=12",
        ]
    )
    out = tmp_path / "out"
    tracker = Tracker(out, "serve", LoggingConfig(wandb_mode="disabled", progress=False))
    ctx = StageContext(
        name="serve",
        run_dir=tmp_path,
        out_dir=out,
        work_dir=tmp_path / "work",
        tracker=tracker,
        inputs={"eval": tmp_path / "eval", "model": Path(models.target), "draft": Path(models.draft)},
        sources={"eval": "data", "model": "sft", "draft": "distill"},
    )
    try:
        result = serve_stage.run(cfg, ctx)
        assert cfg.serve.app_name not in serve.status().applications  # deleted after the eval
    finally:
        tracker.close()
        serve.shutdown()

    m = result.metrics
    assert m["endpoint_pass@1"] == 0.5 and m["eval_prompts"] == 6 and m["errors_other"] == 0
    assert 0 < m["latency_p50_s"] <= m["latency_p99_s"] and m["tokens_per_s"] > 0
    assert 0 < m["acceptance_rate"] < 1  # the distill stage's model drafted
    rows = [json.loads(line) for line in (out / result.outputs["answers"]).read_text().splitlines()]
    assert [r["text"] for r in rows] == [g.text for g in greedy]  # greedy speculative == target greedy

    # The written Serve config deploys the same endpoint: Serve's schema accepts it, its app builds.
    text = (out / result.outputs["serve_config"]).read_text()
    assert key not in text  # the file's path is recorded, never a key
    config = yaml.safe_load(text)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert (app["args"]["model_dir"], app["args"]["draft_dir"]) == (models.target, models.draft)
    assert app["args"]["api_key_file"] == str(tmp_path / "keys")
    built = call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), app["args"])
    assert isinstance(built, Application)  # every ServeConfig field it wrote is accepted


def test_the_keep_alive_hint_names_the_key_by_variable_never_by_value(capsys):
    serve_stage._announce("http://127.0.0.1:8000", "reasonforge", keyed=True)
    keyed = capsys.readouterr().out
    assert "Authorization: Bearer $API_KEY" in keyed and "os.environ['API_KEY']" in keyed
    serve_stage._announce("http://127.0.0.1:8000", "reasonforge", keyed=False)
    open_ = capsys.readouterr().out
    assert "Authorization" not in open_ and "api_key='none'" in open_
