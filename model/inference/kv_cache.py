"""A KV cache that appends in place: decoding without copying the whole cache at every token.

transformers' `DynamicLayer` grows by `torch.cat`, so each new token copies every layer's keys
and values (a 4B model's image prefix alone is about 100 MB): on a 2-core CPU that copy was
about 0.55 ms per layer per token, a tenth of an int8 decoding step (docs/devices.md). Here a layer
keeps its keys and values in a buffer with spare room and hands attention a view of the filled
part, so a token costs a write of its own row. The answers are the same to the bit: attention
reads the same numbers, from a view instead of a fresh tensor.

Plain `DynamicLayer`s are replaced, and sliding-window layers while every position still fits the
window (past it they are transformers' own again); any other layer (quantized, ...) keeps its own
rules. Any operation of the parent class that reassigns `keys` (batch_select_indices, crop,
batch_repeat_interleave, reorder_cache) is noticed at the next update, which re-buffers.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer


class _InPlace:
    """Keys and values as views of buffers with `spare` free rows, appended in place."""

    spare: int
    keys: torch.Tensor
    values: torch.Tensor
    is_initialized: bool
    lazy_initialization: Any

    def _start_buffers(self, spare: int) -> None:
        self.spare = max(int(spare), 1)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _owns_views(self) -> bool:
        """Whether `keys`/`values` are still the views this layer made (not reassigned since)."""
        buffers = (self._key_buffer, self._value_buffer)
        return all(b is not None and t.data_ptr() == b.data_ptr() and t.shape[:2] == b.shape[:2]
                   and t.shape[3:] == b.shape[3:] for t, b in zip((self.keys, self.values), buffers))

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append in place (initializing on the first call) and hand back the filled views."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._append(key_states, value_states)
        return self.keys, self.values

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        length = self.keys.shape[-2] if self.keys.numel() else 0
        needed = length + key_states.shape[-2]
        if not self._owns_views() or needed > self._key_buffer.shape[-2]:
            capacity = needed + max(self.spare, needed // 2)
            old_keys, old_values = (self.keys, self.values) if length else (None, None)
            self._key_buffer = key_states.new_empty((*key_states.shape[:2], capacity, key_states.shape[-1]))
            self._value_buffer = value_states.new_empty((*value_states.shape[:2], capacity, value_states.shape[-1]))
            if old_keys is not None:
                self._key_buffer[:, :, :length].copy_(old_keys)
                self._value_buffer[:, :, :length].copy_(old_values)
        self._key_buffer[:, :, length:needed].copy_(key_states)
        self._value_buffer[:, :, length:needed].copy_(value_states)
        self.keys = self._key_buffer[:, :, :needed]
        self.values = self._value_buffer[:, :, :needed]


class GrowingLayer(_InPlace, DynamicLayer):
    """A `DynamicLayer` whose `keys`/`values` are views of buffers with `spare` free rows."""

    def __init__(self, spare: int = 64) -> None:
        super().__init__()
        self._start_buffers(spare)

    @classmethod
    def copy_of(cls, layer: DynamicLayer, spare: int) -> GrowingLayer:
        """A buffered copy of an initialized layer (the original is left as it is)."""
        grown = cls(spare)
        if layer.is_initialized:
            grown._write(layer.keys, layer.values)
        return grown

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._write(key_states, value_states)


class GrowingWindowLayer(_InPlace, DynamicSlidingWindowLayer):
    """A sliding-window layer (published M3D-LaMed-Phi-3: a window of 2047 on every layer) that
    appends in place while every position still fits its window, which a chat's prompt and answer
    do; past that it is transformers' own layer again."""

    def __init__(self, sliding_window: int, spare: int = 64) -> None:
        super().__init__(sliding_window=sliding_window)
        self._start_buffers(spare)

    @classmethod
    def copy_of(cls, layer: DynamicSlidingWindowLayer, spare: int) -> DynamicLayer:
        """A buffered copy of a layer that still holds all its positions; any other is deep-copied."""
        if layer.is_initialized and not _holds_every_position(layer):
            return copy.deepcopy(layer)
        grown = cls(layer.sliding_window, spare)
        if layer.is_initialized:
            grown._write(layer.keys, layer.values)
            grown.cumulative_length = layer.cumulative_length
        return grown

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.record_past or self.cumulative_length + key_states.shape[-2] >= self.sliding_window:
            return super().update(key_states, value_states, *args, **kwargs)
        self.cumulative_length += key_states.shape[-2]
        return self._write(key_states, value_states)


# the layers this module buffers, each to its buffered kind
_GROWN: dict[type, type] = {DynamicLayer: GrowingLayer, GrowingLayer: GrowingLayer,
                            DynamicSlidingWindowLayer: GrowingWindowLayer, GrowingWindowLayer: GrowingWindowLayer}


def _holds_every_position(layer: DynamicLayer) -> bool:
    """Whether the layer still holds every position it was given (a window drops the first ones)."""
    return layer.get_seq_length() == layer.keys.shape[-2]


def growing_copy(cache: Cache, spare: int) -> Cache:
    """A copy of `cache` that decodes `spare` more tokens without copying itself (the plain
    layers become `GrowingLayer`s; any other layer is deep-copied as before)."""
    copied = copy.copy(cache)
    copied.layers = [_GROWN[type(layer)].copy_of(layer, spare) if type(layer) in _GROWN else copy.deepcopy(layer)
                     for layer in cache.layers]
    return copied


def prefix_copy(cache: Cache, length: int) -> Cache | None:
    """The first `length` positions of `cache` as a cache of their own (copied, so the rest of the
    buffer can go): the image prefix cut from the pass that also read a new scan's first question.
    Each layer is rebuilt through its own class's `update` (a sliding window keeps its rules).
    None where a layer is of another kind, has dropped early positions (past its window) or holds
    fewer than asked (a generation stopped before its first pass): the prefix is then computed."""
    kept = []
    for layer in cache.layers:
        if type(layer) not in _GROWN or not layer.is_initialized or not _holds_every_position(layer) \
                or layer.keys.shape[-2] < length:
            return None
        fresh = DynamicSlidingWindowLayer(sliding_window=layer.sliding_window) if layer.is_sliding else DynamicLayer()
        fresh.update(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone())
        kept.append(fresh)
    if not kept:
        return None
    copied = copy.copy(cache)
    copied.layers = kept
    return copied
