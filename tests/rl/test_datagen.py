"""The data stage end to end on real Ray: splits, held-out guarantee, determinism, tokenizer, metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf

from orchestration.stages import STAGES, StageContext
from rl.tasks import datagen, verify
from rl.tasks.config import ArithmeticConfig, TaskConfig
from training import corpus
from training.tokenizer import ASSISTANT, load_tokenizer
from training.tracking import LoggingConfig, Tracker, read_metrics

COLUMNS = {
    "pretrain": ["text"],
    "sft": ["id", "task", "question", "messages", "prompt", "completion", "answer", "meta"],
    "rl": ["id", "task", "question", "messages", "prompt", "answer", "meta"],
    "eval": ["id", "task", "question", "messages", "prompt", "answer", "meta"],
}
COUNTS = {"pretrain": 120, "sft": 40, "rl": 24, "eval": 24}


def tiny(seed: int = 0, **overrides) -> TaskConfig:
    fields = dict(
        tasks=["arithmetic", "countdown"],
        seed=seed,
        pretrain_docs=COUNTS["pretrain"],
        sft_pairs=COUNTS["sft"],
        rl_prompts=COUNTS["rl"],
        eval_prompts=COUNTS["eval"],
        block_size=16,
    )
    return TaskConfig(**(fields | overrides))


def run_stage(root: Path, task: TaskConfig):
    """Run the real stage as the pipeline would: a DictConfig root, a real context and tracker."""
    cfg = OmegaConf.create({"task": OmegaConf.structured(task), "model": {"pretrained": None}})
    tracker = Tracker(root / "out", "test/data", LoggingConfig(wandb_mode="disabled", progress=False))
    ctx = StageContext(
        name="data", run_dir=root, out_dir=root / "out", work_dir=root / "work", tracker=tracker
    )
    try:
        result = STAGES["data"].run(STAGES["data"].view(cfg), ctx)
    finally:
        tracker.close()
    return result, root / "out"


def load(out: Path) -> dict[str, list[dict]]:
    return {split: datasets.load_from_disk(str(out / split)).to_list() for split in COLUMNS}


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """Seed 0 twice (the second one block per Ray wave) and seed 1."""
    first = run_stage(tmp_path_factory.mktemp("seed0"), tiny(0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datagen, "MAX_WAVE_BLOCKS", 1)
        again = run_stage(tmp_path_factory.mktemp("seed0_serial"), tiny(0))
    other = run_stage(tmp_path_factory.mktemp("seed1"), tiny(1))
    return {"first": first, "again": again, "other": other}


def test_stage_writes_every_dataset_with_the_documented_columns_and_counts(runs):
    result, out = runs["first"]
    assert result.outputs == {
        "tokenizer": "tokenizer",
        "pretrain": "pretrain",
        "sft": "sft",
        "rl": "rl",
        "eval": "eval",
    }
    data = load(out)
    for split, columns in COLUMNS.items():
        assert datasets.load_from_disk(str(out / split)).column_names == columns
        assert len(data[split]) == COUNTS[split] == result.metrics[f"{split}_count"]
        for task in ("arithmetic", "countdown"):
            assert result.metrics[f"{split}_count/{task}"] == COUNTS[split] // 2
    for row in data["pretrain"]:
        assert re.fullmatch(
            r"<\|user\|>\n.+\n<\|assistant\|>\n<think>.*</think> <answer>.+</answer><\|endoftext\|>",
            row["text"],
            re.S,
        )
    for row in data["sft"] + data["rl"] + data["eval"]:
        assert row["prompt"] == f"<|user|>\n{row['question']}\n<|assistant|>\n"
        assert json.loads(row["messages"]) == [{"role": "user", "content": row["question"]}]
        assert isinstance(json.loads(row["meta"]), dict)


def _pretrain_prompt(text: str) -> str:
    return text[: text.index(ASSISTANT) + len(ASSISTANT) + 1]


def test_held_out_prompts_never_appear_in_training_data(runs):
    for name in runs:
        data = load(runs[name][1])
        eval_prompts = {row["prompt"] for row in data["eval"]}
        training = {_pretrain_prompt(row["text"]) for row in data["pretrain"]}
        training |= {row["prompt"] for split in ("sft", "rl") for row in data[split]}
        assert len(eval_prompts) == COUNTS["eval"] and not eval_prompts & training
        # Each side is where the id hash puts it, so no seed could move a problem across.
        assert all(
            datagen.assign_split(r["id"], 0.1, {"pretrain": 0, "sft": 0, "rl": 1}) == "eval"
            for r in data["eval"]
        )
        assert all(
            datagen.assign_split(r["id"], 0.1, {"pretrain": 0, "sft": 0, "rl": 1}) != "eval"
            for r in data["sft"]
        )
        # Pretraining and SFT problems are disjoint too.
        assert not {_pretrain_prompt(r["text"]) for r in data["pretrain"]} & {
            r["prompt"] for r in data["sft"]
        }


def test_eval_sets_of_different_seeds_share_no_problem_with_either_training_set(runs):
    a, b = load(runs["first"][1]), load(runs["other"][1])
    train_a = {r["id"] for split in ("sft", "rl") for r in a[split]}
    train_b = {r["id"] for split in ("sft", "rl") for r in b[split]}
    eval_ids = {r["id"] for r in a["eval"] + b["eval"]}
    assert not eval_ids & (train_a | train_b)


def test_the_leak_check_finds_an_eval_prompt_smuggled_into_training(runs):
    data = load(runs["first"][1])
    assert corpus.held_out_leaks(data) == []
    smuggled = data["eval"][3]
    data["pretrain"].append({"text": smuggled["prompt"] + "<think></think> <answer>1</answer><|endoftext|>"})
    assert corpus.held_out_leaks(data) == [smuggled["prompt"]]
    data["pretrain"].pop()
    data["rl"].append(dict(smuggled))
    assert corpus.held_out_leaks(data) == [smuggled["prompt"]]


def test_same_seed_gives_identical_data_whatever_the_parallelism(runs):
    (first_result, first), (again_result, again) = runs["first"], runs["again"]
    assert load(first) == load(again)
    assert (first / "tokenizer" / "tokenizer.json").read_bytes() == (
        again / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    assert first_result.metrics == again_result.metrics


def test_different_seed_gives_different_data(runs):
    a, b = load(runs["first"][1]), load(runs["other"][1])
    for split in COLUMNS:
        assert a[split] != b[split]
    assert {r["text"] for r in a["pretrain"]} != {r["text"] for r in b["pretrain"]}


def test_tokenizer_round_trips_every_saved_text(runs):
    out = runs["first"][1]
    tokenizer = load_tokenizer(out / "tokenizer")
    data = load(out)
    texts = [r["text"] for r in data["pretrain"]]
    texts += [r["prompt"] + r["completion"] for r in data["sft"]]
    texts += [
        r[key] for split in ("sft", "rl", "eval") for r in data[split] for key in ("prompt", "question")
    ]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer) == runs["first"][0].metrics["vocab_size"] <= TaskConfig().vocab_size


def test_every_sft_completion_earns_full_reward_from_its_verifier(runs):
    for row in load(runs["first"][1])["sft"]:
        assert verify(row["task"], row["completion"], row["answer"], row["meta"]) == 1.0


def test_metrics_reach_the_result_and_the_tracker(runs):
    result, out = runs["first"]
    assert result.metrics["eval_overlap"] == 0 and result.metrics["pretrain_sft_overlap"] == 0
    assert result.metrics["pretrain_tokens"] > 20 * COUNTS["pretrain"]
    rows = read_metrics(out)
    assert rows[-1]["pretrain_count"] == COUNTS["pretrain"]
    assert any(row.get("data/countdown/eval") == COUNTS["eval"] // 2 for row in rows)


def test_a_used_up_problem_space_fails_naming_the_counts_to_lower(ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(datagen, "MAX_IDLE_BLOCKS", 10)
    # 1+1, 1+2, 2+1, 2+2: four problems cannot fill 50 pretraining documents.
    cramped = ArithmeticConfig(num_ops=[1, 1], operands=[1, 2], ops=["+"])
    task = TaskConfig(
        pretrain_docs=50, sft_pairs=0, rl_prompts=0, eval_prompts=0, block_size=4, arithmetic=cramped
    )
    with pytest.raises(RuntimeError, match=r"no new problem in 10 consecutive blocks.*task\.pretrain_docs"):
        run_stage(tmp_path, task)


def test_a_small_gsm8k_file_fills_what_it_can_and_warns(ray_session, tmp_path):
    records = [
        {
            "question": f"Tom has {i} apples and buys 3. How many now?",
            "answer": f"{i}+3={i + 3}\n#### {i + 3}",
        }
        for i in range(60)
    ]
    path = tmp_path / "mini.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = TaskConfig(
        tasks=["gsm8k"],
        gsm8k_files=[str(path)],
        pretrain_docs=30,
        sft_pairs=20,
        rl_prompts=10,
        eval_prompts=20,
        block_size=64,
    )
    with pytest.warns(UserWarning) as caught:
        result, out = run_stage(tmp_path / "run", task)
    messages = [str(w.message) for w in caught]
    assert any(re.match(r"task 'gsm8k' ran out of problems: eval has \d+ of the 20", m) for m in messages), (
        messages
    )
    data = load(out)
    assert sum(len(rows) for rows in data.values()) <= 60 and result.metrics["eval_overlap"] == 0
    assert all(verify("gsm8k", r["completion"], r["answer"], r["meta"]) == 1.0 for r in data["sft"])


def test_task_config_from_hydra_is_validated_with_the_field_named():
    assert datagen.as_task_config(OmegaConf.create({"tasks": ["countdown"], "seed": 3})).seed == 3
    with pytest.raises(ValueError, match=r"task\.eval_fraction must be in \(0, 1\); got 1.5"):
        datagen.as_task_config(OmegaConf.create({"eval_fraction": 1.5}))
    with pytest.raises(Exception, match="seeed"):
        datagen.as_task_config(OmegaConf.create({"seeed": 3}))
    with pytest.raises(
        KeyError,
        match=r"unknown task 'sudoku'; registered tasks: \['arithmetic', 'countdown', 'dataset', 'gsm8k', 'reasoning_gym'\]",
    ):
        datagen.draw_samples(OmegaConf.create({"tasks": ["sudoku"]}), None)


def test_apportion_splits_counts_by_weight_and_keeps_the_total():
    assert datagen.apportion(10, {"a": 0.7, "b": 0.3}) == {"a": 7, "b": 3}
    assert datagen.apportion(5, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == {"a": 2, "b": 2, "c": 1}
    assert datagen.apportion(0, {"a": 1.0}) == {"a": 0}
