"""The `reasoning_gym` task: seeded blocks from a generator, scored by the generator's own scorer."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.tasks import generate_block, verify
from rl.tasks.config import ReasoningGymConfig, TaskConfig
from rl.tasks.reasoning_gym import _scorer, score

GENERATORS = {
    "chain_sum": {"min_terms": 2, "max_terms": 3, "max_digits": 2},
    "leg_counting": {"max_animals": 4},
}


def _cfg(name: str, config: dict | None = None, seed: int = 0) -> TaskConfig:
    return TaskConfig(
        tasks=["reasoning_gym"], seed=seed, reasoning_gym=ReasoningGymConfig(name, config or {})
    )


def _block(name: str, seed: int = 0, index: int = 0, size: int = 16):
    cfg = _cfg(name, GENERATORS.get(name), seed)
    return generate_block(cfg, "reasoning_gym", cfg.seed, index, size)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_the_reference_answer_scores_one_and_a_wrong_one_zero(name):
    samples = _block(name)
    assert len(samples) == 16
    _scorer.cache_clear()  # score from the stored JSON alone, as a rollout worker does
    for sample in samples:
        meta = json.dumps(sample.meta)
        assert sample.solution == f"<think></think> <answer>{sample.answer}</answer>"
        assert verify("reasoning_gym", sample.solution, sample.answer, meta) == 1.0
        wrong = int(sample.answer) + 1
        assert (
            verify("reasoning_gym", f"<think>..</think> <answer>{wrong}</answer>", sample.answer, meta) == 0.0
        )
        assert verify("reasoning_gym", sample.answer, sample.answer, meta) == 0.0  # no answer tags


def test_a_hand_written_entry_scores_through_the_generators_scorer():
    entry = {
        "question": "State the final answer to the following arithmetic problem: 4 - 1 - 7 =",
        "answer": "-4",
    }
    meta = {"dataset": "chain_sum", "config": {}, "entry": entry | {"metadata": {}}}
    assert verify("reasoning_gym", "<answer> -4 </answer>", "-4", meta) == 1.0
    assert verify("reasoning_gym", "<answer>4</answer>", "-4", meta) == 0.0


def test_meta_is_json_and_names_the_generator_and_its_config():
    for sample in _block("leg_counting"):
        assert json.loads(json.dumps(sample.meta)) == sample.meta
        assert (
            sample.meta["dataset"] == "leg_counting" and sample.meta["config"] == GENERATORS["leg_counting"]
        )
        assert sample.meta["entry"]["answer"] == sample.answer and sample.task == "reasoning_gym"


def test_the_same_seed_and_block_give_the_same_problems():
    first = _block("chain_sum", seed=3, index=2)
    assert first == _block("chain_sum", seed=3, index=2)
    assert [s.id for s in first] != [s.id for s in _block("chain_sum", seed=3, index=1)]
    assert [s.id for s in first] != [s.id for s in _block("chain_sum", seed=4, index=2)]


_CHAIN_SUM_META = {
    "dataset": "chain_sum",
    "config": {},
    "entry": {"question": "1 + 2 =", "answer": "3", "metadata": {}},
}
_PRIME_META = generate_block(_cfg("prime_factorization"), "reasoning_gym", 0, 0, 1)[0].meta


def test_a_scorer_that_raises_on_model_text_scores_zero():
    (sample,) = generate_block(_cfg("prime_factorization"), "reasoning_gym", 0, 0, 1)
    assert verify("reasoning_gym", sample.solution, sample.answer, sample.meta) == 1.0
    # prime_factorization's scorer calls int() on every factor it is given.
    assert verify("reasoning_gym", "<answer>two times x</answer>", sample.answer, sample.meta) == 0.0


@pytest.mark.parametrize(
    "name, reason",
    [
        ("game_of_life", "whose reference answer is longer than the 200 characters"),
        ("boxnet", "without a reference answer"),
    ],
)
def test_a_generator_the_answer_format_cannot_score_fails_naming_why(name, reason):
    with pytest.raises(
        ValueError, match=rf"reasoning-gym dataset '{name}' .*no entry the answer format can score.*{reason}"
    ):
        generate_block(_cfg(name), "reasoning_gym", 0, 0, 4)


@pytest.mark.parametrize(
    "name, config, message",
    [
        (
            "chainsum",
            {},
            r"task.reasoning_gym.dataset='chainsum' is not a reasoning-gym dataset; did you mean \['chain_sum'.*"
            r"registered, e.g. \['ab', 'acre'",
        ),
        (
            "chain_sum",
            {"max_animals": 4},
            r"task.reasoning_gym.config=\{'max_animals': 4\} is not a valid config",
        ),
        ("chain_sum", {"min_terms": 5, "max_terms": 2}, r"not a valid config for 'chain_sum'"),
        ("chain_sum", {"seed": 1}, r"task.reasoning_gym.config sets \['seed'\]"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_key(name, config, message):
    with pytest.raises(ValueError, match=message):
        _cfg(name, config)


@given(text=st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_the_verifier_never_raises_on_arbitrary_text(text):
    for meta in (_CHAIN_SUM_META, _PRIME_META):
        assert (
            0.0 <= verify("reasoning_gym", f"<answer>{text}</answer>", meta["entry"]["answer"], meta) <= 1.0
        )
        assert 0.0 <= verify("reasoning_gym", text, meta["entry"]["answer"], meta) <= 1.0


def test_a_run_that_reads_the_last_number_scores_prose_replies_and_says_so_in_each_sample():
    """task.answer_format=last_number: the samples carry it to every verifier (a rollout worker
    sees only the stored meta), and a prose reply ending in the right number scores 1."""
    cfg = TaskConfig(
        tasks=["reasoning_gym"],
        answer_format="last_number",
        reasoning_gym=ReasoningGymConfig(
            "basic_arithmetic", {"min_terms": 2, "max_terms": 2, "max_digits": 1}
        ),
    )
    samples = generate_block(cfg, "reasoning_gym", 0, 0, 8)
    for sample in samples:
        meta = json.dumps(sample.meta)
        assert sample.meta["answer_format"] == "last_number"
        assert verify("reasoning_gym", f"So the result is {sample.answer}.", sample.answer, meta) == 1.0
        assert verify("reasoning_gym", f"It is {sample.answer}, or maybe 1000.", sample.answer, meta) == 0.0
        assert verify("reasoning_gym", "I cannot say.", sample.answer, meta) == 0.0
    tagged = generate_block(_cfg("basic_arithmetic", {"max_digits": 1}), "reasoning_gym", 0, 0, 4)
    assert all("answer_format" not in s.meta for s in tagged)
    assert verify("reasoning_gym", f"It is {tagged[0].answer}.", tagged[0].answer, tagged[0].meta) == 0.0
    with pytest.raises(ValueError, match="task.answer_format must be one of"):
        TaskConfig(answer_format="boxed")


def test_partial_credit_from_the_default_scorer_is_no_credit():
    """reasoning-gym's default scorer gives 0.5 to "10" for the answer 1 (it contains "1")."""
    entry = {"question": "Calculate 9 - 8.", "answer": "1", "metadata": {}}
    meta = {"dataset": "basic_arithmetic", "config": {}, "entry": entry}
    assert score("10", meta) == 0.5
    assert verify("reasoning_gym", "<answer>10</answer>", "1", meta) == 0.0
    assert verify("reasoning_gym", "<answer>1</answer>", "1", meta) == 1.0


def test_reading_the_last_number_is_refused_for_answers_that_are_not_numbers():
    with pytest.raises(ValueError, match=r"answers of \['countdown'\] are not numbers"):
        TaskConfig(tasks=["arithmetic", "countdown"], answer_format="last_number")
    TaskConfig(tasks=["arithmetic", "gsm8k"], gsm8k_files=["x.jsonl"], answer_format="last_number")
