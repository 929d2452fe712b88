"""Decode throughput on a real model: the engine's settings against transformers' generate and llama.cpp.

    .venv/bin/python benchmarks/bench_decode.py --target models/smollm2-135m-instruct \
        --draft outputs/smollm2_arithmetic/distill/model --gguf <SmolLM2 Q4_1 .gguf> \
        --out benchmarks/results/decode_smollm2.json

Prompts: the first GSM8K test questions, each one user turn through the target's chat template.
Greedy. Two workloads, each a fixed list of output limits (EOS ends a completion early, as a user
sees it; tokens are counted as generated tokens up to and including EOS or the limit, on every
side, never padding):
- batch 1: --single-prompts questions one at a time, each with --single-tokens;
- concurrent: --concurrent questions submitted together, limits cycling through --lengths.
  `generate` takes them as one static batch run to the longest limit (what a server without
  continuous batching does); its tokens past a request's own limit are not counted.
Contenders run interleaved (A B C, A B C, ...), after one warm-up each; the figure is the median of
--repeats rounds. The benchmark waits (up to --wait-idle-s) for the 1-minute load average to fall
below --max-load before it starts, and records it before and after every round; the after value
includes this process's own threads, the before value is the machine's idle state.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, Qwen3Config, Qwen3MoeConfig

from orchestration.atomic import atomic_write_json
from rl.tasks.gsm8k import SHIPPED_DIR, load_samples
from serving.config import SpeculativeConfig
from serving.engine import Engine
from serving.protocol import SamplingParams
from training.chat import conversation, prompt_text


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--target",
        default="models/smollm2-135m-instruct",
        help="local Hugging Face directory with a chat template (default: `make smollm2`'s)",
    )
    ap.add_argument("--draft", help="local dir of the speculative draft (the distilled student)")
    ap.add_argument("--gguf", help="the same model as GGUF, for the llama.cpp anchor (llama-cpp-py-sync)")
    ap.add_argument("--gguf-precision", default="Q4_1")
    ap.add_argument("--questions", default=str(SHIPPED_DIR / "test.jsonl"))
    ap.add_argument(
        "--prompts-from",
        help="a data-stage split dir (e.g. outputs/demo/data/eval) instead of GSM8K: for models whose "
        "context or tokenizer cannot take GSM8K questions (the demo's 512-position MoE)",
    )
    ap.add_argument("--single-prompts", type=int, default=4)
    ap.add_argument("--single-tokens", type=int, default=64)
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument(
        "--lengths", default="16,32,64,128", help="output limits the concurrent requests cycle through"
    )
    ap.add_argument("--k", type=int, default=2, help="draft length for fixed-k speculation")
    ap.add_argument(
        "--compile", action="store_true", help="also run compiled decode steps (cold compile timed)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait-idle-s", type=float, default=600)
    ap.add_argument("--out", default="benchmarks/results/decode_smollm2.json")
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


def wait_for_idle(max_load: float, wait_s: float) -> float:
    deadline = time.monotonic() + wait_s
    while (load := os.getloadavg()[0]) >= max_load and time.monotonic() < deadline:
        time.sleep(10)
    return load


def useful(tokens: list[int], limit: int, eos: set[int]) -> list[int]:
    """Generated tokens as a user gets them: up to and including the first EOS, at most `limit`."""
    out = []
    for t in tokens[:limit]:
        out.append(t)
        if t in eos:
            break
    return out


class Contender:
    """One way of answering a workload: run() -> each request's useful tokens."""

    def __init__(self, name: str, run: Callable[[], list[list[int]]], precision: str):
        self.name, self.run, self.precision = name, run, precision
        self.times: list[float] = []
        self.tokens: list[list[int]] = []


def hf_generate(model, tok, prompts: list[list[int]], limits: list[int], eos: set[int]) -> list[list[int]]:
    """One static batch (left-padded) run to the longest limit; each request's own tokens kept."""
    width = max(map(len, prompts))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=max(limits), do_sample=False, pad_token_id=pad
    )
    return [useful(row, n, eos) for row, n in zip(out[:, width:].tolist(), limits, strict=True)]


def engine_run(
    engine: Engine, prompts: list[list[int]], limits: list[int], ignore_eos: bool = False
) -> list[list[int]]:
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=ignore_eos) for n in limits]
    return [c.token_ids for c in engine.generate(prompts, params)]


def llama_run(llm, texts: list[str], limits: list[int], tok) -> list[list[int]]:
    out = []
    for text, n in zip(texts, limits, strict=True):
        reply = llm.generate(text, max_tokens=n, temperature=0.0, top_k=1, repeat_penalty=1.0)
        out.append(tok.encode(reply, add_special_tokens=False)[:n])  # counted with the HF tokenizer
    return out


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of this process) so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def run_workload(name: str, contenders: list[Contender], repeats: int) -> dict:
    """Each contender's warm-up, then `repeats` interleaved rounds. Per timed run it records the
    1-minute load average before it (this process's own threads included: ~2 while it runs) and
    the CPU cores other processes used during it (the machine's busy time minus this process's):
    the figure that says whether the machine was idle."""
    loads = []
    for c in contenders:
        c.tokens = c.run()  # warm-up (and, for compiled contenders, what is left of compiling)
    for _ in range(repeats):
        for c in contenders:
            before = os.getloadavg()[0]
            busy0, mine0 = cpu_seconds()
            start = time.perf_counter()
            c.tokens = c.run()
            wall = time.perf_counter() - start
            busy1, mine1 = cpu_seconds()
            c.times.append(wall)
            loads.append((c.name, before, max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / wall)))
    rows = []
    for c in contenders:
        wall = statistics.median(c.times)
        n = sum(map(len, c.tokens))
        rows.append(
            {
                "contender": c.name,
                "precision": c.precision,
                "tokens": n,
                "wall_s": wall,
                "tokens_per_s": n / wall,
            }
        )
        print(f"  [{name}] {c.name:28s} {c.precision:6s} {n:5d} tok  {n / wall:7.1f} tok/s", flush=True)
    return {"rows": rows, "load_average_1m_before_and_other_cpu_cores": loads}


def main() -> None:
    args = parse_args()
    if not Path(args.target, "config.json").is_file():
        raise SystemExit(
            f"--target {args.target!r} is not a model directory; `make smollm2` writes the default"
        )
    torch.set_num_threads(args.threads)
    started_load = wait_for_idle(args.max_load, args.wait_idle_s)
    tok = AutoTokenizer.from_pretrained(args.target)
    n_prompts = max(args.single_prompts, args.concurrent)
    if args.prompts_from:  # a run's own held-out prompts, already chat-rendered
        from datasets import load_from_disk

        texts = list(load_from_disk(args.prompts_from)["prompt"][:n_prompts])
    else:
        questions = [s.prompt for s in load_samples([args.questions])[:n_prompts]]
        texts = [prompt_text(tok, conversation(q)) for q in questions]
    prompts = [tok.encode(t, add_special_tokens=False) for t in texts]
    lengths = [int(x) for x in args.lengths.split(",")]

    engines: dict[str, Engine] = {
        "fp32": Engine.from_pretrained(args.target, "cpu", max_batch_size=args.concurrent),
    }
    engines["int8"] = Engine(
        engines["fp32"].float_model, tok, quantize="int8", max_batch_size=args.concurrent
    )
    eos = set(engines["fp32"].eos_ids)
    model = engines["fp32"].float_model
    draft = None
    if args.draft:
        draft = Engine.from_pretrained(args.draft, "cpu").float_model
        for policy in ("fixed", "auto"):
            spec = SpeculativeConfig(method="draft", k=args.k, k_policy=policy, k_max=4)
            engines[f"fp32+draft_{policy}"] = Engine(
                model, tok, draft_model=draft, speculative=spec, max_batch_size=args.concurrent
            )
        spec = SpeculativeConfig(method="draft", k=args.k, k_policy="auto", k_max=4)
        engines["int8+draft_auto"] = Engine(
            model, tok, draft_model=draft, speculative=spec, quantize="int8", max_batch_size=args.concurrent
        )
    compile_s: dict[str, float] = {}
    if args.compile:
        for base in ("fp32", "int8"):
            e = Engine(model, tok, quantize="int8" if base == "int8" else None, compile=True)
            start = time.perf_counter()
            e.generate([prompts[0]], SamplingParams(max_tokens=8, temperature=0.0))
            compile_s[f"{base}+compile"] = time.perf_counter() - start
            engines[f"{base}+compile"] = e
    for e in engines.values():
        e.max_batch_size = args.concurrent

    single_p = prompts[: args.single_prompts]
    single_limits = [args.single_tokens] * len(single_p)

    def one_at_a_time(fn):
        return lambda: [fn([p], [n])[0] for p, n in zip(single_p, single_limits, strict=True)]

    def precision(name: str) -> str:
        return "int8" if name.startswith("int8") else "fp32"

    single = [
        Contender("hf_generate", one_at_a_time(lambda p, n: hf_generate(model, tok, p, n, eos)), "fp32")
    ]
    single += [
        Contender(f"engine_{name}", one_at_a_time(lambda p, n, e=e: engine_run(e, p, n)), precision(name))
        for name, e in engines.items()
    ]
    if draft is not None:  # the draft decoding alone: its step cost against the target's
        draft_alone = Engine(draft, tok, max_batch_size=1)
        single.append(
            # EOS ignored: the draft's step cost over the target's whole token count
            Contender(
                "draft_model_alone",
                one_at_a_time(lambda p, n: engine_run(draft_alone, p, n, ignore_eos=True)),
                "fp32",
            )
        )
    llama_cpp = "not asked for (--gguf)"
    if args.gguf:
        try:
            import llama_cpp_py_sync

            llm = llama_cpp_py_sync.Llama(
                args.gguf, n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads
            )
        except Exception as err:  # e.g. the prebuilt libllama.so needs a newer glibc than the machine's
            llama_cpp = f"unavailable: {type(err).__name__}: {err}"
            print(f"llama.cpp anchor skipped: {llama_cpp}", flush=True)
    if args.gguf and not llama_cpp.startswith("unavailable"):
        llama_cpp = f"llama-cpp-py-sync, {args.gguf_precision}"
        single_texts = texts[: args.single_prompts]
        single.append(
            Contender(
                "llama_cpp", lambda: llama_run(llm, single_texts, single_limits, tok), args.gguf_precision
            )
        )
    print(
        f"batch 1: {len(single_p)} prompts x {args.single_tokens} tokens; load {started_load:.2f}", flush=True
    )
    single_result = run_workload("batch 1", single, args.repeats)

    conc_p = prompts[: args.concurrent]
    conc_limits = [lengths[i % len(lengths)] for i in range(len(conc_p))]
    concurrent = [
        Contender(
            "hf_generate_static_batch", lambda: hf_generate(model, tok, conc_p, conc_limits, eos), "fp32"
        )
    ]
    concurrent += [
        Contender(f"engine_{name}", lambda e=e: engine_run(e, conc_p, conc_limits), precision(name))
        for name, e in engines.items()
        if "compile" not in name  # a new batch size would recompile mid-run
    ]
    print(f"concurrent: {len(conc_p)} requests, limits {conc_limits}", flush=True)
    conc_result = run_workload("concurrent", concurrent, args.repeats)

    by_name = {c.name: c for c in single}
    hf_tokens = by_name["hf_generate"].tokens
    equal = {name: c.tokens == hf_tokens for name, c in by_name.items() if name.startswith("engine_")}
    spec_stats = {}
    for name, e in engines.items():
        if e.speculative is not None:
            spec_stats[name] = {
                "acceptance_rate": e.stats.acceptance_rate,
                "mean_accepted_length": e.stats.mean_accepted_length,
            }
    atomic_write_json(
        Path(args.out),
        {
            "command": "benchmarks/bench_decode.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)
            ),
            "target": args.target,
            "prompts": args.prompts_from
            or f"GSM8K test questions ({args.questions}) through the chat template",
            "draft": args.draft,
            "gguf": args.gguf,
            "target_params": sum(p.numel() for p in model.parameters()),
            "draft_params": sum(p.numel() for p in draft.parameters()) if draft is not None else None,
            "k": args.k,
            "threads": args.threads,
            "load_average_1m_at_start": started_load,
            "batch1": {"prompts": len(single_p), "max_tokens": args.single_tokens, **single_result},
            "concurrent": {"requests": len(conc_p), "max_tokens": conc_limits, **conc_result},
            "greedy_tokens_equal_to_generate_batch1": equal,
            "speculative": spec_stats,
            "cold_compile_s": compile_s,
            "llama_cpp": llama_cpp,
            "machine": {
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
