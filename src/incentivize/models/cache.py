"""KV caches for decoding: the keyword transformers expects, and a cache that never copies to grow.

transformers' `DynamicCache` grows each layer with `torch.cat` at every decoding step, copying the
whole cache each time: on a CPU that copy was a quarter of the decoding time for a 32 x 64 batch.
`preallocate(cache, capacity)` turns a filled `DynamicCache` (after the prefill) into one whose
layers write each new position into a buffer sized for the whole generation and hand the attention
a view of the filled part; everything else (mask sizes, row selection) behaves as before.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword (and output field) of the KV cache: transformers 5 renamed `past_key_values` to `cache`."""
    wrapped: Any = model
    base = wrapped.get_base_model() if hasattr(wrapped, "get_base_model") else wrapped  # peft wrapper
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room for `capacity` positions."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, repeats: int = 1) -> None:
        super().__init__()
        self.device = keys.device
        self.length = keys.shape[-2]
        self._keys = self._buffer(keys, max(capacity, self.length), repeats)
        self._values = self._buffer(values, max(capacity, self.length), repeats)
        self.is_initialized = True
        self._refresh()

    @staticmethod
    def _buffer(states: torch.Tensor, capacity: int, repeats: int) -> torch.Tensor:
        batch, heads, length, dim = states.shape
        buffer = states.new_empty(batch * repeats, heads, capacity, dim)
        buffer[:, :, :length] = states.repeat_interleave(repeats, dim=0) if repeats > 1 else states
        return buffer

    @staticmethod
    def _grow(buffer: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, heads, length, dim = buffer.shape
        return torch.cat([buffer, buffer.new_empty(batch, heads, capacity - length, dim)], dim=2)

    def _refresh(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # out of room: grow once, to double
            grown = max(end, 2 * self._keys.shape[-2])
            self._keys, self._values = (self._grow(b, grown) for b in (self._keys, self._values))
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._refresh()
        return self._keys[:, :, :end], self._values[:, :, :end]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys = self._keys[indices]
        self._values = self._values[indices]
        self._refresh()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length -= abs(tokens_to_remove)
        self._refresh()


def preallocate(cache: Any, capacity: int, repeats: int = 1) -> Any:
    """Give every plain dynamic layer of `cache` room for `capacity` positions, its rows repeated `repeats` times.

    Layers of other kinds (sliding windows, linear attention) keep their own class and are repeated
    with their own `batch_repeat_interleave`.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        if repeats > 1:
            cache.batch_repeat_interleave(repeats)
        return cache
    for i, layer in enumerate(layers):
        keys, values = layer.keys, layer.values
        if type(layer) is DynamicLayer and keys is not None and values is not None and keys.numel():
            layers[i] = PreallocatedLayer(keys, values, capacity, repeats)
        elif repeats > 1:
            layer.batch_repeat_interleave(repeats)
    return cache
