"""Training batches: disjoint across ranks and micro-steps, SFT loss only on completions."""

from __future__ import annotations

from datasets import Dataset

from rl.tasks.format import FORMAT_TAGS
from training.data import IGNORE, PromptCompletionPairs, batch_indices
from training.tokenizer import render_completion, render_prompt, train_tokenizer


def test_batch_indices_partition_each_step_and_cover_an_epoch():
    kw = dict(world=2, micro_bs=3, accum=2, n=24, seed=1)
    seen = []
    for step in range(2):  # 2 steps x 12 rows = one epoch of 24
        rows = [r for micro in range(2) for rank in range(2) for r in batch_indices(step, micro, rank, **kw)]
        assert len(set(rows)) == 12
        seen += rows
    assert sorted(seen) == list(range(24))
    assert batch_indices(5, 1, 1, **kw) == batch_indices(5, 1, 1, **kw)  # resumable: a pure function


def test_sft_labels_cover_completion_tokens_only(tmp_path):
    q, sol = "Compute 2+3", "<think>2+3=5</think> <answer>5</answer>"
    tok = train_tokenizer([render_prompt(q) + render_completion(sol)] * 5, 300, tmp_path / "tok", FORMAT_TAGS)
    Dataset.from_dict({"prompt": [render_prompt(q)], "completion": [render_completion(sol)]}).save_to_disk(
        tmp_path / "sft"
    )
    batch = PromptCompletionPairs(tmp_path / "sft", tok, seq_len=64).collate([0])
    labelled = batch.labels[0][batch.labels[0] != IGNORE].tolist()
    assert tok.decode(labelled) == render_completion(sol)
