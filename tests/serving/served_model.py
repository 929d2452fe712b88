"""For the Serve tests: tiny models saved as a servable directory, and a Serve app run on loopback.

The target and draft are conftest's (a Qwen3-MoE and a dense Qwen3 sharing its embeddings, so
drafts are accepted about half the time) with the project's tokenizer and chat template, and a
longer context so a stream can run long enough to be cut off mid-way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import tiny_draft, tiny_target
from ray import serve
from ray.serve import Application

from rl.tasks.format import FORMAT_TAGS
from training.tokenizer import train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 3 + 4? <think>3 + 4 = 7</think> <answer>7</answer>",
    "Reasoning models think step by step before they answer.",
] * 20
CONTEXT = 2048
APP_NAME = "reasonforge"


@dataclass
class ServedModel:
    target: str
    draft: str


def save_tiny_models(root: Path) -> ServedModel:
    tokenizer = train_tokenizer(CORPUS, vocab_size=320, out_dir=root / "target", added_tokens=FORMAT_TAGS)
    target = tiny_target(vocab=len(tokenizer), seed=2)
    draft = tiny_draft(target)
    for model, name in ((target, "target"), (draft, "draft")):
        model.config.max_position_embeddings = CONTEXT  # RoPE has no trained length to respect here
        model.save_pretrained(root / name)
    return ServedModel(str(root / "target"), str(root / "draft"))


@contextmanager
def serving(app: Application, port: int) -> Iterator[str]:
    """Run `app` on Serve at http://127.0.0.1:<port>; Serve is shut down afterwards."""
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def replica_count(deployment: str = "OpenAIServer") -> int:
    """RUNNING replicas of the app's deployment, from serve.status()."""
    states = serve.status().applications[APP_NAME].deployments[deployment].replica_states
    return states.get("RUNNING", 0)
