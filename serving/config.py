"""The `serve` config group: the endpoint's model, decoding, batching, scaling and request limits.

One typed dataclass feeds all three ways the app starts: the pipeline's `serve` stage (Hydra),
`serve run serving.app:build_app key=value ...` and a Serve config YAML's `args:` (both through
`serving.app.build_app`, which checks the keys against these fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

K_POLICIES = ("fixed", "adaptive", "auto")


@dataclass
class SpeculativeConfig:
    """The engine's speculative decoding setup (the maths is serving/speculative.py's)."""

    method: str = "draft"  # proposer, by name in serving.engine.PROPOSERS: "draft" (a small model) or "ngram"
    k: int = 4  # tokens proposed per step (the starting value when k_policy is not "fixed")
    # How k changes while decoding: "fixed"; "adaptive" re-picks it each step from the running
    # acceptance rate and `draft_cost` (choose_k, a model); "auto" measures each k's tokens per
    # second online, k=0 (target only) included, and runs the best (MeasuredK): never much slower
    # than target-only, whatever the hardware makes of the draft.
    k_policy: str = "fixed"
    k_min: int = 1  # bounds for k_policy adaptive / auto
    k_max: int = 8
    # Cost of one drafter forward relative to one target verify pass, for "adaptive"'s speedup model;
    # ~0 for n-gram lookup, ~(draft params / target params) for a draft model on a GPU.
    draft_cost: float = 0.1
    ngram_max: int = 3  # prompt lookup tries suffixes of ngram_max tokens, then shorter, down to ngram_min
    ngram_min: int = 1

    def __post_init__(self) -> None:
        if self.k_policy not in K_POLICIES:
            raise ValueError(f"SpeculativeConfig.k_policy={self.k_policy!r} is not one of {K_POLICIES}")
        if not 1 <= self.k_min <= self.k <= self.k_max:
            raise ValueError(
                f"SpeculativeConfig: need 1 <= k_min <= k <= k_max, got {self.k_min}, {self.k}, {self.k_max}"
            )
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(
                f"SpeculativeConfig: need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}"
            )


# speculative= values: "auto" drafts with the draft model when one is given, else by n-gram lookup.
SPECULATIVE_MODES = ("auto", "draft", "ngram", "off")


@dataclass
class AutoscalingSettings:
    """Ray Serve autoscaling of the replica count (`serve.config.AutoscalingConfig` fields)."""

    min_replicas: int = 1
    max_replicas: int = 1  # > min_replicas turns autoscaling on
    # Requests in flight per replica that autoscaling aims for; above it, replicas are added.
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 10.0  # load must stay high this long before a replica is added
    downscale_delay_s: float = 60.0  # and low this long before one is removed
    look_back_period_s: float = 10.0  # window the ongoing-request average is taken over
    metrics_interval_s: float = 2.0  # how often replicas report their load

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                f"serve.autoscaling: need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got min_replicas={self.min_replicas}, max_replicas={self.max_replicas}"
            )

    def as_serve_config(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "initial_replicas": max(self.min_replicas, 1),
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
            "metrics_interval_s": self.metrics_interval_s,
        }


@dataclass
class RequestLimits:
    """What one request may ask for; beyond these it gets a 400 naming the field."""

    max_tokens: int = 1024  # largest max_tokens (also capped by the model's context length)
    default_max_tokens: int = 256  # when a request gives no max_tokens
    # Completions per prompt, and Best-of-N samples per prompt; either way a request's prompts x
    # samples must also fit one batch (max_batch_size).
    n: int = 8
    best_of: int = 16
    stop: int = 4  # stop strings
    body_bytes: int = 1 << 20  # request body size; larger bodies get a 413


@dataclass
class QuotaSettings:
    """Per API key and per replica (serving/auth.py); 0 means unlimited. Over it: 429 + Retry-After."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0  # generated tokens, charged when a request ends

    def __post_init__(self) -> None:
        if self.requests_per_minute < 0 or self.tokens_per_minute < 0:
            raise ValueError(
                f"serve.quota: need requests_per_minute >= 0 and tokens_per_minute >= 0, got "
                f"{self.requests_per_minute}, {self.tokens_per_minute}"
            )


@dataclass
class ServeConfig:
    # The `model` name clients send (GET /v1/models lists it).
    model_name: str = "reasonforge"
    # Also serve "<model_name>-best-of-<N>": every request answered by Best-of-N with N samples; 0: off.
    best_of_alias_n: int = 0
    # Best-of-N scorer: a name in serving.best_of_n.SCORERS ("majority_vote", "mean_logprob") or
    # "package.module:function" taking (completions, extract_answer) -> one score per completion.
    best_of_scorer: str = "majority_vote"
    # "package.module:function" mapping a completion's text to its final answer (None: no answer);
    # majority voting compares these. null compares whole completions (stripped). The pipeline's
    # conf/serve/default.yaml names its tasks' extractor; serving itself knows no task format.
    answer_extractor: str | None = None
    # Speculative decoding: "auto" (draft model when given, else n-gram), "draft", "ngram" or "off".
    speculative: str = "auto"
    num_speculative_tokens: int = 4  # drafts per step (the start value unless k_policy is "fixed")
    # "auto": measure tokens/s of each draft length online, 0 (no speculation) included, and run the
    # best, so speculation is used only where it pays; "fixed"; "adaptive" (acceptance-rate model).
    k_policy: str = "auto"
    device: str = "auto"  # "auto": cuda when the replica has a GPU, else cpu
    dtype: str | None = None  # float32 | bfloat16 | float16; null: fp32 on CPU, bf16 on CUDA
    # CPU only: "int8" runs the linear layers in int8 (serving.optimize; 1.4x faster decode on
    # SmolLM2, its accuracy cost in benchmarks/results/int8_accuracy.json); null keeps `dtype`.
    quantize: str | None = None
    seed: int | None = 0  # seeds the replica's draws for requests that bring no seed
    # Sequences (prompts x samples) decoded together; requests join the running batch at any step
    # while it has room (continuous batching), and wait in the replica's engine queue otherwise.
    max_batch_size: int = 16
    # Requests a replica holds at once (those decoding plus those waiting in its engine queue).
    max_ongoing_requests: int = 32
    # Requests waiting for a replica beyond that; more get 503 at once instead of piling up.
    max_queued_requests: int = 64
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    # API keys: clients send `Authorization: Bearer <key>`; /health stays open. Keys come from a
    # file (one per line, `#` comments) and/or an environment variable of comma-separated keys,
    # both read where the app is built (a k8s Secret mounts as either). Never put keys in the
    # config itself: configs are copied into manifests, .hydra/, wandb and serve_config.yaml.
    api_key_file: str | None = None
    api_key_env: str | None = "REASONFORGE_API_KEYS"
    # A non-loopback `host` with no key refuses to start unless this is true (then it warns).
    allow_unauthenticated: bool = False
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    # Where Serve's HTTP proxy listens. The stage starts the proxy there; for `serve run`/YAML it
    # must match their http_options.host, since it decides whether keys are required.
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "reasonforge"
    route_prefix: str = "/"
    # Stage only: leave the endpoint up after the eval (a local Ray keeps it until Ctrl-C).
    keep_alive: bool = False
    # Stage only: eval requests in flight at once.
    eval_concurrency: int = 8

    def __post_init__(self) -> None:
        if self.speculative not in SPECULATIVE_MODES:
            raise ValueError(f"serve.speculative={self.speculative!r} is not one of {SPECULATIVE_MODES}")
        lim = self.limits
        checks = {
            "limits.default_max_tokens <= limits.max_tokens": 1 <= lim.default_max_tokens <= lim.max_tokens,
            "limits.n >= 1": lim.n >= 1,
            "max_batch_size >= 1": self.max_batch_size >= 1,
            "best_of_alias_n <= limits.best_of": 0 <= self.best_of_alias_n <= lim.best_of,
            "max_ongoing_requests >= 1": self.max_ongoing_requests >= 1,
            "max_queued_requests >= 0": self.max_queued_requests >= 0,
            "num_speculative_tokens >= 1": self.num_speculative_tokens >= 1,
            f"k_policy in {K_POLICIES}": self.k_policy in K_POLICIES,
            "quantize in (null, 'int8')": self.quantize in (None, "int8"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"serve config: need {'; '.join(bad)}; got max_batch_size={self.max_batch_size}, "
                f"best_of_alias_n={self.best_of_alias_n}, k_policy={self.k_policy!r}, quantize={self.quantize!r}, limits={lim}"
            )

    def speculative_config(self, has_draft: bool) -> SpeculativeConfig | None:
        """The engine's speculative setup; None decodes with the target alone."""
        method = {"auto": "draft" if has_draft else "ngram"}.get(self.speculative, self.speculative)
        if method == "off":
            return None
        if method == "draft" and not has_draft:
            raise ValueError("serve.speculative='draft' needs a draft model: pass draft_dir")
        k = self.num_speculative_tokens
        return SpeculativeConfig(method=method, k=k, k_policy=self.k_policy, k_max=max(k, 8))
