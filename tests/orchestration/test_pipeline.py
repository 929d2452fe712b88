"""The driver: manifests, skipping finished stages, re-running changed ones, surviving crashes.

These tests drive the real driver on real Ray with two small stage functions that write files, so
each behaviour is checked in seconds; the last test does the same with the real data stage, and
tests/orchestration/test_pipeline_e2e.py runs every stage through the `reasonforge` command.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestration import pipeline
from orchestration.cli import compose
from orchestration.stages import STAGES, ConfigView, StageContext, StageResult, StageSpec, first_of, optional

CALLS: list[str] = []


def _produce(cfg, ctx):
    CALLS.append("produce")
    (ctx.out_dir / "numbers.txt").write_text(f"seed={cfg.task.seed}\n")
    ctx.tracker.log({"x": 1.0}, step=0)
    return StageResult(outputs={"numbers": "numbers.txt"}, metrics={"count": 1})


def _consume(cfg, ctx):
    CALLS.append("consume")
    text = ctx.input("numbers").read_text()
    (ctx.out_dir / "copy.txt").write_text(text.upper())
    return StageResult(outputs={"copy": "copy.txt"})


def _consumer(run) -> StageSpec:
    return StageSpec("consume", run, reads=("logging",), inputs={"numbers": first_of("produce.numbers")})


@pytest.fixture
def two_stages(monkeypatch, ray_session, tmp_path):
    monkeypatch.setitem(STAGES, "produce", StageSpec("produce", _produce, ("task",)))
    monkeypatch.setitem(STAGES, "consume", _consumer(_consume))
    CALLS.clear()

    def cfg(*overrides):
        return compose(
            [
                f"cluster.storage_path={tmp_path}",
                "run_name=t",
                "stages=[produce,consume]",
                "logging.wandb_mode=disabled",
                *overrides,
            ]
        )

    return cfg, tmp_path / "t"


def test_manifest_records_config_inputs_outputs_and_versions(two_stages):
    cfg, run_dir = two_stages
    manifests = pipeline.run_pipeline(cfg())
    m = json.loads((run_dir / "consume" / "manifest.json").read_text())
    assert m["inputs"] == {"produce": manifests["produce"].fingerprint}
    assert m["outputs"] == {"copy": "copy.txt"} and set(m["output_hashes"]) == {"copy"}
    assert {"torch", "ray", "deepspeed", "transformers", "python"} <= set(m["versions"])
    assert (run_dir / "consume" / "copy.txt").read_text() == f"SEED={cfg().task.seed}\n"
    assert (run_dir / "produce" / "metrics.jsonl").read_text().count("\n") == 1


def test_second_run_skips_finished_stages(two_stages, caplog):
    cfg, _ = two_stages
    pipeline.run_pipeline(cfg())
    caplog.set_level("INFO", logger="reasonforge.pipeline")
    pipeline.run_pipeline(cfg())
    assert CALLS == ["produce", "consume"]
    assert "[produce] skipped" in caplog.text and "[consume] skipped" in caplog.text


def test_config_change_reruns_that_stage_and_everything_after(two_stages):
    cfg, run_dir = two_stages
    pipeline.run_pipeline(cfg())
    pipeline.run_pipeline(cfg("task.seed=5"))
    assert CALLS == ["produce", "consume", "produce", "consume"]
    assert (run_dir / "consume" / "copy.txt").read_text() == "SEED=5\n"


def test_downstream_config_change_reruns_only_downstream(two_stages):
    cfg, _ = two_stages
    pipeline.run_pipeline(cfg())
    pipeline.run_pipeline(cfg("logging.progress=false"))
    assert CALLS == ["produce", "consume", "consume"]


def test_resume_false_reruns_everything(two_stages):
    cfg, _ = two_stages
    pipeline.run_pipeline(cfg())
    pipeline.run_pipeline(cfg("resume=false"))
    assert CALLS == ["produce", "consume"] * 2


def test_crash_keeps_earlier_outputs_and_next_run_redoes_only_that_stage(two_stages, monkeypatch):
    cfg, run_dir = two_stages
    pipeline.run_pipeline(cfg())
    before = (run_dir / "consume" / "copy.txt").read_text()

    def crash_after_writing(cfg, ctx):
        _consume(cfg, ctx)  # every output written, then the process dies before returning
        raise RuntimeError("boom inside consume")

    monkeypatch.setitem(STAGES, "consume", _consumer(crash_after_writing))
    with pytest.raises(RuntimeError, match="boom inside consume"):
        pipeline.run_pipeline(cfg("logging.progress=false"))
    # The previous result is intact and nothing half-written sits where a reader would look.
    assert (run_dir / "consume" / "copy.txt").read_text() == before
    assert not list(run_dir.glob(".consume.*"))

    monkeypatch.setitem(STAGES, "consume", _consumer(_consume))
    CALLS.clear()
    pipeline.run_pipeline(cfg("logging.progress=false"))
    assert CALLS == ["consume"]


def test_crash_of_first_run_leaves_no_manifest(two_stages, monkeypatch):
    cfg, run_dir = two_stages

    def crash(cfg, ctx):
        (ctx.out_dir / "numbers.txt").write_text("half")
        raise KeyboardInterrupt  # even a non-Exception interruption must not publish

    monkeypatch.setitem(STAGES, "produce", StageSpec("produce", crash, ("task",)))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(cfg())
    assert not (run_dir / "produce").exists()


def test_tampered_output_is_not_trusted(two_stages):
    cfg, run_dir = two_stages
    pipeline.run_pipeline(cfg())
    (run_dir / "produce" / "numbers.txt").write_text("tampered, longer than before\n")
    pipeline.run_pipeline(cfg())
    # produce re-runs and restores its output; consume's input is byte-identical again, so it
    # is reused: fingerprints are content hashes, not timestamps.
    assert CALLS == ["produce", "consume", "produce"]
    assert (run_dir / "produce" / "numbers.txt").read_text() == f"seed={cfg().task.seed}\n"


def test_unknown_stage_is_named(two_stages):
    cfg, _ = two_stages
    with pytest.raises(ValueError, match="pretrian"):
        pipeline.run_pipeline(cfg("stages=[pretrian]"))


def test_a_missing_upstream_without_inputs_of_its_own_runs_first(two_stages):
    cfg, _ = two_stages
    pipeline.run_pipeline(cfg("stages=[consume]"))
    assert CALLS == ["produce", "consume"]


def test_a_stage_reading_config_it_does_not_declare_fails_naming_the_section(two_stages, monkeypatch):
    cfg, run_dir = two_stages

    def sneaky(cfg, ctx):
        return _produce(cfg, ctx) if cfg.model.arch else None  # reads `model`, declares only `task`

    monkeypatch.setitem(STAGES, "produce", StageSpec("produce", sneaky, reads=("task",)))
    with pytest.raises(
        AttributeError, match=r"stage 'produce' read cfg\.model, which its StageSpec does not"
    ):
        pipeline.run_pipeline(cfg())
    assert not (run_dir / "produce").exists()


def test_runs_on_sections_are_readable_but_outside_the_cache_key(two_stages, monkeypatch):
    cfg, _ = two_stages

    def on_cluster(cfg, ctx):
        ctx.tracker.log({"workers": float(cfg.cluster.num_workers)})
        return _produce(cfg, ctx)

    monkeypatch.setitem(
        STAGES, "produce", StageSpec("produce", on_cluster, reads=("task",), runs_on=("cluster",))
    )
    pipeline.run_pipeline(cfg())
    pipeline.run_pipeline(cfg("cluster.num_workers=1"))  # where it runs changed, not what it computes
    assert CALLS == ["produce", "consume"]


def test_an_input_comes_from_the_first_of_its_sources_that_finished(two_stages, monkeypatch):
    cfg, run_dir = two_stages
    seen = {}

    def consume_any(cfg, ctx):
        seen.update(source=ctx.sources["numbers"], extra=ctx.inputs.get("extra"))
        return _consume(cfg, ctx)

    monkeypatch.setitem(
        STAGES,
        "consume",
        StageSpec(
            "consume",
            consume_any,
            reads=("logging",),
            inputs={
                "numbers": first_of("missing.numbers", "produce.numbers"),
                "extra": optional("absent.thing"),
            },
        ),
    )
    manifests = pipeline.run_pipeline(cfg())
    assert seen == {"source": "produce", "extra": None}
    assert manifests["consume"].inputs == {"produce": manifests["produce"].fingerprint}


def test_a_config_view_keeps_its_restriction_through_pickling():
    import pickle

    view = pickle.loads(pickle.dumps(ConfigView(compose([]), "s", ["task"])))
    assert view.task.seed == 0
    with pytest.raises(AttributeError, match="cfg.rlvr"):
        _ = view.rlvr


def test_stage_run_alone_reuses_finished_upstream(two_stages):
    cfg, run_dir = two_stages
    pipeline.run_pipeline(cfg())
    pipeline.run_pipeline(cfg("stages=[consume]", "resume=false"))
    assert CALLS == ["produce", "consume", "consume"]
    assert Path(run_dir / "consume" / "copy.txt").exists()


def test_real_data_stage_skips_on_rerun_and_reruns_when_task_seed_changes(ray_session, tmp_path, caplog):
    def run(*overrides):
        caplog.clear()
        pipeline.run_pipeline(
            compose(
                [
                    f"cluster.storage_path={tmp_path}",
                    "run_name=d",
                    "stages=[data]",
                    "logging.wandb_mode=disabled",
                    "task.pretrain_docs=300",
                    "task.sft_pairs=100",
                    "task.rl_prompts=20",
                    "task.eval_prompts=20",
                    *overrides,
                ]
            )
        )
        return caplog.text

    caplog.set_level("INFO", logger="reasonforge.pipeline")
    manifest = tmp_path / "d" / "data" / "manifest.json"
    assert "[data] running: no finished manifest" in run()
    first = json.loads(manifest.read_text())
    assert "[data] skipped" in run() and json.loads(manifest.read_text()) == first
    assert "[data] running: config changed" in run("task.seed=1")
    second = json.loads(manifest.read_text())
    assert second["config"]["task"]["seed"] == 1 and second["output_hashes"] != first["output_hashes"]


def test_the_serve_stage_takes_the_rlvr_model_else_sft_and_names_what_is_missing(tmp_path):
    from orchestration.artifacts import Manifest

    def manifest(stage):
        return Manifest(stage, "h", {}, {}, {"model": "model"}, {"model": stage}, {}, {}, 0.0, "", {})

    finished = {"data": Manifest("data", "h", {}, {}, {"eval": "eval"}, {"eval": "e"}, {}, {}, 0.0, "", {})}
    with pytest.raises(RuntimeError, match="needs its input 'model' from stage 'rlvr' or 'sft'"):
        pipeline.resolve_inputs(STAGES["serve"], finished.get, tmp_path)
    finished["sft"] = manifest("sft")
    inputs, sources = pipeline.resolve_inputs(STAGES["serve"], finished.get, tmp_path)
    assert inputs["model"] == tmp_path / "sft" / "model" and "draft" not in inputs
    finished.update(rlvr=manifest("rlvr"), distill=manifest("distill"))
    inputs, sources = pipeline.resolve_inputs(STAGES["serve"], finished.get, tmp_path)
    assert sources == {"eval": "data", "model": "rlvr", "draft": "distill"}
    assert inputs["draft"] == tmp_path / "distill" / "model"


def test_a_stage_that_declares_an_output_it_did_not_write_fails_and_publishes_nothing(
    two_stages, monkeypatch
):
    cfg, run_dir = two_stages
    (run_dir / ".produce.killed.partial").mkdir(parents=True)  # left by a killed attempt

    def forgetful(cfg, ctx):
        return StageResult(outputs={"numbers": "numbers.txt"})

    monkeypatch.setitem(STAGES, "produce", StageSpec("produce", forgetful, reads=("task",)))
    with pytest.raises(RuntimeError, match=r"declared outputs it did not write: \['numbers'\]"):
        pipeline.run_pipeline(cfg("stages=[produce]"))
    assert not (run_dir / "produce").exists() and not list(run_dir.glob(".produce.*"))


def test_inputs_name_what_is_missing():
    with pytest.raises(ValueError, match="'stage.output' strings"):
        first_of("pretrain")
    ctx = StageContext("serve", Path("/r"), Path("/o"), Path("/w"), tracker=None, inputs={"eval": Path("/e")})
    with pytest.raises(KeyError, match=r"stage 'serve' has no input 'model' in this run; it has \['eval'\]"):
        ctx.input("model")
    assert ctx.source_metric("eval", "pass@1") is None


def test_a_run_can_start_at_any_stage_from_the_users_model(tmp_path):
    """`stages=[rlvr,distill,serve] model.pretrained=<dir>`: the data stage is added (it needs no
    model), the model inputs fall back to model.pretrained, and the manifest says which they took."""
    from orchestration.artifacts import Manifest

    mine = tmp_path / "my_model"
    cfg = compose(["stages=[rlvr,distill,serve]", f"model.pretrained={mine}"])
    nothing = {}.get
    names = [s.name for s in pipeline.with_source_stages(pipeline.resolve_stages(cfg.stages), nothing, cfg)]
    assert names == ["data", "rlvr", "distill", "serve"]
    # Without a model to start from, nothing that needs one is added behind the user's back.
    bare = compose(["stages=[rlvr]"])
    assert [
        s.name for s in pipeline.with_source_stages(pipeline.resolve_stages(bare.stages), nothing, bare)
    ] == [
        "data",
        "rlvr",
    ]
    data = Manifest("data", "h", {}, {}, {k: k for k in ("tokenizer", "rl", "eval")}, {}, {}, {}, 0.0, "", {})
    finished = {"data": data}
    inputs, sources = pipeline.resolve_inputs(STAGES["rlvr"], finished.get, tmp_path, cfg)
    assert inputs["start"] == mine and sources["start"] == "config:model.pretrained"
    with pytest.raises(RuntimeError, match="add 'sft' to `stages`, or set model.pretrained"):
        pipeline.resolve_inputs(STAGES["rlvr"], finished.get, tmp_path, bare)
    # A finished upstream model wins over the config's.
    finished["sft"] = Manifest("sft", "h", {}, {}, {"model": "model"}, {}, {}, {}, 0.0, "", {})
    inputs, sources = pipeline.resolve_inputs(STAGES["rlvr"], finished.get, tmp_path, cfg)
    assert inputs["start"] == tmp_path / "sft" / "model" and sources["start"] == "sft"
    # That sft finished before stages kept per-prompt scores: the start scores are absent (the
    # stage scores its start model itself), not taken from pretrain, which scored another model.
    finished["pretrain"] = Manifest(
        "pretrain", "h", {}, {}, {"model": "model", "eval_scores": "e.json"}, {}, {}, {}, 0.0, "", {}
    )
    inputs, _ = pipeline.resolve_inputs(STAGES["rlvr"], finished.get, tmp_path, cfg)
    assert inputs["start"] == tmp_path / "sft" / "model" and "start_scores" not in inputs
    finished["sft"].outputs["eval_scores"] = "e.json"
    inputs, _ = pipeline.resolve_inputs(STAGES["rlvr"], finished.get, tmp_path, cfg)
    assert inputs["start_scores"] == tmp_path / "sft" / "e.json"
    assert pipeline._source_label(STAGES["rlvr"], "start", "sft") == "sft.model"
    assert (
        pipeline._source_label(STAGES["rlvr"], "start", "config:model.pretrained")
        == "config:model.pretrained"
    )


def test_dotted_reads_expose_one_field_and_key_the_cache_on_it():
    cfg = compose(["model.pretrained=/m"])
    view = STAGES["data"].view(cfg)
    assert view.model.pretrained == "/m" and view.task.seed == cfg.task.seed
    with pytest.raises(AttributeError, match=r"read cfg.model.hidden_size.*'model.pretrained'"):
        _ = view.model.hidden_size
    assert pipeline.config_slice(cfg, STAGES["data"].reads)["model.pretrained"] == "/m"
    assert STAGES["data"].reads_key("model.pretrained") and STAGES["data"].reads_key("model")
    assert not STAGES["data"].reads_key("model.hidden_size")
    with pytest.raises(ValueError, match="inputs from config it does not read"):
        StageSpec(
            "x", lambda c, x: None, reads=("task",), inputs={"m": first_of("a.b", config="model.pretrained")}
        )


def test_a_missing_pretrained_directory_fails_before_anything_runs(tmp_path):
    cfg = compose([f"model.pretrained={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match="make smollm2"):
        pipeline.with_local_model(cfg, tmp_path / "_models")
    assert pipeline.with_local_model(compose([]), tmp_path).model.pretrained is None


def test_model_sources_fail_offline_and_without_the_preset_package_naming_what_to_do(tmp_path, monkeypatch):
    from orchestration import model_sources

    assert model_sources.localize(str(tmp_path), tmp_path) == str(tmp_path)  # a local path stays
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not download 'org/model'.*without a network"):
        model_sources.localize("hf://org/model", tmp_path / "cache")
    fake = model_sources.GgufPreset("no_such_pkg_rf", "no-such-pkg==1", "m.gguf", "")
    monkeypatch.setitem(model_sources.PRESETS, "fake", fake)
    with pytest.raises(FileNotFoundError, match=r"'no_such_pkg_rf' is not installed; `make smollm2`"):
        model_sources.prepare_preset("fake", tmp_path / "out")
    with pytest.raises(KeyError, match="unknown model preset 'nope'"):
        model_sources.prepare_preset("nope", tmp_path / "out")
