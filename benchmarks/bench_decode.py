"""Decode throughput: serving.Engine vs transformers' generate, and speculative vs target-only.

    .venv/bin/python benchmarks/bench_decode.py                       # random-init tiny models
    .venv/bin/python benchmarks/bench_decode.py --target DIR --draft DIR --device cuda

Greedy, fixed lengths (EOS ignored), the same prompts for every contender; one warm-up run, then
the median of --repeats timed runs. Without --target the models are random-init and built here:
their acceptance rates and speedups say how the machinery performs, not what a trained pair gets.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen3Config, Qwen3MoeConfig

from orchestration.atomic import atomic_write_json
from serving.config import SpeculativeConfig
from serving.engine import Engine, resolve_device
from serving.metrics import summarize
from serving.protocol import SamplingParams


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="local HF dir of the target model (default: random-init Qwen3-MoE)")
    ap.add_argument("--draft", help="local HF dir of the draft model (default: random-init dense Qwen3)")
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on CUDA)"
    )
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument(
        "--prompts-from",
        default=None,
        help="a data-stage dataset dir (e.g. eval/): real prompts of one token length instead of random ids",
    )
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--ks", default="2,4,6", help="draft lengths to try for speculative decoding")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    return ap.parse_args()


def random_pair(vocab: int = 2048) -> tuple[PreTrainedModel, PreTrainedModel]:
    """A tiny Qwen3-MoE target and a dense draft sharing its embedding and lm_head.

    Sharing (with the draft's layers damped) makes the draft agree with the random target often
    enough for speculation to be measurable; a random draft of its own would accept ~nothing.
    """
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32
    )
    target = AutoModelForCausalLM.from_config(
        Qwen3MoeConfig(
            **common,
            num_hidden_layers=4,
            intermediate_size=256,
            moe_intermediate_size=128,
            num_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=1024,
        ),
        dtype=torch.float32,
    )
    draft = AutoModelForCausalLM.from_config(
        Qwen3Config(**common, num_hidden_layers=1, intermediate_size=256, max_position_embeddings=1024),
        dtype=torch.float32,
    )
    with torch.no_grad():
        target.lm_head.weight.mul_(20.0)  # clear argmaxes instead of near-ties
        draft.model.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
        draft.lm_head.weight.copy_(target.lm_head.weight)
        # Damped residual writes: the models stay context-dependent but close to their shared
        # bigram backbone, for a greedy acceptance near 0.5 (trained pairs often see 0.5-0.8).
        for model, scale in ((target, 0.1), (draft, 0.05)):
            for name, p in model.named_parameters():
                if "o_proj" in name or "down_proj" in name:
                    p.mul_(scale)
    return target.eval(), draft.eval()


def load_pair(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedModel, str]:
    device = resolve_device(args.device)
    if args.target is None:
        target, draft = random_pair()
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.dtype or "", torch.float32)
        return target.to(device, dtype), draft.to(device, dtype), "random-init (built by the benchmark)"
    target = Engine.from_pretrained(args.target, device, args.dtype).model
    if args.draft is None:
        raise SystemExit("--target without --draft: give the draft model's local directory too")
    draft = Engine.from_pretrained(args.draft, device, args.dtype).model
    return target, draft, f"target={args.target} draft={args.draft}"


def timed(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, object]]:
    """Median wall seconds per contender after one warm-up each, and each one's last result.

    Rounds interleave the contenders (A B C, A B C, ...) so load from other processes on a shared
    machine falls on all of them alike instead of on whichever ran during a burst.
    """
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[name] = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in contenders}


def hf_generate(model: PreTrainedModel, prompts: torch.Tensor, max_tokens: int) -> list[list[int]]:
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,  # EOS suppressed, as the engine's ignore_eos
        do_sample=False,
        pad_token_id=0,
    )
    return out[:, prompts.shape[1] :].tolist()


def engine_vs_hf(target, prompts: torch.Tensor, args, batch: int) -> dict:
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True, logprobs=False)
    engine = Engine(target, max_batch_size=batch)
    ids = prompts[:batch]
    runs = timed(
        {
            "engine": lambda: engine.generate(ids.tolist(), params),
            "hf": lambda: hf_generate(target, ids, args.max_tokens),
        },
        args.repeats,
    )
    (engine_s, completions), (hf_s, hf_tokens) = runs["engine"], runs["hf"]
    tokens = batch * args.max_tokens
    return {
        "batch_size": batch,
        "generated_tokens": tokens,
        "engine_tokens_per_s": tokens / engine_s,
        "hf_generate_tokens_per_s": tokens / hf_s,
        "engine_over_hf": hf_s / engine_s,
        "greedy_outputs_identical": [c.token_ids for c in completions] == hf_tokens,
        "engine_latency_p50_s": summarize(completions, engine_s)["latency_p50_s"],
    }


def speculative_runs(target, draft, prompts: torch.Tensor, args) -> list[dict]:
    """Batch 1, one prompt at a time: draft model at each k (and adaptive), n-gram lookup at each k."""
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True, logprobs=False)
    ids = prompts[:4].tolist()
    ks = [int(k) for k in args.ks.split(",")]
    configs: dict[str, SpeculativeConfig | None] = {"target_only": None}
    configs |= {f"draft_k{k}": SpeculativeConfig(method="draft", k=k, k_max=max(ks)) for k in ks}
    configs["draft_adaptive"] = SpeculativeConfig(method="draft", k=ks[0], k_max=max(ks), adaptive=True)
    configs |= {f"ngram_k{k}": SpeculativeConfig(method="ngram", k=k, k_max=max(ks)) for k in ks}
    engines = {
        name: Engine(target, draft_model=draft, speculative=cfg, max_batch_size=1)
        for name, cfg in configs.items()
    }
    runs = timed({name: (lambda e=e: e.generate(ids, params)) for name, e in engines.items()}, args.repeats)
    baseline_s, baseline = runs["target_only"]
    rows = []
    for name, (wall_s, completions) in runs.items():
        s = summarize(completions, wall_s)
        rows.append(
            {
                "name": name,
                "k": configs[name].k if configs[name] else 0,
                "tokens_per_s": s["tokens_per_s"],
                "speedup_vs_target_only": baseline_s / wall_s,
                "acceptance_rate": s["acceptance_rate"],
                "mean_accepted_length": s["mean_accepted_length"],
                "latency_mean_s": s["latency_mean_s"],
                "matches_target_only_greedy": [c.token_ids for c in completions]
                == [c.token_ids for c in baseline],
            }
        )
        print(
            f"  {name:15s} {s['tokens_per_s']:8.1f} tok/s  x{baseline_s / wall_s:.2f}  acc={s['acceptance_rate']:.2f}"
        )
    return rows


def machine(device: torch.device) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
    }


def real_prompts(dataset_dir: str, tokenizer_dir: str, n: int) -> torch.Tensor:
    """`n` held-out prompts that tokenize to the same (most common) length, so every contender,
    `generate` included, gets an unpadded batch."""
    from collections import Counter

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok(list(load_from_disk(dataset_dir)["prompt"]), add_special_tokens=False)["input_ids"]
    length = Counter(len(x) for x in ids).most_common(1)[0][0]
    same = [x for x in ids if len(x) == length][:n]
    if len(same) < n:
        raise ValueError(f"{dataset_dir}: only {len(same)} prompts of length {length}; need {n}")
    return torch.tensor(same)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    target, draft, source = load_pair(args)
    device = next(target.parameters()).device
    batches = [int(b) for b in args.batch_sizes.split(",")]
    n_prompts = max(batches + [4])
    if args.prompts_from:
        prompts = real_prompts(args.prompts_from, args.target, n_prompts).to(device)
        args.prompt_len = prompts.shape[1]
    else:
        prompts = torch.randint(0, target.config.vocab_size, (n_prompts, args.prompt_len), device=device)
    print(f"models: {source}; device {device}")
    result = {
        "models": source,
        "random_init": args.target is None,
        "note": "random-init models: figures show the engine's overhead and machinery, not a trained pair's speedup"
        if args.target is None
        else "",
        "dtype": str(next(target.parameters()).dtype),
        "target_params": sum(p.numel() for p in target.parameters()),
        "draft_params": sum(p.numel() for p in draft.parameters()),
        "prompt_len": args.prompt_len,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "machine": machine(device),
        "engine_vs_hf_generate": [],
    }
    for batch in batches:
        row = engine_vs_hf(target, prompts, args, batch)
        print(
            f"  batch {batch:3d}: engine {row['engine_tokens_per_s']:8.1f} tok/s  hf {row['hf_generate_tokens_per_s']:8.1f}"
        )
        result["engine_vs_hf_generate"].append(row)
    result["speculative_batch1"] = speculative_runs(target, draft, prompts, args)
    result["wall_s"] = time.perf_counter() - started
    result["load_average_1m_at_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out} ({result['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
