"""Token ids -> text while generating: stop-string detection and streamed text deltas."""

from __future__ import annotations

from collections.abc import Sequence


class StopChecker:
    """Incremental detokenisation (vLLM's prefix/read offsets) and stop-string search on new text only."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.longest = max(len(s) for s in self.stops)
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.text = ""

    def add(self, token_id: int) -> bool:
        """Append one token; True once the text contains a stop string."""
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):  # mid-character: wait for more bytes
            return False
        start = max(0, len(self.text) - self.longest + 1)
        self.text += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        return any(s in self.text[start:] for s in self.stops)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(hits)] if hits else text


class TextStream:
    """The text deltas of one completion as its tokens arrive, for server-sent events.

    A delta never ends mid-character and never shows part of a stop string: while running, the last
    len(longest stop) - 1 characters are held back, since the next tokens may complete a stop
    string there. The last delta comes from the finished completion's text (`finish`), which the
    engine has already cut at the stop string, so the deltas always join up to exactly that text.
    Decoding the whole sequence each step costs O(length), cheap next to a forward pass.
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.holdback = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token_ids: Sequence[int]) -> str:
        """Take one step's new tokens; the text that is now safe to send."""
        self.ids.extend(token_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # mid-character: the next token may complete it
            return ""
        text = cut_at_stop(text, self.stops)
        return self._emit(text[: len(text) - self.holdback])

    def finish(self, final_text: str) -> str:
        """The rest of the completion once it finished."""
        return self._emit(final_text)

    def _emit(self, text: str) -> str:
        # Byte-level decoding is prefix-stable once a trailing partial character is held back, so
        # `text` extends what was sent; the check keeps a surprise from ever sending garbled text.
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
