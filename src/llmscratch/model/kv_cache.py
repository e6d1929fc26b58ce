"""The key/value cache: preallocated buffers per layer, written at explicit positions."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of every layer, shape (n_layers, batch, n_kv_heads, max_len, head_dim).

    The caller says where each new token goes (`positions`, the slot indices of this step); the cache keeps no
    counter of its own. Slots 0..positions[-1] must have been written before they are read.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def update(
        self, layer: int, positions: torch.Tensor, end: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_heads, T, head_dim) at slots `positions` (T,); return slots [0, end) of the layer."""
        buffers = self._buffers  # direct access: update runs once per layer per token
        k_buf, v_buf = buffers["k"][layer], buffers["v"][layer]  # (B, n_kv_heads, max_len, head_dim)
        k_buf.index_copy_(2, positions, k)
        v_buf.index_copy_(2, positions, v)
        return k_buf[:, :, :end], v_buf[:, :, :end]

    def reset(self) -> None:
        """Zero every slot (a cache can then serve a new batch of prompts)."""
        self.k.zero_()
        self.v.zero_()
