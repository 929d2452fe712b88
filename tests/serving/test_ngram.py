"""Prompt-lookup drafting on hand-made histories."""

from __future__ import annotations

import torch

from serving.ngram import NgramProposer, propose_ngram
from serving.sampling import SamplingTensors


def _h(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


def test_proposes_what_followed_the_earliest_match_of_the_suffix():
    # suffix [1, 2] occurs at 0 and 4; the earliest has the longest continuation
    assert propose_ngram(_h(1, 2, 3, 4, 1, 2, 7, 1, 2), k=3, ngram_min=1, ngram_max=2).tolist() == [3, 4, 1]


def test_longer_suffixes_are_tried_first():
    # [5, 2] matches at 3 (-> 8); [2] alone would match earlier at 1 (-> 9)
    assert propose_ngram(_h(0, 2, 9, 5, 2, 8, 5, 2), k=1, ngram_min=1, ngram_max=2).tolist() == [8]


def test_falls_back_to_shorter_suffixes():
    assert propose_ngram(_h(6, 2, 9, 7, 3, 2), k=2, ngram_min=1, ngram_max=3).tolist() == [9, 7]


def test_no_match_proposes_nothing():
    assert propose_ngram(_h(1, 2, 3, 4), k=3, ngram_min=1, ngram_max=2).numel() == 0
    # [3, 1] was never seen before
    assert propose_ngram(_h(1, 2, 3, 1), k=3, ngram_min=2, ngram_max=2).numel() == 0
    assert propose_ngram(_h(5), k=3, ngram_min=1, ngram_max=2).numel() == 0


def test_continuation_stops_at_the_end_of_the_history():
    assert propose_ngram(_h(4, 4), k=5, ngram_min=1, ngram_max=3).tolist() == [4]


def test_proposer_tracks_each_rows_accepted_tokens_and_drops_finished_rows():
    tokens = torch.tensor([[0, 1, 2, 1], [3, 4, 3, 4]])
    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])  # row 0: prompt [1, 2, 1]
    proposer = NgramProposer(ngram_min=1, ngram_max=2)
    proposer.start(tokens, valid)
    params = SamplingTensors.build([0.0, 0.0], [0, 0], [1.0, 1.0])
    draft = proposer.propose(2, params, torch.zeros(2, 2))
    assert draft.tokens.tolist() == [[2, 1], [3, 4]] and draft.valid.all()
    proposer.commit(torch.tensor([1, 0]), torch.tensor([9, 7]))  # row 0 keeps [2] then 9; row 1 gets 7
    assert proposer.buf[0, :5].tolist() == [1, 2, 1, 2, 9] and proposer.buf[1, :5].tolist() == [3, 4, 3, 4, 7]
    draft = proposer.propose(2, params, torch.zeros(2, 2))
    assert draft.tokens.shape == (2, 0)  # 9 and 7 are new: nothing to look up, nothing to verify
    proposer.commit(torch.tensor([0, 0]), torch.tensor([1, 3]))
    proposer.select(torch.tensor([1]))
    draft = proposer.propose(3, params.select(torch.tensor([1])), torch.zeros(1, 3))
    assert draft.tokens.tolist() == [[4, 3, 4]]


def test_history_buffer_grows_past_its_first_capacity():
    proposer = NgramProposer(ngram_min=1, ngram_max=1)
    proposer.start(torch.tensor([[1]]), torch.tensor([[True]]))
    params = SamplingTensors.build([0.0], [0], [1.0])
    for step in range(200):
        proposer.propose(1, params, torch.zeros(1, 1))
        proposer.commit(torch.tensor([0]), torch.tensor([step % 5]))
    assert int(proposer.lengths[0]) == 201
    assert proposer.buf[0, 196:201].tolist() == [0, 1, 2, 3, 4]


def test_draft_is_as_wide_as_the_longest_lookup():
    tokens = torch.tensor([[1, 2, 1], [3, 4, 5]])  # row 0 finds [2, 1]; row 1 finds nothing
    proposer = NgramProposer(ngram_min=1, ngram_max=2)
    proposer.start(tokens, torch.ones_like(tokens, dtype=torch.bool))
    draft = proposer.propose(4, SamplingTensors.build([0.0, 0.0], [0, 0], [1.0, 1.0]), torch.zeros(2, 4))
    assert draft.tokens.tolist() == [[2, 1], [0, 0]] and draft.valid.tolist() == [
        [True, True],
        [False, False],
    ]
