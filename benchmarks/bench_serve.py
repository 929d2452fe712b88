"""Serving throughput and latency over real HTTP: the OpenAI endpoint on Ray Serve, on loopback.

    .venv/bin/python benchmarks/bench_serve.py                          # random-init pair, built here
    .venv/bin/python benchmarks/bench_serve.py --target DIR --draft DIR  # e.g. a run's rlvr/model, distill/model

One replica. For each setup (speculative decoding off / by the draft model / by n-gram lookup, int8
or not; batching on (continuous since 34dcb02, `@serve.batch` static batches before), or off =
max_batch_size 1) and each concurrency C, C clients in a closed loop (each sends its next request
when its last one returns) send --requests completions (greedy, EOS ignored; output limits cycling
through --lengths, default --max-tokens; prompts: random token ids of --prompt-len, or --gsm8k
questions through the target's chat template), after a warm-up. Reported: requests/s, generated
tokens/s, p50/p99 latency (client-side, whole response) and the draft acceptance rate.
Without --target the models are random-init (bench_decode.random_pair plus a tokenizer): their
acceptance says how the machinery performs, not what a trained pair gets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from bench_decode import random_pair
from ray import serve

import serving
from orchestration.atomic import atomic_write_json
from rl.tasks.format import FORMAT_TAGS
from serving.app import app_for
from serving.config import AutoscalingSettings, ServeConfig
from serving.load import post_all, summarize
from training.tokenizer import train_tokenizer

# name -> (serve.speculative, max_batch_size, serve.quantize); None = --batch-size. The draft
# setups use serve.k_policy's default ("auto" since continuous batching; "fixed" before).
SETUPS = {
    "batched": ("off", None, None),
    "batched+int8": ("off", None, "int8"),
    "batched+draft": ("draft", None, None),
    "batched+int8+draft": ("draft", None, "int8"),
    "batched+ngram": ("ngram", None, None),
    "unbatched": ("off", 1, None),
    "unbatched+draft": ("draft", 1, None),
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="local HF dir of the served model, with its tokenizer")
    ap.add_argument("--draft", help="local HF dir of the draft model")
    ap.add_argument("--out", default="benchmarks/results/serve.json")
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"a subset of {list(SETUPS)}")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=32, help="timed requests per setup and concurrency")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--lengths",
        default=None,
        help="comma-separated max_tokens the requests cycle through (default: --max-tokens)",
    )
    ap.add_argument(
        "--gsm8k",
        action="store_true",
        help="prompts: GSM8K test questions through the target's chat template",
    )
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16, help="max_batch_size of the batched setups")
    ap.add_argument("--k", type=int, default=4, help="draft tokens per step")
    ap.add_argument("--replica-cpus", type=float, default=1.0)
    ap.add_argument("--replica-gpus", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


def random_model_dirs(root: Path) -> tuple[str, str]:
    """bench_decode's random pair, saved with a tokenizer (the API decodes text with it)."""
    corpus = ["The quick brown fox jumps over the lazy dog.", "What is 3 + 4? <answer>7</answer>"] * 50
    tokenizer = train_tokenizer(corpus, vocab_size=512, out_dir=root / "target", added_tokens=FORMAT_TAGS)
    target, draft = random_pair(vocab=len(tokenizer))
    target.save_pretrained(root / "target")
    draft.save_pretrained(root / "draft")
    return str(root / "target"), str(root / "draft")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, args, vocab: int, concurrency: int, questions: list[list[int]] | None) -> dict:
    """Warm-up, then the timed requests; every setup gets the same prompts and lengths in order."""
    rng = random.Random(args.seed + concurrency)
    lengths = [int(x) for x in (args.lengths or str(args.max_tokens)).split(",")]
    count = iter(range(10**9))

    def payload() -> dict:
        i = next(count)
        if questions:
            prompt = questions[i % len(questions)]
        else:
            prompt = [rng.randrange(3, vocab) for _ in range(args.prompt_len)]  # past the special tokens
        return {
            "model": "reasonforge",
            "prompt": prompt,
            "max_tokens": lengths[i % len(lengths)],
            "temperature": 0,
            "ignore_eos": True,
        }

    asyncio.run(post_all(url, [payload() for _ in range(concurrency)], concurrency))  # warm-up
    start = time.perf_counter()
    replies = asyncio.run(post_all(url, [payload() for _ in range(args.requests)], concurrency))
    return summarize(replies, time.perf_counter() - start)


def gsm8k_prompts(model_dir: str, n: int = 64) -> list[list[int]]:
    from transformers import AutoTokenizer

    from rl.tasks.gsm8k import SHIPPED_DIR, load_samples
    from training.chat import conversation, prompt_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    questions = [s.prompt for s in load_samples([str(SHIPPED_DIR / "test.jsonl")])[:n]]
    return [tok.encode(prompt_text(tok, conversation(q)), add_special_tokens=False) for q in questions]


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.target is None:
            target, draft = random_model_dirs(Path(tmp))
            models = "random-init (bench_decode.random_pair, built by the benchmark)"
        else:
            target, draft = args.target, args.draft
            models = f"target={target} draft={draft}"
        vocab = model_vocab(target)
        questions = gsm8k_prompts(target) if args.gsm8k else None
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/v1/completions"
        runs = []
        try:
            for name in args.setups.split(","):
                speculative, batch, quantize = SETUPS[name]
                if speculative == "draft" and draft is None:
                    print(f"skipping {name}: no --draft")
                    continue
                extra = {"quantize": quantize} if quantize else {}  # older ServeConfigs lack the field
                cfg = ServeConfig(
                    **extra,
                    speculative=speculative,
                    num_speculative_tokens=args.k,
                    max_batch_size=batch or args.batch_size,
                    max_ongoing_requests=64,
                    max_queued_requests=256,
                    num_cpus_per_replica=args.replica_cpus,
                    num_gpus_per_replica=args.replica_gpus,
                    autoscaling=AutoscalingSettings(min_replicas=1, max_replicas=1),
                )
                serve.run(app_for(cfg, target, draft if speculative == "draft" else None), name="bench")
                for c in [int(x) for x in args.concurrency.split(",")]:
                    row = {
                        "setup": name,
                        "speculative": speculative,
                        "max_batch_size": cfg.max_batch_size,
                        "concurrency": c,
                        **measure(url, args, vocab, c, questions),
                    }
                    runs.append(row)
                    print(
                        f"{name:16s} C={c:<3d} {row['requests_per_s']:6.2f} req/s {row['tokens_per_s']:8.1f} tok/s "
                        f"p50={row['latency_p50_s']:.3f}s p99={row['latency_p99_s']:.3f}s "
                        f"acc={row['acceptance_rate']:.2f} errors={row['errors_other']:.0f}",
                        flush=True,
                    )
        finally:
            serve.shutdown()
            ray.shutdown()
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "ray": ray.__version__,
            # 1-minute load average before and after: on a shared machine, other work skews the figures
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "serving_code": subprocess.run(
            ["git", "-C", str(Path(serving.__file__).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "command": "benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        "models": models,
        "settings": {k: v for k, v in vars(args).items() if k not in ("target", "draft", "out")},
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")


def model_vocab(model_dir: str) -> int:
    """The model's vocabulary size, read from its config without loading weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).vocab_size


if __name__ == "__main__":
    main()
