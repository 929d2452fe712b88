"""The inference engine behind RL rollouts, evaluation and the Serve app: continuously batched, cached,
optionally speculative.

One decode loop serves plain and speculative decoding: each step the proposer drafts k tokens (k=0
without one), the target scores the pending token plus the drafts in one forward pass, and
`speculative.accept` keeps a prefix of the drafts and samples one more token. Batching is
continuous (serving.scheduler): sequences join the running batch at any step, their prompts
prefilled once per distinct prompt, and leave the step they finish. The KV cache, with per-row
holes where rows accepted different numbers of drafts or joined later, is
`serving.cached_model.CachedModel`.

`generate` returns whole completions; `stream` yields each step's new tokens and drops the rows of
prompts the caller cancels (a client that went away); `scheduler()` hands out the loop itself, for
a caller that keeps adding requests (the Serve deployment).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from serving.batch import SequenceState, SequenceUpdate
from serving.cached_model import CachedModel, ExpertsMode
from serving.config import SpeculativeConfig
from serving.detokenize import StopChecker, cut_at_stop
from serving.metrics import EngineStats
from serving.ngram import NgramProposer
from serving.optimize import QUANTIZE, compiled_decode, quantize_int8
from serving.protocol import Completion, RequestMetrics, SamplingParams
from serving.scheduler import Scheduler
from serving.speculative import DraftModelProposer, MeasuredK, Proposer

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
        quantize: str | None = None,  # "int8": int8 linear layers on CPU (serving.optimize)
        compile: bool = False,  # torch.compile the decode step (pays after a ~minute cold start)
    ):
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize={quantize!r} is not one of {QUANTIZE}")
        for m in (model, draft_model):
            # MoE checkpoints keep output_router_logits=True for training; at inference the
            # load-balancing loss is wasted work and breaks on cached (shorter) attention masks.
            # (Before quantising: the int8 copy takes its config from here.)
            if m is not None and getattr(m.config, "output_router_logits", False):
                m.config.output_router_logits = False
        self.quantize, self.compile = quantize, compile
        self.float_model = model.eval()  # the weights as loaded; `model` may be their int8 copy
        self.model = quantize_int8(model) if quantize else self.float_model
        self.tokenizer = tokenizer  # None: prompts must be token ids and text comes back empty
        self.device = next(model.parameters()).device
        if draft_model is not None:
            draft_model = quantize_int8(draft_model.eval()) if quantize else draft_model.eval()
        self.draft_model = draft_model
        self.speculative = speculative
        self.max_batch_size = max_batch_size
        self.stats = EngineStats()
        self._seeds = random.Random(seed)
        self.eos_ids = self._eos_ids()
        self._check_speculative()
        self.experts = ExpertsMode([m for m in (self.model, self.draft_model) if m is not None])
        self.decode_forward = compiled_decode(self.model) if compile else self.model
        # k_policy="auto" keeps its measurements across generate() calls and Serve steps. Its arms
        # stop at 4 drafts (and the configured k): every probe of a losing arm costs its full step,
        # and on a CPU k=8 never paid (each draft pass there costs ~1/3 of a target step).
        cfg = self.speculative
        self.measured_k = None
        if cfg is not None and cfg.k_policy == "auto":
            self.measured_k = MeasuredK([k for k in (1, 2, 4, cfg.k) if cfg.k_min <= k <= cfg.k_max], cfg.k)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Install new weights (Hugging Face names, as `float_model.state_dict()`); re-quantised when int8."""
        self.float_model.load_state_dict(state, strict=True)
        if self.quantize:
            self.model = quantize_int8(self.float_model)
            self.experts = ExpertsMode([m for m in (self.model, self.draft_model) if m is not None])
            self.decode_forward = compiled_decode(self.model) if self.compile else self.model

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
        quantize: str | None = None,
        compile: bool = False,
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
            quantize=quantize,
            compile=compile,
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
        scheduler = self.scheduler()
        # Shortest prompts first: those admitted together are prefilled together, with less padding.
        scheduler.add(sorted(self.sequences(prompts, params), key=lambda s: len(s.prompt_ids)))
        finished: list[Completion] = []
        while scheduler.busy:
            if cancelled is not None and scheduler.batch is not None:
                scheduler.cancel(cancelled)
                if not scheduler.busy:
                    break
            updates = scheduler.step()
            finished.extend(u.completion for u in updates if u.completion)
            yield updates
        self.stats.record(finished, time.perf_counter() - start)

    def scheduler(self) -> Scheduler:
        """A continuous-batching loop over this engine: `add` sequences (`sequences`), `step`."""
        return Scheduler(self)

    def proposer(self, batch: int) -> Proposer | None:
        """A fresh drafter for `batch` rows, or None without speculative decoding."""
        return PROPOSERS[self.speculative.method](self, batch) if self.speculative else None

    def sequences(self, prompts, params, first_index: int = 0) -> list[SequenceState]:
        """Each prompt's params.n sequences, ready for `Scheduler.add`; prompt i gets first_index + i."""
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
                seqs.append(SequenceState(first_index + i, j, ids, p, room, gen, checker))
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

    def _completion(self, s: SequenceState) -> Completion:
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

    def _check_layers(self) -> None:
        for role, m in (("model", self.model), ("draft model", self.draft_model)):
            layer_types = getattr(m.config, "layer_types", None) or [] if m is not None else []
            if "sliding_attention" in layer_types:
                raise ValueError(
                    f"the {role} has sliding-window attention layers; the engine's KV cache keeps every "
                    "slot of a row (holes from speculation and continuous batching would shrink a window)"
                )

    def _check_speculative(self) -> None:
        self._check_layers()
        cfg = self.speculative
        if cfg is None:
            return
        if cfg.method not in PROPOSERS:
            raise ValueError(f"SpeculativeConfig.method={cfg.method!r} is not one of {sorted(PROPOSERS)}")
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
