"""GSM8K-style loading from local JSONL and parquet, and the numeric-with-tolerance verifier."""

from __future__ import annotations

import json
from fractions import Fraction

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rl.tasks import verify
from rl.tasks.config import TaskConfig
from rl.tasks.gsm8k import SHIPPED_DIR, Gsm8kTask, load_samples
from rl.tasks.numeric import parse_number

RECORDS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "A shop sells 1,000 pens a day for 1.2 weeks of 7 days. How many pens?",
        "answer": "1.2 weeks is 1.2*7 = <<1.2*7=8.4>>8.4 days.\nSo 8.4*1000 = <<8.4*1000=8400>>8400 pens.\n#### 8,400",
    },
    {"question": "Half of 5?", "answer": "5/2 = <<5/2=2.5>>2.5\n#### 2.5", "extra": "ignored"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


@pytest.mark.parametrize("writer, name", [(_write_jsonl, "train.jsonl"), (_write_parquet, "train.parquet")])
def test_records_become_samples_with_reasoning_in_think_and_final_in_answer(tmp_path, writer, name):
    samples = load_samples([writer(tmp_path / name, RECORDS)])
    assert [s.answer for s in samples] == ["72", "8400", "2.5"]
    assert samples[0].prompt == RECORDS[0]["question"]
    assert samples[0].solution == (
        "<think>Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.</think> <answer>72</answer>"
    )
    assert all(verify("gsm8k", s.solution, s.answer, s.meta) == 1.0 for s in samples)


def test_jsonl_and_parquet_give_the_same_samples(tmp_path):
    assert load_samples([_write_jsonl(tmp_path / "a.jsonl", RECORDS)]) == load_samples(
        [_write_parquet(tmp_path / "a.parquet", RECORDS)]
    )


def test_a_file_without_the_answer_column_fails_naming_file_and_column(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q?", "solution": "#### 1"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: missing column\(s\) \['answer'\]"):
        load_samples([path])


def test_an_answer_without_a_final_line_fails_naming_file_and_row(tmp_path):
    path = _write_parquet(tmp_path / "bad.parquet", [RECORDS[0], {"question": "q?", "answer": "just 3"}])
    with pytest.raises(ValueError, match=r"bad\.parquet row 1: `answer` must end in '#### <final answer>'"):
        load_samples([path])


def test_a_non_numeric_final_answer_fails(tmp_path):
    path = _write_jsonl(tmp_path / "words.jsonl", [{"question": "q?", "answer": "x\n#### seven"}])
    with pytest.raises(
        ValueError, match=r"words\.jsonl row 0: the final answer after '####' is not a number"
    ):
        load_samples([path])


def test_unsupported_or_missing_files_fail_with_their_path(tmp_path):
    with pytest.raises(ValueError, match=r"data\.csv: unsupported file type"):
        load_samples([str(tmp_path / "data.csv")])
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_samples([str(tmp_path / "nope.jsonl")])


def test_blocks_follow_a_seeded_order_and_end_when_the_files_run_out(tmp_path):
    records = [
        {"question": f"What is {i} plus one?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(20)
    ]
    cfg = TaskConfig(tasks=["gsm8k"], gsm8k_files=[_write_jsonl(tmp_path / "n.jsonl", records)])
    task = Gsm8kTask(cfg)
    seed0 = task.block(0, 0, 8) + task.block(0, 1, 8) + task.block(0, 2, 8)
    assert len(seed0) == 20 and task.block(0, 3, 8) == []
    assert sorted(s.answer for s in seed0) == sorted(str(i + 1) for i in range(20))
    assert seed0 == task.block(0, 0, 20)
    assert [s.id for s in seed0] != [s.id for s in task.block(1, 0, 20)]


def test_the_shipped_release_loads_with_its_record_counts_and_answers():
    train = load_samples([str(SHIPPED_DIR / "train.jsonl")])
    test = load_samples([str(SHIPPED_DIR / "test.jsonl")])
    assert (len(train), len(test)) == (7473, 1319)
    assert (train[0].prompt, train[0].answer) == (RECORDS[0]["question"], "72")  # Natalia's clips
    assert verify("gsm8k", train[0].solution, train[0].answer, train[0].meta) == 1.0
    assert test[0].prompt.startswith("Janet’s ducks lay 16 eggs per day.") and test[0].answer == "18"
    assert (SHIPPED_DIR / "LICENSE").read_text().startswith("MIT License")


def test_task_gsm8k_reads_the_shipped_train_file_from_any_directory(tmp_path, monkeypatch):
    from orchestration.cli import compose

    monkeypatch.chdir(tmp_path)
    files = compose(["task=gsm8k"]).task.gsm8k_files
    assert files == [str(SHIPPED_DIR / "train.jsonl")] and (SHIPPED_DIR / "train.jsonl").is_file()


numbers = st.fractions(min_value=-(10**6), max_value=10**6, max_denominator=1).map(int) | st.decimals(
    min_value=-(10**6), max_value=10**6, places=2, allow_nan=False, allow_infinity=False
).map(str)


@given(number=numbers)
def test_numeric_verifier_accepts_the_reference_in_any_common_spelling(number):
    reference = str(number)
    value = Fraction(reference)
    spellings = [reference, f"{float(value):.4f}"]
    if value.denominator == 1 and value >= 0:
        spellings += [f"{int(value):,}", f"${int(value):,}", f"{int(value)}."]
    for spelling in spellings:
        assert verify("gsm8k", f"<think>x</think> <answer>{spelling}</answer>", reference, {}) == 1.0, (
            spelling
        )


@given(number=numbers, delta=st.sampled_from(["1", "-1", "0.01", "1000", "-0.5"]))
def test_numeric_verifier_rejects_a_perturbed_answer(number, delta):
    reference = str(number)
    wrong = Fraction(reference) + Fraction(delta)
    text = str(wrong.numerator) if wrong.denominator == 1 else f"{float(wrong):.2f}"
    assert verify("gsm8k", f"<answer>{text}</answer>", reference, {}) == 0.0


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "seventy-two",
        "72 clips",
        "7 2",
        "1e2",
        "inf",
        "nan",
        "10**10**10",
        "9" * 5000,
        "1,23",
        "--72",
        "72/1",
    ],
)
def test_malformed_numeric_answers_score_zero(answer):
    assert verify("gsm8k", f"<answer>{answer}</answer>", "72", {}) == 0.0


@given(st.text(max_size=200))
def test_numeric_verifier_never_raises_on_arbitrary_text(text):
    assert verify("gsm8k", f"<answer>{text}</answer>", "72", {}) in (0.0, 1.0)
    assert verify("gsm8k", text, "72", {}) in (0.0, 1.0)


def test_parse_number_reads_thousands_separators_and_currency():
    assert parse_number("$1,234.50") == Fraction(2469, 2)
    assert parse_number("-0.25") == Fraction(-1, 4)
    assert parse_number("1,23") is None
