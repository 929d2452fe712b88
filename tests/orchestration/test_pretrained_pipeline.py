"""Bring your own model and data: a pretrained Hugging Face model with its own tokenizer and chat
template (a tiny random Llama with SmolLM2-135M-Instruct's real tokenizer, tests/pretrained_model.py)
runs sft -> rlvr -> distill -> serve on the user's JSONL chats, starting at sft: every stage uses
the model's tokenizer and template, and each manifest says where its model came from."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from net import free_port
from pretrained_model import SMOLLM2_TOKENIZER, save_tiny_llama
from ray import serve
from transformers import AutoConfig, AutoTokenizer

from orchestration.cli import compose
from orchestration.pipeline import run_pipeline
from serving.openai_api import ChatMessage, render_chat
from training.models import load_model


def _chats(path: Path, n: int = 240) -> Path:
    """The user's data: OpenAI-style chats, some with their own system turn, the answer beside them."""
    rng = random.Random(0)
    pairs = rng.sample([(a, b) for a in range(30) for b in range(30)], n)
    with open(path, "w") as f:
        for i, (a, b) in enumerate(pairs):
            turns = [{"role": "system", "content": "Think, then answer."}] if i % 3 == 0 else []
            turns += [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"<think>{a}+{b}={a + b}</think> <answer>{a + b}</answer>"},
            ]
            f.write(json.dumps({"messages": turns, "final": str(a + b)}) + "\n")
    return path


def _manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


@pytest.mark.slow
def test_a_pretrained_model_with_its_own_tokenizer_runs_sft_rlvr_distill_serve(ray_session, tmp_path):
    model_dir = save_tiny_llama(tmp_path / "my_llama")
    chats = _chats(tmp_path / "chats.jsonl")
    cfg = compose(
        [
            f"cluster.storage_path={tmp_path / 'runs'}",
            "run_name=byo",
            "stages=[sft,rlvr,distill,serve]",  # no data, no pretrain: the data stage is added
            f"model.pretrained={model_dir}",
            "task=dataset",
            f"task.dataset.files=[{chats}]",
            "task.dataset.columns.answer=final",
            "task.dataset.verifier=numeric",
            "task.system_prompt=Answer in tags.",
            "task.pretrain_docs=0",
            "task.sft_pairs=150",
            "task.rl_prompts=30",
            "task.eval_prompts=20",
            "sft.train.max_steps=3",
            # LoRA on the user's model (adapters trained, merged exports and weight pushes).
            "sft.lora.enabled=true",
            "sft.lora.r=4",
            "rlvr.lora.enabled=true",
            "rlvr.lora.r=4",
            "sft.train.checkpoint_every=3",
            "rlvr.train.max_steps=2",
            "rlvr.prompts_per_step=4",
            "rlvr.group_size=4",
            "rlvr.train.micro_batch_per_worker=4",
            "rlvr.max_new_tokens=12",
            "distill.train.max_steps=2",
            "distill.prompts_per_step=4",
            "distill.train.micro_batch_per_worker=4",
            "distill.max_new_tokens=12",
            "distill.num_teacher_workers=1",
            "distill.num_student_workers=1",
            "distill.compare_baseline=false",
            "distill.draft_eval_prompts=2",
            "distill.student.arch=llama",
            "distill.student.hidden_size=16",
            "distill.student.intermediate_size=32",
            "distill.student.num_hidden_layers=1",
            "distill.student.num_attention_heads=2",
            "distill.student.num_key_value_heads=1",
            "distill.student.head_dim=8",
            "distill.student.tie_word_embeddings=true",
            "eval.limit=8",
            "eval.max_new_tokens=12",
            "logging.wandb_mode=disabled",
            "logging.progress=false",
            f"serve.port={free_port()}",
        ]
    )
    try:
        run_pipeline(cfg)
    finally:  # the Serve instance belongs to the test session's Ray: leave none for later tests
        serve.shutdown()
    run = tmp_path / "runs" / "byo"
    smollm2 = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER)

    data = _manifest(run, "data")
    assert data["metrics"]["tokenizer_trained"] == 0.0 and data["metrics"]["vocab_size"] == 49152
    assert data["metrics"]["sft_count"] > 0 and data["metrics"]["pretrain_count"] == 0
    for split in ("rl", "eval"):  # what rollouts and evaluation generate from
        for row in load_from_disk(str(run / "data" / split)):
            turns = json.loads(row["messages"])
            assert row["prompt"] == smollm2.apply_chat_template(
                turns, add_generation_prompt=True, tokenize=False
            )
            assert turns[0]["role"] == "system" and row["prompt"].startswith("<|im_start|>system\n")
    sft_rows = load_from_disk(str(run / "data" / "sft"))
    assert all(c.endswith("<|im_end|>\n") for c in sft_rows["completion"])
    assert any("Think, then answer." in p for p in sft_rows["prompt"])  # a record's own system turn wins
    assert any("Answer in tags." in p for p in sft_rows["prompt"])

    # Where each stage's model came from: the user's, then each stage's own output.
    assert _manifest(run, "sft")["sources"]["start"] == "config:model.pretrained"
    assert _manifest(run, "rlvr")["sources"]["start"] == "sft.model"
    assert _manifest(run, "distill")["sources"]["teacher"] == "rlvr.model"
    assert _manifest(run, "serve")["sources"] == {
        "eval": "data.eval",
        "model": "rlvr.model",
        "draft": "distill.model",
    }
    assert not (run / "pretrain").exists()
    sft_m = _manifest(run, "sft")["metrics"]
    assert sft_m["steps"] == 3 and sft_m["loss"] > 0
    # LoRA trained the adapted projections, merged into a plain model; the embeddings stayed frozen.
    base, tuned = load_model(model_dir), load_model(run / "sft" / "model")
    assert set(tuned.state_dict()) == set(base.state_dict())
    layer = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned.state_dict()[layer], base.state_dict()[layer])
    assert torch.equal(
        tuned.state_dict()["model.embed_tokens.weight"], base.state_dict()["model.embed_tokens.weight"]
    )
    assert sft_m["data_dropped"] == 0 and sft_m["data_kept"] == data["metrics"]["sft_count"]

    for stage in ("sft", "rlvr", "distill"):
        exported = run / stage / "model"
        assert AutoTokenizer.from_pretrained(exported).get_vocab() == smollm2.get_vocab()
        assert AutoConfig.from_pretrained(exported).model_type == "llama"
        assert 0.0 <= _manifest(run, stage)["metrics"]["pass@1"] <= 1.0
    # The endpoint renders a chat request into exactly the prompt the eval set holds.
    served = AutoTokenizer.from_pretrained(run / "rlvr" / "model")
    for row in load_from_disk(str(run / "data" / "eval")).select(range(3)):
        messages = [ChatMessage(**m) for m in json.loads(row["messages"])]
        assert render_chat(messages, served) == row["prompt"]
    serve_m = _manifest(run, "serve")["metrics"]
    assert serve_m["eval_prompts"] == 8 and 0.0 <= serve_m["endpoint_pass@1"] <= 1.0
