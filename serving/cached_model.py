"""A causal LM plus its batched KV cache, whose slots may be masked holes.

One KV cache whose slots are shared by the batch, plus a 2D slot mask and each row's next
position. Prompts are left-padded; tokens carry their true positions (`position_ids`), so a slot's
index never matters, only the mask. That one rule carries three things:
- speculative rollback: when rows of a batch accept different numbers of drafts, each row's
  rejected slots are masked out in place (holes) and only the slots every row rejected are cropped;
- continuous batching: rows prefilled apart join a running batch by padding the shorter side's
  slots on the left with holes (`merge`), and leading slots no row uses any more are dropped
  (`compact`);
- prefix sharing: a prompt prefilled once is copied to its n sample rows (`select` with repeats).
Holes cost attention over a few dead slots but no copying; RoPE keys are stored with true positions,
so holes change nothing else. Rows that finish leave the batch (`select`).

The cache's layers (`SlotLayer`) write into preallocated buffers that grow by doubling, so a
decode step appends in place instead of copying the whole cache (DynamicCache's `torch.cat`).
"""

from __future__ import annotations

import torch
from transformers import Cache, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

DECODE_WIDTH = 16  # tokens per row up to which a forward is a decode step (1 + the drafts)


class SlotLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views of preallocated (B, H, capacity, D) buffers."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = key_states.new_zeros(*key_states.shape[:2], 0, key_states.shape[3])
        self._v = value_states.new_zeros(*value_states.shape[:2], 0, value_states.shape[3])
        self.length = 0
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def _reserve(self, slots: int) -> None:
        capacity = self._k.shape[2]
        if slots <= capacity:
            return
        capacity = max(slots, 2 * capacity, 64)
        k, v = self._k, self._v
        self._k = k.new_zeros(*k.shape[:2], capacity, k.shape[3])
        self._v = v.new_zeros(*v.shape[:2], capacity, v.shape[3])
        self._k[:, :, : self.length], self._v[:, :, : self.length] = self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[2]
        self._reserve(end)
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._view()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"SlotLayer.crop takes a negative count, got {tokens_to_remove}")
        if self.is_initialized and tokens_to_remove:
            self.length = max(0, self.length + tokens_to_remove)
            self._view()

    def drop_leading(self, n: int) -> None:
        """Forget the first n slots (holes in every row)."""
        if self.is_initialized and n:
            self.length -= n
            self._k, self._v = self._k[:, :, n:], self._v[:, :, n:]
            self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:  # the capacity is kept, so the next step appends without regrowing
            k = self._k.new_zeros(len(indices), *self._k.shape[1:])
            v = self._v.new_zeros(len(indices), *self._v.shape[1:])
            k[:, :, : self.length], v[:, :, : self.length] = self.keys[indices], self.values[indices]
            self._k, self._v = k, v
            self._view()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.batch_select_indices(
                torch.arange(self._k.shape[0], device=self._k.device).repeat_interleave(repeats)
            )

    def reset(self) -> None:
        super().reset()
        self.length = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def offload(self):  # the buffers move, so the views must follow (the base class moves only the views)
        if self.is_initialized:
            self._k, self._v = self._k.to("cpu", non_blocking=True), self._v.to("cpu", non_blocking=True)
            self._view()

    def prefetch(self):
        if self.is_initialized and self._k.device != self.device:
            self._k = self._k.to(self.device, non_blocking=True)
            self._v = self._v.to(self.device, non_blocking=True)
            self._view()

    @staticmethod
    def stacked(a: SlotLayer | None, rows_a: int, b: SlotLayer | None, rows_b: int, width: int) -> SlotLayer:
        """a's rows, then b's, each right-aligned in `width` slots (holes on the left); a side that
        holds nothing yet (None: a drafter that has not read its prompts) contributes hole rows."""
        like = a if a is not None else b
        capacity = max(width + 64, like._k.shape[2])  # room for the next steps
        k = like._k.new_zeros(rows_a + rows_b, like._k.shape[1], capacity, like._k.shape[3])
        v = like._v.new_zeros(rows_a + rows_b, like._v.shape[1], capacity, like._v.shape[3])
        for layer, rows in ((a, slice(0, rows_a)), (b, slice(rows_a, rows_a + rows_b))):
            if layer is not None:
                k[rows, :, width - layer.length : width] = layer.keys
                v[rows, :, width - layer.length : width] = layer.values
        out = SlotLayer()
        out.dtype, out.device, out.is_initialized = like.dtype, like.device, True
        out._k, out._v, out.length = k, v, width
        out._view()
        return out


class SlotCache(DynamicCache):
    """A DynamicCache made of SlotLayers, one created per decoder layer on first use."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=SlotLayer)


class CachedModel:
    """A causal LM and its KV cache over a batch (see the module doc)."""

    def __init__(self, model: PreTrainedModel, batch_size: int, device: torch.device, decode=None):
        self.model = model
        # Decode and verify steps (a few tokens per row) may run a compiled forward
        # (serving.optimize.compiled_decode); prefills of whole prompts always run eager.
        self.decode = decode if decode is not None else model
        self.cache = SlotCache()
        # (B, slots): 1 = a real token, 0 = left padding, a rolled-back draft, or a merge's padding
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        # (B,): the position the row's next real token takes
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """Append (B, T) tokens (valid=False: a hole) and return the last `logits_to_keep` logits."""
        positions = (self.next_pos.unsqueeze(1) + valid.long().cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, valid.long()], dim=1)
        decoding = self.mask.shape[1] > tokens.shape[1] and tokens.shape[1] <= DECODE_WIDTH  # not a prefill
        out = (self.decode if decoding else self.model)(
            input_ids=tokens,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        self.next_pos += valid.sum(dim=1)
        return out.logits

    def rollback(self, n_drop: torch.Tensor) -> None:
        """Forget the last n_drop[b] slots of row b: masked where rows differ, cropped where all agree."""
        width = self.mask.shape[1]
        dropped = torch.arange(width, device=self.mask.device) >= (width - n_drop).unsqueeze(1)
        self.next_pos -= (self.mask.bool() & dropped).sum(dim=1)
        self.mask = self.mask.masked_fill(dropped, 0)
        common = int(n_drop.min()) if n_drop.numel() else 0
        if common:
            self.cache.crop(-common)
            self.mask = self.mask[:, :-common]

    def select(self, keep: torch.Tensor) -> None:
        """Keep these rows, in this order; an index may repeat (n samples sharing one prefill)."""
        self.cache.batch_select_indices(keep)
        self.mask, self.next_pos = self.mask[keep], self.next_pos[keep]
        self.compact()

    def merge(self, other: CachedModel) -> None:
        """Append other's rows (prefilled apart) to this batch, aligning both on their last slot."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        mine, theirs = self.cache.layers, other.cache.layers
        if mine or theirs:
            rows = (self.mask.shape[0], other.mask.shape[0])
            self.cache.layers = [
                SlotLayer.stacked(a, rows[0], b, rows[1], width)
                for a, b in zip(mine or [None] * len(theirs), theirs or [None] * len(mine), strict=True)
            ]
        pad = [torch.nn.functional.pad(m.mask, (width - m.mask.shape[1], 0)) for m in (self, other)]
        self.mask = torch.cat(pad, dim=0)
        self.next_pos = torch.cat([self.next_pos, other.next_pos])

    def compact(self) -> None:
        """Drop leading slots that are holes in every row (left by rows that left or by merges)."""
        used = self.mask.any(dim=0)
        lead = int(used.long().argmax()) if bool(used.any()) else self.mask.shape[1]
        if lead:
            for layer in self.cache.layers:
                layer.drop_leading(lead)
            self.mask = self.mask[:, lead:]


class ExpertsMode:
    """MoE experts as 'batched_mm' while decoding off-CPU and 'grouped_mm' while prefilling.

    With a few tokens per step, gathering each token's expert weights (batched_mm) beats
    grouped_mm's sort-and-group by ~4x per MoE layer on an H100 (measured on the benchmark's tiny
    model), as transformers' generate also does; prefill keeps grouped_mm, which does not copy
    weights per token. Continuous batching interleaves the two, so this switches only on a change.
    """

    def __init__(self, models: list[PreTrainedModel]):
        self.models = []
        for model in models:
            get = getattr(model, "get_experts_implementation", None)
            original = get() if get is not None else {}
            if model.device.type != "cpu" and "grouped_mm" in original.values():
                decode = {k: "batched_mm" if v == "grouped_mm" else v for k, v in original.items()}
                self.models.append((model, original, decode))
        self.decoding = False

    def decode(self) -> None:
        self._set(True)

    def prefill(self) -> None:
        self._set(False)

    def _set(self, decoding: bool) -> None:
        if decoding != self.decoding:
            for model, original, decode in self.models:
                model.set_experts_implementation(decode if decoding else original)
            self.decoding = decoding
