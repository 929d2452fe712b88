"""The bring-your-own `dataset` task: sources, record shapes, column mapping, verifiers and errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from rl.tasks import generate_block, verify
from rl.tasks.config import DatasetColumns, DatasetConfig, TaskConfig
from rl.tasks.dataset import DatasetTask, Needs, load_samples

EVERYTHING = Needs(completion=True, answer=True)
RL_ONLY = Needs(completion=False, answer=True)
MAPPED = DatasetColumns(prompt="question", completion="response", answer="final", messages="conversations")

PAIRS = [
    {"question": "What is 6*7?", "response": "6*7 is <answer>42</answer>", "final": "42"},
    {"question": "Capital of France?", "response": "It is Paris.\n<answer>Paris</answer>", "final": "Paris"},
]
CHATS = [
    {
        "conversations": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "<answer>2</answer>"},
            {"role": "user", "content": "Another one?"},
            {"role": "assistant", "content": "<answer>3</answer>"},
        ],
        "final": "3",
    },
    {
        "conversations": [
            {"role": "user", "content": "What is 6*7?"},
            {"role": "assistant", "content": "<answer>42</answer>"},
        ],
        "final": "42",
    },
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


def _saved(path, records):
    Dataset.from_list(records).save_to_disk(str(path))
    return str(path)


def _saved_dict(path, records):
    DatasetDict({"train": Dataset.from_list(records), "test": Dataset.from_list(records[:1])}).save_to_disk(
        str(path)
    )
    return str(path)


def _load(files, needs=EVERYTHING, **fields):
    return load_samples(DatasetConfig(files=list(files), **{"columns": MAPPED} | fields), needs)


def test_prompt_completion_records_map_columns_and_keep_completions_verbatim(tmp_path):
    samples = _load([_jsonl(tmp_path / "pairs.jsonl", PAIRS)])
    assert [(s.prompt, s.solution, s.answer) for s in samples] == [
        (r["question"], r["response"], r["final"]) for r in PAIRS
    ]
    assert all(
        s.task == "dataset" and s.messages is None and s.meta == {"verifier": "exact"} for s in samples
    )
    assert [verify("dataset", s.solution, s.answer, s.meta) for s in samples] == [1.0, 1.0]
    assert verify("dataset", "<answer>Lyon</answer>", "Paris", json.dumps(samples[1].meta)) == 0.0


def test_a_messages_record_splits_into_earlier_turns_prompt_and_completion(tmp_path):
    first, second = _load([_jsonl(tmp_path / "chats.jsonl", CHATS)])
    turns = CHATS[0]["conversations"]
    assert first.messages == turns[:4] and first.prompt == "Another one?"
    assert first.solution == "<answer>3</answer>" and first.answer == "3"
    # One user turn and nothing else is just `prompt`.
    assert second.messages is None and second.prompt == "What is 6*7?"


@pytest.mark.parametrize(
    "writer", [_parquet, _saved, _saved_dict], ids=["parquet", "save_to_disk", "DatasetDict"]
)
def test_parquet_and_saved_datasets_read_like_jsonl(tmp_path, writer):
    for records, name in ((PAIRS, "pairs"), (CHATS, "chats")):
        expected = _load([_jsonl(tmp_path / f"{name}.jsonl", records)])
        target = tmp_path / (f"{name}.parquet" if writer is _parquet else f"{name}_saved")
        assert _load([writer(target, records)]) == expected


def test_the_same_prompt_is_one_problem_whatever_the_record_shape(tmp_path):
    same = [
        {"question": "What  is 6*7?", "response": "<answer>42</answer>", "final": "42"},
        {"conversations": [{"role": "user", "content": "What is 6*7?\n"}], "final": "42"},
        {
            "conversations": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "What is 6*7?"},
            ]
        },
    ]
    pair = _load([_jsonl(tmp_path / "a.jsonl", same[:1])], RL_ONLY)[0]
    bare, with_system = _load([_jsonl(tmp_path / "b.jsonl", same[1:])], Needs(completion=False, answer=False))
    assert pair.id == bare.id
    assert with_system.id != pair.id and with_system.messages[0] == {"role": "system", "content": "Be terse."}


def test_lists_of_strings_become_lines_and_other_answers_json_text(tmp_path):
    records = [{"question": "6*7?", "response": "<answer>42</answer>", "final": 42}]
    (sample,) = _load([_jsonl(tmp_path / "n.jsonl", records)], verifier="numeric")
    assert sample.answer == "42" and verify("dataset", "<answer>42.0</answer>", "42", sample.meta) == 1.0
    tests = ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]
    (sample,) = _load([_jsonl(tmp_path / "t.jsonl", [records[0] | {"final": tests}])])
    assert sample.answer == "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    (sample,) = _load([_jsonl(tmp_path / "d.jsonl", [records[0] | {"final": {"b": 1, "a": [2]}}])])
    assert sample.answer == '{"a": [2], "b": 1}'


@pytest.mark.parametrize(
    "verifier, completion, answer, reward",
    [
        ("exact", "<think>..</think> <answer> Paris </answer>", "Paris", 1.0),
        ("exact", "<answer>paris</answer>", "Paris", 0.0),
        ("exact", "Paris", "Paris", 0.0),
        ("numeric", "<answer>$1,234.0</answer>", "1234", 1.0),
        ("numeric", "<answer>1235</answer>", "1234", 0.0),
    ],
)
def test_the_verifier_named_in_meta_scores_the_completion(verifier, completion, answer, reward):
    assert verify("dataset", completion, answer, {"verifier": verifier}) == reward


def test_the_math_verifier_accepts_an_equivalent_answer_in_the_users_format():
    assert verify("dataset", "<answer>1/2</answer>", "0.5", {"verifier": "math"}) == 1.0
    assert verify("dataset", "So the answer is $\\boxed{\\frac{1}{2}}$.", "0.5", {"verifier": "math"}) == 1.0
    assert verify("dataset", "<answer>1/3</answer>", "0.5", {"verifier": "math"}) == 0.0


def test_the_code_verifier_runs_the_answer_columns_tests_on_the_completions_program(tmp_path):
    records = [
        {
            "question": "Write add(a, b).",
            "response": "```python\ndef add(a, b):\n    return a + b\n```",
            "final": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        }
    ]
    (sample,) = _load([_jsonl(tmp_path / "code.jsonl", records)], verifier="code")
    assert verify("dataset", sample.solution, sample.answer, sample.meta) == 1.0
    wrong = sample.solution.replace("a + b", "a - b")
    assert verify("dataset", wrong, sample.answer, sample.meta) == 0.0


def test_blocks_follow_a_seeded_order_and_end_when_the_files_run_out(tmp_path):
    records = [
        {"prompt": f"{i} plus one?", "completion": f"<answer>{i + 1}</answer>", "answer": i + 1}
        for i in range(20)
    ]
    cfg = TaskConfig(tasks=["dataset"], dataset=DatasetConfig(files=[_jsonl(tmp_path / "n.jsonl", records)]))
    seed0 = [s for index in range(3) for s in generate_block(cfg, "dataset", 0, index, 8)]
    assert len(seed0) == 20 and DatasetTask(cfg).block(0, 3, 8) == []
    assert sorted(int(s.answer) for s in seed0) == list(range(1, 21))
    assert seed0 == DatasetTask(cfg).block(0, 0, 20)
    assert [s.id for s in seed0] != [s.id for s in DatasetTask(cfg).block(1, 0, 20)]


def test_records_without_completions_serve_rl_and_eval_only(tmp_path):
    records = [{"conversations": [{"role": "user", "content": "6*7?"}], "final": "42"}]
    path = _jsonl(tmp_path / "prompts.jsonl", records)
    (sample,) = _load([path], RL_ONLY)
    assert sample.solution == "" and sample.answer == "42"
    with pytest.raises(
        ValueError, match=r"prompts\.jsonl row 0: no completion .*task\.pretrain_docs or task\.sft_pairs"
    ):
        _load([path])


@pytest.mark.parametrize(
    "record, message",
    [
        ({"query": "q"}, r"row 0: no column 'conversations' \(task.dataset.columns.messages\) or 'question'"),
        (
            {"question": 7, "response": "r", "final": "1"},
            r"row 0: column 'question' must be non-empty text; got 7",
        ),
        ({"question": "q", "response": "", "final": "1"}, r"row 0: column 'response' must be non-empty text"),
        (
            {"question": "q", "response": "r"},
            r"row 0: no answer in column 'final' \(task.dataset.columns.answer\)",
        ),
        ({"conversations": "hi", "final": "1"}, r"row 0: messages must be a non-empty list"),
        (
            {"conversations": [{"role": "tool", "content": "x"}], "final": "1"},
            r"row 0: message 0 has role 'tool'; expected an optional first 'system' turn",
        ),
        (
            {"conversations": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]},
            r"row 0: message 1 has role 'system'",
        ),
        (
            {"conversations": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
            r"row 0: messages must end in a user turn, or a user turn then the assistant's answer",
        ),
        (
            {"conversations": [{"role": "user", "content": None}], "final": "1"},
            r"row 0: message 0's content must be non-empty text; got None",
        ),
    ],
)
def test_bad_records_fail_naming_file_row_and_column(tmp_path, record, message):
    with pytest.raises(ValueError, match=r"bad\.jsonl " + message):
        _load([_jsonl(tmp_path / "bad.jsonl", [record])], RL_ONLY)


def test_a_numeric_verifier_rejects_answers_that_are_not_numbers(tmp_path):
    path = _jsonl(tmp_path / "words.jsonl", [PAIRS[1]])
    with pytest.raises(
        ValueError, match=r"words\.jsonl row 0: the numeric verifier needs a number .*got 'Paris'"
    ):
        _load([path], verifier="numeric")


def test_unreadable_sources_fail_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"data\.csv: unsupported file type '\.csv'"):
        _load([str(tmp_path / "data.csv")])
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: listed in task\.dataset\.files but not found"):
        _load([str(tmp_path / "nope.jsonl")])
    saved = _saved_dict(tmp_path / "saved", PAIRS)
    with pytest.raises(
        ValueError, match=r"saved: a saved DatasetDict without the split 'dev' .*\['test', 'train'\]"
    ):
        _load([saved], split="dev")


def test_a_hub_dataset_without_a_network_fails_saying_so(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = DatasetConfig(hub="someone/some-dataset")
    with pytest.raises(
        ConnectionError, match=r"task.dataset.hub='someone/some-dataset'.*only where there is a network"
    ):
        load_samples(cfg, EVERYTHING)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: TaskConfig(tasks=["dataset"]),
            r"needs exactly one source: task.dataset.files .* or task.dataset.hub",
        ),
        (
            lambda: TaskConfig(tasks=["dataset"], dataset=DatasetConfig(files=["a.jsonl"], hub="a/b")),
            r"needs exactly one source",
        ),
        (
            lambda: TaskConfig(
                tasks=["dataset"],
                dataset=DatasetConfig(files=["a.jsonl"], columns=DatasetColumns(answer=None)),
            ),
            r"task.dataset.columns.answer is null, but task.rl_prompts=2000 and task.eval_prompts=500",
        ),
        (
            lambda: DatasetConfig(verifier="regex"),
            r"task.dataset.verifier='regex' is not one of \['code', 'exact'",
        ),
    ],
)
def test_bad_dataset_settings_fail_naming_the_key(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_no_answer_column_is_allowed_when_no_rl_or_eval_prompts_are_asked_for(tmp_path):
    records = [{"prompt": "Tell a joke.", "completion": "A joke."}]
    dataset = DatasetConfig(
        files=[_jsonl(tmp_path / "j.jsonl", records)], columns=DatasetColumns(answer=None)
    )
    cfg = TaskConfig(tasks=["dataset"], dataset=dataset, rl_prompts=0, eval_prompts=0)
    assert [(s.solution, s.answer) for s in DatasetTask(cfg).block(0, 0, 4)] == [("A joke.", "")]
