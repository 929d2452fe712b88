"""Faster CPU inference for the engine: int8 linear layers and a compiled decode step.

Measured on SmolLM2-135M-Instruct, 2 cores of this project's CI machine (AVX-512 VNNI), one
decode step at batch 1: fp32 eager 33-40 ms; `quantize_dynamic` int8 (fbgemm: int8 weights,
activations quantised per step) 23 ms; torch's weight-only int8 kernel (`_weight_int8pack_mm`)
105 ms; torchao 0.18 `Int8WeightOnlyConfig` 89 ms eager and 65 ms compiled. So "int8" here is
torch's dynamic quantisation, the fastest int8 this CPU runs; its accuracy cost is measured by
benchmarks/bench_int8_accuracy.py. torch.compile of the fp32 decode step: 24 ms after a
~70 s cold compile per new batch size (the step is launch-bound: ~25% of eager time is
Python and small ops), so it pays for a long-lived server or a long rollout job, not a test.
"""

from __future__ import annotations

import copy
import warnings

import torch
from transformers import PreTrainedModel

QUANTIZE = (None, "int8")


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of `model` whose nn.Linear layers (lm_head included) run in int8; embeddings stay fp32.

    Per-output-channel symmetric int8 weights; activations are quantised per tensor at each call.
    """
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("quantize='int8' is a CPU path (fbgemm); on a GPU serve in bf16 instead")
    with warnings.catch_warnings():
        # torch points eager quantisation users at torchao, whose int8 is 3-4x slower on this CPU.
        warnings.simplefilter("ignore")
        qconfig = {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), qconfig, dtype=torch.qint8)


def compiled_decode(model: PreTrainedModel):
    """The model's forward compiled for decode steps (dynamic shapes: the cache grows every step)."""
    return torch.compile(model, dynamic=True)
