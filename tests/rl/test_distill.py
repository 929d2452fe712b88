"""Distillation: token alignment, the teacher workers' scores and the sampler on real Ray, with
tiny models. The stage itself (student, baseline, draft figures) runs in the pipeline test
(tests/orchestration/test_pipeline_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from rl.config import DistillConfig
from rl.distill.recipe import collate, kd_loss
from rl.distill.sampler import start_distill_manager
from rl.rollout.teacher import completion_logprobs, completion_topk
from rl.rollout.worker import Trajectory
from training.config import ModelConfig, TrainConfig
from training.models import build_model, load_model
from training.tokenizer import load_tokenizer


def _save(model_cfg: ModelConfig, data_dir: Path, out: Path) -> Path:
    tok = load_tokenizer(data_dir / "tokenizer")
    build_model(model_cfg, tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def teacher_dir(data_dir, tmp_path_factory) -> Path:
    """A tiny MoE teacher saved the way the rlvr stage exports (weights + tokenizer)."""
    return _save(ModelConfig(), data_dir, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def student_dir(data_dir, tmp_path_factory) -> Path:
    return _save(
        ModelConfig(arch="qwen3", hidden_size=32, head_dim=8), data_dir, tmp_path_factory.mktemp("student")
    )


def _trajectory(prompt: list[int], completion: list[int]) -> Trajectory:
    return Trajectory(0, prompt, completion, [0.0] * len(completion), 0.0, False)


def test_right_padded_teacher_scores_equal_scoring_each_sequence_alone(teacher_dir):
    model = load_model(teacher_dir)
    seqs = [([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10]), ([11, 12], [13])]
    batched = completion_logprobs(model, seqs)
    for (p, c), lp in zip(seqs, batched, strict=True):
        assert lp.shape == (len(c), model.config.vocab_size)
        torch.testing.assert_close(lp, completion_logprobs(model, [(p, c)])[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(len(c)), atol=1e-5, rtol=0)


def test_teacher_top_k_is_the_largest_log_probs_at_the_temperature_with_their_ids(teacher_dir):
    model = load_model(teacher_dir)
    seqs = [([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10])]
    full = completion_logprobs(model, seqs)
    for (values, ids), lp in zip(completion_topk(model, seqs, 8, 2.0), full, strict=True):
        assert values.shape == ids.shape == (lp.shape[0], 8) and ids.dtype == torch.int32
        softened = torch.log_softmax(lp / 2.0, -1)  # log-probs soften like logits
        torch.testing.assert_close(values, softened.topk(8, -1).values, atol=1e-5, rtol=0)
        torch.testing.assert_close(softened.gather(-1, ids.long()), values, atol=1e-5, rtol=0)
        assert (ids[:, 0] == lp.argmax(-1)).all()
    # null (or k >= V) ships the whole vocabulary, most likely first.
    (values, ids), *_ = completion_topk(model, seqs, None, 1.0)
    assert ids.shape == full[0].shape and sorted(ids[0].tolist()) == list(range(model.config.vocab_size))


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("top_k", [5, None])
def test_a_student_scored_against_its_own_distribution_has_zero_loss(student_dir, loss, top_k):
    """If the teacher's rows sat one position off the student's logits, the loss would not vanish."""
    model = load_model(student_dir)
    cfg = DistillConfig(loss=loss, kd_top_k=top_k, temperature=2.0)
    trajs = [_trajectory([1, 2, 3], [4, 5]), _trajectory([6], [7, 8, 9, 10])]
    scores = completion_topk(model, [(t.prompt_ids, t.completion_ids) for t in trajs], top_k, cfg.temperature)
    for t, (values, ids) in zip(trajs, scores, strict=True):
        t.teacher_logprobs, t.teacher_ids = values, ids
    batch = collate(trajs, pad_id=0, token_scale=1.0)
    k = top_k or model.config.vocab_size
    assert batch.mask.sum() == 6 and batch.teacher_logprobs.shape == batch.teacher_ids.shape == (2, 4, k)
    value, metrics, _ = kd_loss(model, batch, cfg=cfg)
    assert abs(value.item()) < 1e-5
    assert metrics["top1_agreement"] == 1.0
    # Another model's distribution gives a positive loss on the same batch.
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    assert kd_loss(model, batch, cfg=cfg)[0].item() > 1e-3


def test_seq_kd_batches_carry_no_teacher_distribution_and_train_on_sampled_tokens(student_dir):
    model = load_model(student_dir)
    batch = collate([_trajectory([1, 2], [3, 4, 5])], pad_id=0, token_scale=1.0)
    assert batch.teacher_logprobs is None and batch.teacher_ids is None
    value, metrics, _ = kd_loss(model, batch, cfg=DistillConfig(loss="seq_kd"))
    logp = torch.log_softmax(model(input_ids=batch.input_ids).logits[0, :-1], -1)
    expected = -(logp[1, 3] + logp[2, 4] + logp[3, 5])
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "top1_agreement" not in metrics


def test_manager_ships_the_teachers_top_k_and_samples_from_students_on_policy_steps(
    data_dir, teacher_dir, student_dir
):
    cfg = DistillConfig(
        prompts_per_step=3, samples_per_prompt=2, max_new_tokens=6, on_policy_fraction=0.5,
        num_teacher_workers=2, num_student_workers=1, kd_top_k=4, temperature=2.0, train=TrainConfig(seed=0),
    )  # fmt: skip
    manager = start_distill_manager(cfg, str(teacher_dir), str(student_dir), str(data_dir / "sft"))
    teacher = load_model(teacher_dir)
    weights = [ray.put(load_model(student_dir).state_dict())]
    try:
        for step, on_policy in ((0, 0.0), (1, 1.0)):  # seed 0 draws a teacher step, then a student one
            ray.get(manager.push_weights.remote(weights, step, 0))
            trajs, metrics = ray.get(manager.step_batch.remote(step, 0, 1))
            assert metrics["on_policy"] == on_policy and len(trajs) == 6
            seqs = [(t.prompt_ids, t.completion_ids) for t in trajs]
            expected = completion_topk(teacher, seqs, 4, 2.0)
            for t, (values, ids) in zip(trajs, expected, strict=True):
                torch.testing.assert_close(t.teacher_logprobs, values, atol=1e-5, rtol=0)
                assert t.teacher_ids.tolist() == ids.tolist()
            # 4 fp32 log-probs and 4 int32 ids a completion token.
            assert metrics["teacher_logprob_bytes"] == 32 * sum(len(t.completion_ids) for t in trajs)
    finally:
        ray.get(manager.shutdown.remote())
        ray.kill(manager)


def test_seq_kd_refuses_on_policy_steps():
    with pytest.raises(ValueError, match="on_policy_fraction"):
        DistillConfig(loss="seq_kd", on_policy_fraction=0.5)


def test_a_local_ray_too_small_for_learner_and_workers_fails_at_once_naming_the_knobs(ray_session):
    from orchestration.cli import compose
    from orchestration.stages.distill import check_local_cpus

    # The test session's Ray has 4 CPUs: 2 learner CPUs + 4 workers x 0.5 + the manager's 0.01 do not fit.
    cfg = compose(
        ["distill.on_policy_fraction=0.5", "distill.num_student_workers=2", "distill.worker_cpus=0.5"]
    )
    with pytest.raises(ValueError, match="cluster.num_cpus"):
        check_local_cpus(cfg)
    check_local_cpus(compose(["distill.on_policy_fraction=0.5"]))  # the default: 2 + 3 x 0.5 + 0.01
