"""The inference engine behind RL rollouts and the Serve app: batched, cached, optionally speculative.

One decode loop serves plain and speculative decoding: each step the proposer drafts k tokens (k=0
without one), the target scores the pending token(s) plus the drafts in one forward pass, and
`speculative.accept` keeps a prefix of the drafts and samples one more token. The first step's
pending input is the whole prompt, so prefill is just a long step. The KV cache, with per-row
holes where rows accepted different numbers of drafts, is `serving.cached_model.CachedModel`.

Batching is static: sequences are taken `max_batch_size` at a time, shortest prompts first, and
rows leave the batch as they finish. `generate` returns whole completions; `stream` yields each
step's new tokens and drops the rows of prompts the caller cancels (a client that went away).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from serving.cached_model import CachedModel, decode_experts
from serving.config import SpeculativeConfig
from serving.detokenize import StopChecker, cut_at_stop
from serving.metrics import EngineStats
from serving.ngram import NgramProposer
from serving.protocol import Completion, RequestMetrics, SamplingParams
from serving.sampling import SamplingTensors, draw_uniforms, process_logits, token_logprobs
from serving.speculative import (
    AcceptanceTracker,
    Draft,
    DraftModelProposer,
    Proposer,
    accept,
    choose_k,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """Map "auto" to cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _draft_proposer(engine: Engine, batch: int) -> Proposer:
    return DraftModelProposer(CachedModel(engine.draft_model, batch, engine.device))


def _ngram_proposer(engine: Engine, batch: int) -> Proposer:
    return NgramProposer(engine.speculative.ngram_min, engine.speculative.ngram_max)


PROPOSERS: dict[str, Callable[[Engine, int], Proposer]] = {"draft": _draft_proposer, "ngram": _ngram_proposer}


@dataclass
class _Sequence:
    """Host-side state of one completion in flight."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    params: SamplingParams
    max_new: int
    generator: torch.Generator
    stop_checker: StopChecker | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    first_token_s: float = 0.0
    latency_s: float = 0.0
    verify_steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    def extend(self, tokens: list[int], logprobs: list[float], eos_ids: frozenset[int]) -> bool:
        """Take one step's tokens in order until a finish condition; True when finished."""
        for tok, lp in zip(tokens, logprobs, strict=True):
            self.token_ids.append(tok)
            self.logprobs.append(lp)
            if tok in eos_ids and not self.params.ignore_eos:
                self.finish_reason = "stop"
            elif self.stop_checker is not None and self.stop_checker.add(tok):
                self.finish_reason = "stop"
            elif len(self.token_ids) >= self.max_new:
                self.finish_reason = "length"
            if self.finish_reason:
                return True
        return False


@dataclass
class SequenceUpdate:
    """What one sequence gained in one engine step (`Engine.stream`)."""

    prompt_index: int
    sample_index: int
    token_ids: list[int]  # generated this step (1 + accepted drafts, fewer when it finished mid-step)
    logprobs: list[float]  # of token_ids, as in Completion.logprobs (zeros when no row asked for them)
    completion: Completion | None = None  # set on the step the sequence finished


@dataclass
class _Step:
    """What one verify step produced for each row."""

    draft: Draft
    n_accepted: torch.Tensor  # (B,) drafts kept
    next_tokens: torch.Tensor  # (B,) the token sampled after them
    emitted: torch.Tensor  # (B, k_used+1): row b emits emitted[b, : n_accepted[b] + 1]
    logprobs: torch.Tensor | None  # (B, k_used+1) target log-probs of `emitted`


@dataclass
class _Batch:
    """Device-side state of one static batch; rows leave as their sequences finish."""

    seqs: list[_Sequence]
    target: CachedModel
    proposer: Proposer | None
    params: SamplingTensors
    pending: torch.Tensor  # (B, P) tokens the target has not seen yet (the prompt, then 1 per step)
    pending_valid: torch.Tensor  # (B, P) False = left padding
    k: int  # drafts per step (0 without a proposer)
    tracker: AcceptanceTracker
    want_logprobs: bool

    def advance(self, next_tokens: torch.Tensor, finished: list[bool]) -> None:
        """The sampled tokens are the next step's pending input; finished rows leave."""
        self.pending = next_tokens.unsqueeze(1)
        self.pending_valid = torch.ones_like(self.pending, dtype=torch.bool)
        self.drop(finished)

    def drop(self, leaving: list[bool]) -> None:
        """Remove rows from the batch, their cache slots and drafter state included."""
        if not any(leaving):
            return
        keep_list = [i for i, gone in enumerate(leaving) if not gone]
        self.seqs = [self.seqs[i] for i in keep_list]
        if not self.seqs:
            return
        keep = torch.tensor(keep_list, dtype=torch.long, device=self.pending.device)
        self.target.select(keep)
        if self.proposer is not None:
            self.proposer.select(keep)
        self.params = self.params.select(keep)
        self.pending, self.pending_valid = self.pending[keep], self.pending_valid[keep]


def _derive_seed(seed: int, sample_index: int) -> int:
    # str seeds go through SHA-512 in `random`, so (seed, i) pairs don't collide like seed + i would.
    return random.Random(f"{seed}:{sample_index}").getrandbits(63)


class Engine:
    """Generates completions for a batch of prompts with one HF causal LM (MoE or dense).

    Not thread-safe across concurrent generate() calls on a GPU; a Serve replica calls it from one
    thread at a time.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer=None,
        *,
        draft_model: PreTrainedModel | None = None,
        speculative: SpeculativeConfig | None = None,
        max_batch_size: int = 64,
        seed: int | None = None,  # draws the seeds of requests that bring none
    ):
        self.model = model.eval()
        for m in (model, draft_model):
            # MoE checkpoints keep output_router_logits=True for training; at inference the
            # load-balancing loss is wasted work and breaks on cached (shorter) attention masks.
            if m is not None and getattr(m.config, "output_router_logits", False):
                m.config.output_router_logits = False
        self.tokenizer = tokenizer  # None: prompts must be token ids and text comes back empty
        self.device = next(model.parameters()).device
        self.draft_model = draft_model.eval() if draft_model is not None else None
        self.speculative = speculative
        self.max_batch_size = max_batch_size
        self.stats = EngineStats()
        self._seeds = random.Random(seed)
        self.eos_ids = self._eos_ids()
        self._check_speculative()

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        *,
        draft_dir: str | Path | None = None,
        speculative: SpeculativeConfig | None = None,
        max_batch_size: int = 64,
        seed: int | None = None,
    ) -> Engine:
        """Load a local HF directory (and optionally a draft model's). dtype None: fp32 on CPU, bf16 on CUDA.

        The tokenizer is read from model_dir when it holds one; otherwise the engine works on ids.
        """
        device = resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
            dtype = DTYPES[dtype]
        model = _load_model(model_dir, device, dtype)
        draft = _load_model(draft_dir, device, dtype) if draft_dir is not None else None
        tokenizer = _load_tokenizer(model_dir)
        if draft_dir is not None:
            _check_draft_tokenizer(tokenizer, _load_tokenizer(draft_dir), model_dir, draft_dir)
        return cls(
            model,
            tokenizer,
            draft_model=draft,
            speculative=speculative,
            max_batch_size=max_batch_size,
            seed=seed,
        )

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Complete each prompt (text, or token ids) params.n times; returns prompt-major order.

        `params` is one SamplingParams for all prompts or one per prompt.
        """
        done: dict[tuple[int, int], Completion] = {}
        for updates in self.stream(prompts, params):
            done.update(((u.prompt_index, u.sample_index), u.completion) for u in updates if u.completion)
        return [done[key] for key in sorted(done)]

    @torch.inference_mode()
    def stream(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[list[SequenceUpdate]]:
        """generate() one step at a time: after each step, what each sequence still running gained.

        Before each decode step (after prefill) the rows of every prompt i with `cancelled(i)` leave
        the batch, with no completion and no entry in `stats`. Stats are recorded once the stream
        is exhausted.
        """
        start = time.perf_counter()
        seqs = self._sequences(prompts, params)
        by_length = sorted(seqs, key=lambda s: len(s.prompt_ids))
        finished: list[Completion] = []
        for i in range(0, len(by_length), self.max_batch_size):
            for updates in self._decode(by_length[i : i + self.max_batch_size], start, cancelled):
                finished.extend(u.completion for u in updates if u.completion)
                yield updates
        self.stats.record(finished, time.perf_counter() - start)

    def _decode(
        self, seqs: list[_Sequence], start: float, cancelled: Callable[[int], bool] | None
    ) -> Iterator[list[SequenceUpdate]]:
        """Run one static batch to completion, filling each _Sequence in place."""
        batch = self._start_batch(seqs)
        yield self._advance(batch, start)  # prefill: the whole prompt in one step
        with ExitStack() as stack:
            for model in (self.model, self.draft_model):
                if model is not None:
                    stack.enter_context(decode_experts(model))
            while batch.seqs:
                if cancelled is not None:
                    batch.drop([cancelled(s.prompt_index) for s in batch.seqs])
                    if not batch.seqs:
                        break
                yield self._advance(batch, start)

    def _advance(self, batch: _Batch, start: float) -> list[SequenceUpdate]:
        seqs = batch.seqs
        before = [len(s.token_ids) for s in seqs]
        step = self._step(batch)
        finished = self._record_step(seqs, step, time.perf_counter() - start)
        cfg = self.speculative
        if cfg is not None and cfg.adaptive and step.draft.tokens.shape[1]:
            alpha = batch.tracker.update(step.n_accepted, step.draft.valid.sum(dim=1))
            batch.k = choose_k(alpha, cfg.draft_cost, cfg.k_min, cfg.k_max)
        batch.advance(step.next_tokens, finished)
        return [
            SequenceUpdate(
                s.prompt_index,
                s.sample_index,
                s.token_ids[n:],
                s.logprobs[n:],
                self._completion(s) if f else None,
            )
            for s, n, f in zip(seqs, before, finished, strict=True)
        ]

    def _start_batch(self, seqs: list[_Sequence]) -> _Batch:
        pending, pending_valid = self._left_pad([s.prompt_ids for s in seqs])
        proposer = PROPOSERS[self.speculative.method](self, len(seqs)) if self.speculative else None
        if proposer is not None:
            proposer.start(pending, pending_valid)
        params = SamplingTensors.build(
            [s.params.temperature for s in seqs],
            [s.params.top_k for s in seqs],
            [s.params.top_p for s in seqs],
            self.device,
        )
        return _Batch(
            seqs=seqs,
            target=CachedModel(self.model, len(seqs), self.device),
            proposer=proposer,
            params=params,
            pending=pending,
            pending_valid=pending_valid,
            k=self.speculative.k if self.speculative else 0,
            tracker=AcceptanceTracker(),
            want_logprobs=any(s.params.logprobs for s in seqs),
        )

    def _step(self, b: _Batch) -> _Step:
        """Draft k tokens, verify them with one target pass, keep a prefix plus one sampled token."""
        k = min(b.k, max(s.max_new - len(s.token_ids) for s in b.seqs) - 1)  # no drafts past max_tokens
        u = draw_uniforms([s.generator for s in b.seqs], 2 * k + 1, self.device)  # draft | accept | sample
        draft = b.proposer.propose(k, b.params, u[:, :k]) if k else Draft.empty(len(b.seqs), self.device)
        k_used = draft.tokens.shape[1]  # < k when no row's n-gram lookup filled the tail
        inputs = torch.cat([b.pending, draft.tokens], dim=1)
        valid = torch.cat([b.pending_valid, torch.ones_like(draft.tokens, dtype=torch.bool)], dim=1)
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
        return _Step(draft, n_accepted, next_tokens, emitted, logprobs)

    def _record_step(self, seqs: list[_Sequence], step: _Step, now: float) -> list[bool]:
        """Hand each row its accepted tokens; which rows finished. One device-to-host copy of ids."""
        counts = torch.stack([step.n_accepted, step.draft.valid.sum(dim=1)], dim=1)
        rows = torch.cat([counts, step.emitted], dim=1).tolist()  # (B, 2 + k_used + 1)
        logprobs = (
            step.logprobs.tolist() if step.logprobs is not None else [[0.0] * (len(r) - 2) for r in rows]
        )
        finished = []
        for s, (n, n_proposed, *toks), lps in zip(seqs, rows, logprobs, strict=True):
            if not s.token_ids:
                s.first_token_s = now
            s.verify_steps += 1
            s.draft_tokens += n_proposed
            s.accepted_tokens += n
            done = s.extend(toks[: n + 1], lps[: n + 1], self.eos_ids)
            if done:
                s.latency_s = now
            finished.append(done)
        return finished

    def _sequences(self, prompts, params) -> list[_Sequence]:
        if isinstance(prompts, str):
            raise TypeError("Engine.generate takes a list of prompts; wrap a single prompt in a list")
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(
                f"got {len(params)} SamplingParams for {len(prompts)} prompts; pass one, or one per prompt"
            )
        limit = getattr(self.model.config, "max_position_embeddings", None)
        seqs = []
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            ids = self._encode(prompt)
            room = p.max_tokens if limit is None else min(p.max_tokens, limit - len(ids))
            if room < 1:
                raise ValueError(f"prompt {i} has {len(ids)} tokens; the model's context is {limit} tokens")
            if p.stop and self.tokenizer is None:
                raise ValueError("SamplingParams.stop needs a tokenizer; this engine was built without one")
            seed = p.seed if p.seed is not None else self._seeds.getrandbits(63)
            for j in range(p.n):
                checker = StopChecker(self.tokenizer, p.stop) if p.stop else None
                gen = torch.Generator().manual_seed(_derive_seed(seed, j))
                seqs.append(_Sequence(i, j, ids, p, room, gen, checker))
        return seqs

    def _encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(
                    "text prompts need a tokenizer; this engine was built without one (pass token ids)"
                )
            # Text prompts here are chat-rendered (the pipeline's datasets, Best-of-N): the template
            # already holds any BOS, and training tokenised them without special tokens too.
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt: the model needs at least one token to condition on")
        return ids

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        tokens = torch.zeros(len(prompts), width, dtype=torch.long)
        valid = torch.zeros(len(prompts), width, dtype=torch.bool)
        for b, p in enumerate(prompts):
            tokens[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            valid[b, width - len(p) :] = True
        return tokens.to(self.device), valid.to(self.device)

    def _completion(self, s: _Sequence) -> Completion:
        text = ""
        if self.tokenizer is not None:
            text = self.tokenizer.decode(s.token_ids, skip_special_tokens=True)
            text = cut_at_stop(text, s.params.stop) if s.finish_reason == "stop" and s.params.stop else text
        metrics = RequestMetrics(
            latency_s=s.latency_s,
            first_token_s=s.first_token_s,
            prompt_tokens=len(s.prompt_ids),
            generated_tokens=len(s.token_ids),
            verify_steps=s.verify_steps,
            draft_tokens=s.draft_tokens,
            accepted_tokens=s.accepted_tokens,
        )
        return Completion(
            prompt_index=s.prompt_index,
            sample_index=s.sample_index,
            prompt_token_ids=list(s.prompt_ids),
            token_ids=s.token_ids,
            text=text,
            logprobs=s.logprobs if s.params.logprobs else None,
            finish_reason=s.finish_reason,
            metrics=metrics,
        )

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.tokenizer, getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(source, "eos_token_id", None)
            ids.update(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        return frozenset(int(i) for i in ids)

    def _check_speculative(self) -> None:
        cfg = self.speculative
        if cfg is None:
            return
        if cfg.method not in PROPOSERS:
            raise ValueError(f"SpeculativeConfig.method={cfg.method!r} is not one of {sorted(PROPOSERS)}")
        layer_types = getattr(self.model.config, "layer_types", None) or []
        if "sliding_attention" in layer_types:
            raise ValueError(
                "speculative decoding needs full-attention layers: masked rollback slots would "
                "shrink a sliding window"
            )
        if cfg.method == "draft":
            if self.draft_model is None:
                raise ValueError(
                    "SpeculativeConfig.method='draft' needs a draft model (draft_model= / draft_dir=)"
                )
            v_target, v_draft = self.model.config.vocab_size, self.draft_model.config.vocab_size
            if v_target != v_draft:
                raise ValueError(
                    f"draft vocab_size={v_draft} differs from the target's {v_target}; "
                    "speculative decoding needs one shared vocabulary"
                )


def _load_tokenizer(model_dir: str | Path):
    """The directory's tokenizer, or None when it ships none (the engine then works on ids)."""
    has_tokenizer = any((Path(model_dir) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return AutoTokenizer.from_pretrained(model_dir) if has_tokenizer else None


def _check_draft_tokenizer(target, draft, target_dir, draft_dir) -> None:
    """A draft proposes token ids the target verifies: both must mean the same strings by them.
    (Equal vocabulary sizes are checked for directories without tokenizers.)"""
    if target is not None and draft is not None and target.get_vocab() != draft.get_vocab():
        raise ValueError(
            f"the draft at {draft_dir} and the target at {target_dir} use different tokenizers: the "
            f"target's vocabulary has {len(target)} tokens (eos {target.eos_token!r}), the draft's "
            f"{len(draft)} (eos {draft.eos_token!r}); speculative decoding needs one shared vocabulary"
        )


def _load_model(model_dir: str | Path, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a Hugging Face model directory (no config.json); "
            "give a local directory written by save_pretrained"
        )
    # No device_map: that needs `accelerate`, which the project does not depend on.
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
