"""Prompts and completions rendered by the tokenizer's own chat template, the one source of prompt text.

Every prompt the pipeline shows a model (pretraining documents, SFT pairs, rollouts, held-out
evaluation) is written once, by the data stage, as
`tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)`, and the Serve
endpoint renders chat requests with the same call: a pretrained model sees its own turn markers,
special tokens and system turn everywhere, and ReasonForge's own tokenizer its own template.

The completion is whatever the template appends to the prompt when the assistant turn is added
(for SmolLM2: `{solution}<|im_end|>\\n`), so SFT learns the model's own end-of-turn token. A
template that rewrites earlier turns when an answer follows (Qwen3 strips reasoning from history)
cannot be split this way; it fails naming the prompt rather than training on misaligned text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Turns = list[dict[str, str]]


def conversation(
    question: str, messages: Sequence[dict[str, str]] | None = None, system: str | None = None
) -> Turns:
    """The turns before the answer: `messages` (or one user turn, `question`), with a `system` turn
    first unless the turns already open with one."""
    turns = [dict(m) for m in messages] if messages else [{"role": "user", "content": question}]
    if system is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system})
    return turns


def check_chat_template(tokenizer: Any, where: str) -> None:
    """Fail, naming `where`, when the tokenizer cannot render conversations."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{where}: the tokenizer has no chat template; ReasonForge renders every prompt with it. "
            "Use an instruct model's directory, or set tokenizer.chat_template and save it there"
        )


def prompt_text(tokenizer: Any, turns: Turns) -> str:
    """The text a model continues to answer the conversation `turns`."""
    return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)


def completion_text(tokenizer: Any, turns: Turns, solution: str, prompt: str | None = None) -> str:
    """The assistant turn holding `solution` as the template writes it after `prompt_text(turns)`,
    end-of-turn token included."""
    prompt = prompt_text(tokenizer, turns) if prompt is None else prompt
    full = tokenizer.apply_chat_template([*turns, {"role": "assistant", "content": solution}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template does not extend the prompt when the answer is added, so the answer "
            f"cannot be split off for training; prompt {prompt[-200:]!r}, rendered {full[-300:]!r}"
        )
    return full[len(prompt) :]
