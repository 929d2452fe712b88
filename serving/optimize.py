"""Faster CPU inference for the engine: int8 linear layers, and (experimental) a compiled decode step.

int8: measured on SmolLM2-135M-Instruct, 2 cores of this project's CI machine (AVX-512 VNNI), one
decode step at batch 1: fp32 eager 33-40 ms; `quantize_dynamic` int8 (fbgemm: int8 weights,
activations quantised per step) 23 ms (31 ms with the down projections kept fp32, see KEEP_FP32); torch's weight-only int8 kernel (`_weight_int8pack_mm`)
105 ms; torchao 0.18 `Int8WeightOnlyConfig` 89 ms eager and 65 ms compiled. So "int8" here is
torch's dynamic quantisation, the fastest int8 this CPU runs; its accuracy cost is measured by
benchmarks/eval_int8.py. On tiny models (the demo's 160k-parameter MoE) it is slower: quantising
activations costs more than the small matmuls it speeds up.

compile: a bare decode loop over transformers' DynamicCache ran 24 ms/step compiled vs 40 eager
(SmolLM2, batch 1, after a ~70 s cold compile). Inside the engine it does not pay: dynamo guards on
the slot cache's length and capacity, so growing caches and changing batch sizes recompile (4
graphs in the first 24 tokens; 260 s cold at 2 threads) and the compiled engine decoded 17.9 tok/s
against 27.5 eager (benchmarks/results/decode_smollm2.json). So no config turns it on; the engine
keeps the switch for experiments (a fixed-capacity cache would be the next thing to try).
"""

from __future__ import annotations

import copy
import warnings

import torch
from transformers import PreTrainedModel

QUANTIZE = (None, "int8")


# Linear layers left in fp32. The MLP's down projection reads the activations with the big outliers
# (SwiGLU products): with it in int8 (activations quantised per tensor), SmolLM2's greedy argmax
# agreed with fp32 on 61% of GSM8K reply tokens (KL 0.96 nats); with it in fp32, 84% (KL 0.17),
# at 31 ms/step instead of 22 (fp32: 41). Keeping lm_head or o_proj in fp32 too bought ~nothing.
KEEP_FP32 = ("down_proj",)


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of `model` whose nn.Linear layers (lm_head included, KEEP_FP32 not) run in int8;
    embeddings stay fp32. Per-output-channel symmetric int8 weights; activations are quantised per
    tensor at each call."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize='int8' is a CPU path (fbgemm); on a GPU serve in bf16 instead")
    with warnings.catch_warnings():
        # torch points eager quantisation users at torchao, whose int8 is 3-4x slower on this CPU.
        warnings.simplefilter("ignore")
        qconfig = {
            name: torch.ao.quantization.per_channel_dynamic_qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith(KEEP_FP32)
        }
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), qconfig, dtype=torch.qint8)


def compiled_decode(model: PreTrainedModel):
    """The model's forward compiled for decode steps (dynamic shapes: the cache grows every step)."""
    return torch.compile(model, dynamic=True)
