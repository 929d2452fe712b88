"""The dataset recipes of the shared training loop.

PRETRAIN: next-token loss over packed documents. SFT: loss on completion tokens only.
"""

from __future__ import annotations

from training.data import PackedCorpus, PromptCompletionPairs
from training.loop import dataset_recipe

PRETRAIN = dataset_recipe(PackedCorpus)
SFT = dataset_recipe(PromptCompletionPairs)
