"""Continuous (iteration-level) batching: the engine's decode loop, fed from a queue.

Every `step()` first admits waiting sequences into the free rows of the running batch, then runs
one decode step over all rows. Admission prefills the new prompts as a batch of their own, each
distinct prompt once (prefix sharing: the n samples of a GRPO group or a Best-of-N request copy
its KV, `CachedModel.select` with repeats), samples their first tokens, and merges them into the
running batch (`Batch.merge`); rows that finish leave at once. So a long request never holds the
batch: a short one admitted after it starts at the next step and leaves when it is done.

Why not transformers' own continuous batching (`generate_batch` / `ContinuousBatchingManager`,
paged attention): it samples with one GenerationConfig for the whole manager, so rows cannot mix
greedy and sampled requests or carry their own seeds, stops and max_tokens; it has no speculative
decoding, no shared-prefix prefill and no per-row cancellation — all of which the endpoint and the
rollouts need. Its paged cache is the better memory layout at scale; here the cache is one slot
tensor per layer with masked holes (serving.cached_model), which the speculative rollback also uses.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from serving.batch import Batch, SequenceState, SequenceUpdate, Step
from serving.cached_model import CachedModel
from serving.sampling import SamplingTensors, draw_uniforms, process_logits, sample, token_logprobs
from serving.speculative import AcceptanceTracker, Draft, accept, choose_k

if TYPE_CHECKING:
    from serving.engine import Engine


class Scheduler:
    """One engine's waiting queue and running batch. Not thread-safe: one thread drives it."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.waiting: deque[SequenceState] = deque()
        self.batch: Batch | None = None
        cfg = engine.speculative
        self.measured = engine.measured_k  # shared by the engine's schedulers: it outlives a generate()
        self.k = self.measured.k if self.measured is not None else cfg.k if cfg is not None else 0
        self.tracker = AcceptanceTracker()

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or self.batch is not None

    @property
    def running(self) -> int:
        return len(self.batch.seqs) if self.batch is not None else 0

    def add(self, seqs: list[SequenceState]) -> None:
        """Queue sequences; the n samples of one prompt share its prompt_index (and its prefill)."""
        now = time.perf_counter()
        for s in seqs:
            s.arrived_s = now
        self.waiting.extend(seqs)

    def cancel(self, cancelled: Callable[[int], bool]) -> int:
        """Drop every waiting or running sequence whose prompt_index is cancelled; how many."""
        before = len(self.waiting) + self.running
        self.waiting = deque(s for s in self.waiting if not cancelled(s.prompt_index))
        if self.batch is not None:
            self.batch.drop([cancelled(s.prompt_index) for s in self.batch.seqs])
            if not self.batch.seqs:
                self.batch = None
        return before - len(self.waiting) - self.running

    @torch.inference_mode()
    def step(self) -> list[SequenceUpdate]:
        """Admit what fits, then one decode step; what each sequence that moved gained."""
        touched: dict[int, tuple[SequenceState, int]] = {}
        self._admit(touched)
        if self.batch is not None:
            self._decode(touched)
        updates = []
        for s, n in touched.values():
            done = s.finish_reason is not None
            updates.append(
                SequenceUpdate(
                    s.prompt_index,
                    s.sample_index,
                    s.token_ids[n:],
                    s.logprobs[n:],
                    self.engine._completion(s) if done else None,
                )
            )
        return updates

    def _admit(self, touched: dict) -> None:
        room = self.engine.max_batch_size - self.running
        if room <= 0 or not self.waiting:
            return
        seqs = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
        for s in seqs:
            touched[id(s)] = (s, len(s.token_ids))
        engine, device = self.engine, self.engine.device
        slot: dict[int, int] = {}  # prompt_index -> its row in the prefill batch
        prompts = []
        for s in seqs:
            if s.prompt_index not in slot:
                slot[s.prompt_index] = len(prompts)
                prompts.append(s.prompt_ids)
        rows = torch.tensor([slot[s.prompt_index] for s in seqs], dtype=torch.long, device=device)
        tokens, valid = engine._left_pad(prompts)
        engine.experts.prefill()
        target = CachedModel(engine.model, len(prompts), device, engine.decode_forward)
        logits = target.forward(tokens, valid, logits_to_keep=1)[:, -1][rows]  # (B, V)
        target.select(rows)  # each prompt's KV, copied to its samples' rows
        proposer = engine.proposer(len(prompts))
        if proposer is not None:
            proposer.start(tokens, valid)
            proposer.select(rows)
        params = SamplingTensors.build(
            [s.params.temperature for s in seqs],
            [s.params.top_k for s in seqs],
            [s.params.top_p for s in seqs],
            device,
        )
        u = draw_uniforms([s.generator for s in seqs], 1, device)
        next_tokens = sample(process_logits(logits, params), u[:, 0])
        logprobs = None
        if any(s.params.logprobs for s in seqs):
            logprobs = token_logprobs(logits, next_tokens, params.temperature).unsqueeze(1)
        none = torch.zeros_like(next_tokens)
        if proposer is not None:
            proposer.commit(none, next_tokens)
        step = Step(Draft.empty(len(seqs), device), none, next_tokens, next_tokens.unsqueeze(1), logprobs)
        finished = self._record(seqs, step)
        admitted = Batch(seqs, target, proposer, params, next_tokens.unsqueeze(1))
        admitted.drop(finished)
        if not admitted.seqs:
            return
        if self.batch is None:
            self.batch = admitted
        else:
            self.batch.merge(admitted)

    def _decode(self, touched: dict) -> None:
        b = self.batch
        for s in b.seqs:
            touched.setdefault(id(s), (s, len(s.token_ids)))
        self.engine.experts.decode()
        seqs = b.seqs
        before = sum(len(s.token_ids) for s in seqs)
        cfg = self.engine.speculative
        # A seeded sampled row gets the same completion every time only if its draws do not depend
        # on timing: while one is in the batch, k stays at the configured value (greedy rows are
        # exact at any k; unseeded rows only promise the distribution).
        seeded = self.measured is not None and any(
            s.params.seed is not None and s.params.temperature > 0 for s in seqs
        )
        started = time.perf_counter()
        step = self._verify(b, cfg.k if seeded else self.k)
        finished = self._record(seqs, step)
        if self.measured is not None and not seeded:
            # Per row: a batch's tokens/s grows with its rows, and arms are measured at different times.
            emitted = (sum(len(s.token_ids) for s in seqs) - before) / len(seqs)
            self.k = self.measured.observe(emitted, time.perf_counter() - started)
        elif cfg is not None and cfg.k_policy == "adaptive" and step.draft.tokens.shape[1]:
            alpha = self.tracker.update(step.n_accepted, step.draft.valid.sum(dim=1))
            self.k = choose_k(alpha, cfg.draft_cost, cfg.k_min, cfg.k_max)
        b.advance(step.next_tokens, finished)
        if not b.seqs:
            self.batch = None

    def _verify(self, b: Batch, k: int) -> Step:
        """Draft k tokens, verify them with one target pass, keep a prefix plus one sampled token."""
        device = self.engine.device
        k = min(k, max(s.max_new - len(s.token_ids) for s in b.seqs) - 1)  # no drafts past max_tokens
        u = draw_uniforms([s.generator for s in b.seqs], 2 * k + 1, device)  # draft | accept | sample
        draft = b.proposer.propose(k, b.params, u[:, :k]) if k > 0 else Draft.empty(len(b.seqs), device)
        k_used = draft.tokens.shape[1]  # < k when no row's n-gram lookup filled the tail
        inputs = torch.cat([b.pending, draft.tokens], dim=1)
        valid = torch.ones_like(inputs, dtype=torch.bool)
        logits = b.target.forward(inputs, valid, logits_to_keep=k_used + 1).flatten(0, 1)  # (B*(k_used+1), V)
        p = process_logits(logits, b.params.repeat_interleave(k_used + 1)).view(len(b.seqs), k_used + 1, -1)
        n_accepted, next_tokens = accept(p, draft, u[:, k : k + k_used], u[:, 2 * k])
        b.target.rollback(k_used - n_accepted)
        if b.proposer is not None:
            b.proposer.commit(n_accepted, next_tokens)
        emitted = torch.cat([draft.tokens, next_tokens.unsqueeze(1)], dim=1)
        emitted = emitted.scatter(1, n_accepted.unsqueeze(1), next_tokens.unsqueeze(1))  # (B, k_used+1)
        logprobs = None
        if b.want_logprobs:
            temperature = b.params.temperature.repeat_interleave(k_used + 1)
            logprobs = token_logprobs(logits, emitted.flatten(), temperature).view(emitted.shape)
        return Step(draft, n_accepted, next_tokens, emitted, logprobs)

    def _record(self, seqs: list[SequenceState], step: Step) -> list[bool]:
        """Hand each row its accepted tokens; which rows finished. One device-to-host copy of ids."""
        counts = torch.stack([step.n_accepted, step.draft.valid.sum(dim=1)], dim=1)
        rows = torch.cat([counts, step.emitted], dim=1).tolist()  # (B, 2 + k_used + 1)
        logprobs = (
            step.logprobs.tolist() if step.logprobs is not None else [[0.0] * (len(r) - 2) for r in rows]
        )
        now = time.perf_counter()
        eos = self.engine.eos_ids
        finished = []
        for s, (n, n_proposed, *toks), lps in zip(seqs, rows, logprobs, strict=True):
            if not s.token_ids:
                s.first_token_s = now - s.arrived_s
            s.verify_steps += 1
            s.draft_tokens += n_proposed
            s.accepted_tokens += n
            done = s.extend(toks[: n + 1], lps[: n + 1], eos)
            if done:
                s.latency_s = now - s.arrived_s
            finished.append(done)
        return finished
