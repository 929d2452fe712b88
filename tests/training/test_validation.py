"""Held-out rows for the in-loop `eval_loss`: kept out of training, split evenly over ranks, and
evaluated on the steps the loop reports."""

from __future__ import annotations

import torch

from training.config import TrainConfig
from training.data import TokenBatch
from training.loop import DatasetSource
from training.validation import HeldOut, checkpoint_due, eval_due


class RowIds:
    """A dataset whose row r is the single token r: batches show which rows they hold."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def collate(self, rows: list[int]) -> TokenBatch:
        ids = torch.tensor(rows).view(-1, 1)
        return TokenBatch(ids, torch.ones_like(ids), ids.clone())


def _rows(batches: list[TokenBatch]) -> list[int]:
    return [int(r) for b in batches for r in b.input_ids.flatten()]


def test_held_out_rows_are_never_trained_on():
    source = DatasetSource(RowIds(50), micro_bs=4, seed=0, held_out=10)
    trained = {
        r
        for step in range(40)  # 40 steps x 16 rows: several epochs over the 40 training rows
        for rank in range(2)
        for r in _rows(source.step_batches(step, rank, world=2, accum=2)[0])
    }
    assert trained == set(range(40))


def test_each_rank_evaluates_an_equal_disjoint_share_of_the_held_out_rows():
    source = DatasetSource(RowIds(50), micro_bs=2, seed=0, held_out=11)  # 11 // 2 workers = 5 rows each
    assert isinstance(source, HeldOut)
    shares = [source.held_out_batches(rank, world=2) for rank in range(2)]
    assert [[b.input_ids.shape[0] for b in s] for s in shares] == [[2, 2, 1], [2, 2, 1]]
    assert _rows(shares[0]) == [39, 40, 41, 42, 43] and _rows(shares[1]) == [44, 45, 46, 47, 48]


def test_no_held_out_rows_means_no_eval_batches():
    assert DatasetSource(RowIds(50), micro_bs=4, seed=0).held_out_batches(0, world=1) == []


def test_eval_runs_every_eval_every_steps_and_at_each_checkpoint_so_every_report_has_it():
    tcfg = TrainConfig(max_steps=10, eval_every=4, checkpoint_every=3)
    assert [s for s in range(1, 11) if eval_due(tcfg, s)] == [3, 4, 6, 8, 9, 10]
    assert [s for s in range(1, 11) if checkpoint_due(tcfg, s)] == [3, 6, 9, 10]
    assert not any(eval_due(TrainConfig(max_steps=10, eval_every=0), s) for s in range(1, 11))
