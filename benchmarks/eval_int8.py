"""What int8 costs in accuracy: pass@1 on a run's held-out task, and agreement / KL with fp32 on GSM8K.

    .venv/bin/python benchmarks/eval_int8.py --model outputs/smollm2_arithmetic/rlvr/model \
        --eval-dir outputs/smollm2_arithmetic/data/eval

1. Greedy pass@1 of the fp32 and the int8 engine (serving.optimize) on the first --limit prompts
   of the eval split (the task [real-model] trains SmolLM2 on), paired: the difference and its
   standard error are over the same prompts.
2. Teacher-forced on the fp32 model's own greedy replies to --gsm8k GSM8K test questions (chat
   template): per token, whether int8's argmax equals fp32's, and KL(fp32 || int8) of the next-token
   distributions. Not in `make bench`: a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from orchestration.atomic import atomic_write_json
from rl.config import EvalConfig
from rl.evaluate import binomial_se, eval_split, paired_difference, score_rows
from rl.tasks.gsm8k import SHIPPED_DIR, load_samples
from serving.engine import Engine
from serving.protocol import SamplingParams
from training.chat import conversation, prompt_text


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--eval-dir", required=True)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--gsm8k", type=int, default=32, help="GSM8K questions for agreement / KL")
    ap.add_argument("--gsm8k-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/int8_accuracy.json")
    return ap.parse_args()


@torch.inference_mode()
def agreement(fp32: Engine, int8: Engine, sequences: list[tuple[list[int], list[int]]]) -> dict:
    """Per generated position: argmax agreement and KL(fp32 || int8), teacher-forced."""
    same, kls = [], []
    for prompt, reply in sequences:
        ids = torch.tensor([prompt + reply])
        n = len(reply)
        p = fp32.model(ids).logits[0, -n - 1 : -1].float().log_softmax(-1)
        q = int8.model(ids).logits[0, -n - 1 : -1].float().log_softmax(-1)
        same += (p.argmax(-1) == q.argmax(-1)).tolist()
        kls += (p.exp() * (p - q)).sum(-1).tolist()
    kls_sorted = sorted(kls)
    return {
        "positions": len(same),
        "argmax_agreement": sum(same) / len(same),
        "kl_mean": sum(kls) / len(kls),
        "kl_p99": kls_sorted[int(0.99 * (len(kls_sorted) - 1))],
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    fp32 = Engine.from_pretrained(args.model, "cpu", max_batch_size=64)
    int8 = Engine(fp32.float_model, fp32.tokenizer, quantize="int8", max_batch_size=64)
    rows = eval_split(args.eval_dir, EvalConfig(limit=args.limit))
    result: dict = {
        "command": "benchmarks/eval_int8.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "eval_dir": args.eval_dir,
        "load_average_start": os.getloadavg(),
    }
    scores = {}
    for name, engine in (("fp32", fp32), ("int8", int8)):
        start = time.perf_counter()
        scores[name] = score_rows(engine, rows, args.max_new_tokens).scores
        result[f"{name}_wall_s"] = time.perf_counter() - start
        n = len(scores[name])
        p = sum(scores[name]) / n
        result[f"{name}_pass@1"], result[f"{name}_pass@1_se"] = p, binomial_se(p, n)
        print(f"{name}: pass@1 {p:.3f} ± {binomial_se(p, n):.3f} on {n} prompts", flush=True)
    diff, se = paired_difference(scores["fp32"], scores["int8"])
    result.update({"prompts": len(rows), "int8_minus_fp32": diff, "int8_minus_fp32_se": se})
    tok = AutoTokenizer.from_pretrained(args.model)
    questions = [s.prompt for s in load_samples([str(SHIPPED_DIR / "test.jsonl")])[: args.gsm8k]]
    prompts = [tok.encode(prompt_text(tok, conversation(q)), add_special_tokens=False) for q in questions]
    replies = fp32.generate(prompts, SamplingParams(max_tokens=args.gsm8k_tokens, temperature=0.0))
    result["gsm8k"] = agreement(fp32, int8, [(c.prompt_token_ids, c.token_ids) for c in replies])
    result["gsm8k"]["questions"] = len(prompts)
    result["load_average_end"] = os.getloadavg()
    print(result["gsm8k"])
    atomic_write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
