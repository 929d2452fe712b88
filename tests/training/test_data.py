"""Training batches: disjoint across ranks and micro-steps, SFT loss only on completions, SFT
records longer than seq_len dropped, truncated or refused, and always counted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from datasets import Dataset

from orchestration.stages.train import LM_KEYS, picked
from rl.tasks.format import FORMAT_TAGS
from training.config import ExpertParallelConfig, ModelConfig, OptimizerConfig, TrainConfig
from training.data import IGNORE, PromptCompletionPairs, batch_indices
from training.loop import TrainJob, data_metrics
from training.recipes import SFT
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


# Token lengths (prompt + completion) 22, 26, 10 + 91 and 46 + 10: at seq_len 40 record 2 is too
# long and record 3's prompt alone fills the row.
RECORDS = [
    ("Compute 2+3", "<think>2+3=5</think> <answer>5</answer>"),
    ("Compute 12+7", "<think>12+7=19</think> <answer>19</answer>"),
    ("Compute 1+1", "<think>" + "1+1=2, " * 12 + "</think> <answer>2</answer>"),
    ("Compute " + "+".join(["1"] * 20), "<think>20</think> <answer>20</answer>"),
]
SEQ_LEN = 40


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A tokenizer, SFT data with two records over SEQ_LEN (`dir`), data whose every prompt fills
    SEQ_LEN (`long_prompts`), and each record's token length (`lengths`)."""
    tmp = tmp_path_factory.mktemp("overlong")
    prompts = [render_prompt(q) for q, _ in RECORDS]
    completions = [render_completion(s) for _, s in RECORDS]
    tok = train_tokenizer(
        [p + c for p, c in zip(prompts, completions, strict=True)] * 5, 300, tmp / "tok", FORMAT_TAGS
    )
    lengths = [
        len(tok(p + c, add_special_tokens=False).input_ids) for p, c in zip(prompts, completions, strict=True)
    ]
    prompt_lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    assert (
        lengths[0] < lengths[1] <= SEQ_LEN < lengths[2] and prompt_lengths[2] < SEQ_LEN <= prompt_lengths[3]
    )
    Dataset.from_dict({"prompt": prompts, "completion": completions}).save_to_disk(tmp / "sft")
    Dataset.from_dict({"prompt": prompts[3:] * 2, "completion": completions[3:] * 2}).save_to_disk(
        tmp / "long"
    )
    return SimpleNamespace(dir=tmp / "sft", long_prompts=tmp / "long", tok=tok, lengths=lengths)


def _labelled(data: PromptCompletionPairs, row: int) -> list[int]:
    labels = data.collate([row]).labels[0]
    return labels[labels != IGNORE].tolist()


def test_overlong_records_are_dropped_and_counted_by_default(sft):
    data = PromptCompletionPairs(sft.dir, sft.tok, SEQ_LEN)
    kept = sum(sft.lengths[:2])
    assert data.stats == {"records": 4, "kept": 2, "dropped": 2, "truncated": 0, "rows": 2, "tokens": kept}
    assert [len(s) for s in data.seqs] == sft.lengths[:2]  # never silently cut
    for row in range(len(data)):  # every kept record teaches the model to end its turn
        assert _labelled(data, row)[-1] == sft.tok.eos_token_id


def test_truncate_keeps_the_record_cut_at_seq_len_and_counts_it(sft):
    data = PromptCompletionPairs(sft.dir, sft.tok, SEQ_LEN, overlong="truncate")
    # Record 3's prompt fills the row and leaves nothing to learn: dropped even here.
    assert (data.stats["kept"], data.stats["truncated"], data.stats["dropped"]) == (3, 1, 1)
    assert len(data.seqs[2]) == SEQ_LEN
    assert sft.tok.eos_token_id not in _labelled(data, 2)  # what truncation costs: no end of turn


def test_error_names_the_first_overlong_record_and_its_length(sft):
    with pytest.raises(ValueError, match=rf"record 2 is {sft.lengths[2]} tokens .*train.seq_len={SEQ_LEN}"):
        PromptCompletionPairs(sft.dir, sft.tok, SEQ_LEN, overlong="error")


@pytest.mark.parametrize("overlong", ["drop", "truncate"])
def test_data_with_no_record_that_fits_fails_naming_seq_len_and_the_lengths(sft, overlong):
    with pytest.raises(
        ValueError, match=rf"none of its 2 records fits train.seq_len={SEQ_LEN}: records are \d+\.\.\d+"
    ):
        PromptCompletionPairs(sft.long_prompts, sft.tok, SEQ_LEN, overlong=overlong)


def test_an_unknown_overlong_setting_fails_naming_the_key():
    with pytest.raises(
        ValueError, match=r"overlong must be one of \('drop', 'truncate', 'error'\); got 'cut'"
    ):
        TrainConfig(overlong="cut")


def test_data_counts_become_metrics_that_the_sft_manifest_keeps(sft, tmp_path):
    train = TrainConfig(seq_len=SEQ_LEN, overlong="truncate", pack=True)
    job = TrainJob(
        name="sft",
        recipe=SFT,
        model=ModelConfig(),
        train=train,
        optimizer=OptimizerConfig(),
        expert_parallel=ExpertParallelConfig(),
        tokenizer_dir=str(tmp_path),
        data_dir=str(sft.dir),
        export_dir=str(tmp_path),
        work_dir=str(tmp_path),
    )
    metrics = data_metrics(SFT.make_source(job, sft.tok))  # as each worker builds its data
    assert metrics["data_truncated"] == 1 and metrics["data_dropped"] == 1 and metrics["data_records"] == 4
    assert 0 <= metrics["data_padding_share"] < 1
    last = {"step": 3, "loss": 1.0, "params_total": 10, "params_active": 5, **metrics}
    assert picked(last, LM_KEYS).items() >= metrics.items()
