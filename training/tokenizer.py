"""The byte-level BPE tokenizer every ReasonForge model shares, and the chat format it encodes.

Chat format (an optional system turn, user and assistant turns; no BOS):

    [<|system|>\\n{system}\\n]<|user|>\\n{question}\\n<|assistant|>\\n{completion}<|endoftext|>

`render_prompt(question)` is the text up to and including `<|assistant|>\\n`: what a model continues.
The completion is `<think>{reasoning}</think> <answer>{final}</answer>` (see `rl.tasks.format`)
and the model ends its turn with `<|endoftext|>`, which is also the padding token. The tokenizer's
Jinja chat template produces exactly these strings, so `apply_chat_template(messages,
add_generation_prompt=True, tokenize=False) == render_prompt(question)`.

This is the format of ReasonForge's own models; a pretrained model (`model.pretrained`) brings its
own tokenizer and template instead (see `training.chat`, which renders every prompt through the
template of whichever tokenizer the run uses).

Tokens: `<|endoftext|>`, `<|user|>`, `<|assistant|>`, `<|system|>` are special (ids 0-3; dropped by
`decode(..., skip_special_tokens=True)`). The data stage passes the four format tags as
`added_tokens`: *non-special* tokens, one id each, so decoding a completion keeps them and the
answer can be extracted. Every prompt ends in
"\\n" and every completion starts with `<think>`, an added token, so
`encode(prompt) + encode(completion) == encode(prompt + completion)`: prompt masks line up.

The pre-tokenizer splits every digit into its own token before byte-level BPE (as Llama and
DeepSeek do): a tiny model then sees numbers digit by digit instead of through arbitrary merges,
which helps it learn arithmetic. There is no normaliser, so decode(encode(x)) == x for any string.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
SPECIAL_TOKENS = (EOS, USER, ASSISTANT, SYSTEM)


CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'system' -%}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' + message['content'] + '<|endoftext|>' }}"
    "{%- else -%}"
    "{{ raise_exception('this chat format has system, user and assistant turns; got role ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def render_prompt(question: str, system: str | None = None) -> str:
    """The text a model continues to answer `question` (same as the chat template's output)."""
    head = f"{SYSTEM}\n{system}\n" if system is not None else ""
    return f"{head}{USER}\n{question}\n{ASSISTANT}\n"


def render_completion(solution: str) -> str:
    """The assistant turn as the model must produce it: the solution, then end of turn."""
    return f"{solution}{EOS}"


def _pieces(texts: Iterable[str], added: Sequence[str]) -> Iterator[str]:
    """Texts cut around special and added tokens, which BPE must not learn merges for."""
    for text in texts:
        for token in (*SPECIAL_TOKENS, *added):
            text = text.replace(token, "\x00")
        yield from (piece for piece in text.split("\x00") if piece)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path, added_tokens: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on `texts`, save it to `out_dir` and return it.

    `added_tokens` (e.g. the answer format's tags, `rl.tasks.format.FORMAT_TAGS`) become single,
    non-special tokens. `vocab_size` bounds the final vocabulary, added tokens included; a small
    corpus stops merging earlier, so read the real size from `len(tokenizer)`.
    """
    # transformers takes seconds to import; Ray workers that only need the token strings above
    # import this module, so the import waits until a tokenizer is built.
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(added_tokens),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_pieces(texts, added_tokens), trainer)
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in added_tokens])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=EOS,
        extra_special_tokens=[USER, ASSISTANT, SYSTEM],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved in `path` (by `train_tokenizer`, or a pretrained model's; offline)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer at {path}: expected {path / 'tokenizer.json'} (written by the data stage, or "
            "shipped with a Hugging Face model directory)"
        )
    return AutoTokenizer.from_pretrained(str(path))


def check_same_vocabulary(a, a_name: str, b, b_name: str) -> None:
    """Fail, naming both, unless tokenizers `a` and `b` map the same strings to the same ids: a
    teacher and its student, or a target and its draft, must read and write one token space."""
    if a.get_vocab() != b.get_vocab():
        raise ValueError(
            f"{a_name} and {b_name} use different tokenizers: {a_name} has a vocabulary of {len(a)} tokens "
            f"({type(a).__name__}, eos {a.eos_token!r}), {b_name} one of {len(b)} tokens "
            f"({type(b).__name__}, eos {b.eos_token!r}); they must share one vocabulary"
        )
