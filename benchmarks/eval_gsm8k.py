"""A local model's greedy pass@1 on the GSM8K test set, through its own chat template.

    .venv/bin/python benchmarks/eval_gsm8k.py --model models/smollm2-135m-instruct

The first --limit problems of the test split shipped in rl/tasks/data/gsm8k/ (file order, which
is the release's), each asked as one user turn (the template's default system turn, if any,
included), answered greedily by the engine in batches. Two extractions score every reply: strict,
the last `<answer>...</answer>` pair this pipeline's models write (a model that was never taught the
tags scores ~0), and flexible, the last number in the reply (lm-evaluation-harness's
"flexible-extract"); both compare numerically with the reference after '####'. Binomial standard
errors beside both. Resumable: each finished batch is written to --out, and a rerun with the same
settings continues after the last one. Not part of `make bench` (about half an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer

from orchestration.atomic import atomic_write_json
from rl.evaluate import binomial_se, score_rows
from rl.tasks.format import ANSWER_FORMAT_KEY
from rl.tasks.gsm8k import SHIPPED_DIR, load_samples
from serving.engine import Engine
from training.chat import conversation, prompt_text


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local Hugging Face directory with a chat template")
    ap.add_argument("--file", default=str(SHIPPED_DIR / "test.jsonl"))
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--system", default=None, help="a system turn (default: the template's own)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/results/gsm8k_baseline.json")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = {k: getattr(args, k) for k in ("model", "file", "limit", "max_new_tokens", "system")}
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else None
    if done is None or done["settings"] != settings:
        done = {"settings": settings, "flexible": [], "strict": [], "response_tokens": [], "wall_s": 0.0}
    samples = load_samples([args.file])[: args.limit]
    if len(samples) < args.limit:
        raise SystemExit(f"{args.file} has {len(samples)} problems; --limit asks for {args.limit}")
    tok = AutoTokenizer.from_pretrained(args.model)
    engine = Engine.from_pretrained(args.model, max_batch_size=args.batch_size)
    done["load_average_start"] = os.getloadavg()
    for start in range(len(done["flexible"]), args.limit, args.batch_size):
        batch = samples[start : start + args.batch_size]
        rows = Dataset.from_dict(
            {
                "prompt": [prompt_text(tok, conversation(s.prompt, system=args.system)) for s in batch],
                "task": [s.task for s in batch],
                "answer": [s.answer for s in batch],
                "meta": [json.dumps(s.meta | {ANSWER_FORMAT_KEY: "last_number"}) for s in batch],
            }
        )
        started = time.perf_counter()
        scores = score_rows(engine, rows, args.max_new_tokens)
        done["wall_s"] += time.perf_counter() - started
        done["flexible"] += scores.scores
        done["strict"] += scores.strict_scores
        done["response_tokens"] += scores.response_tokens
        n = len(done["flexible"])
        for name in ("flexible", "strict"):
            p = sum(done[name]) / n
            done[f"pass@1_{name}"], done[f"pass@1_{name}_se"] = p, binomial_se(p, n)
        done |= {
            "problems": n,
            "tokens_per_s": sum(done["response_tokens"]) / done["wall_s"],
            "load_average_end": os.getloadavg(),
            "host": {"cpus": os.cpu_count(), "threads": args.threads, "machine": platform.machine()},
            "torch": torch.__version__,
        }
        atomic_write_json(out, done)
        print(
            f"{n}/{args.limit}: flexible {done['pass@1_flexible']:.3f} ± {done['pass@1_flexible_se']:.3f}, "
            f"strict {done['pass@1_strict']:.3f}; {done['tokens_per_s']:.0f} tok/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
