"""The key/value cache: preallocated buffers per layer, written at explicit positions (shared or per row)."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of every layer, shape (n_layers, batch, n_kv_heads, max_len, head_dim).

    The caller says where each new token goes (`positions`: the slots of this step, shared by every row or each
    row's own); the cache keeps no counter of its own. A row's slots up to its position must have been written
    before they are read. `rows(start, stop)` is a view of some rows (a request prefilled into its own row).
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
        """Write k, v (B, n_kv_heads, T, head_dim) at slots `positions`, (T,) for every row or (B, T) per row;
        return slots [0, end) of the layer, (B, n_kv_heads, end, head_dim)."""
        buffers = self._buffers  # direct access: update runs once per layer per token
        k_buf, v_buf = buffers["k"][layer], buffers["v"][layer]  # (B, n_kv_heads, max_len, head_dim)
        if positions.dim() == 1:
            k_buf.index_copy_(2, positions, k)
            v_buf.index_copy_(2, positions, v)
        else:  # row b writes slots positions[b]
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1)
            k_buf[rows, :, positions] = k.transpose(1, 2)  # indexed view (B, T, n_kv_heads, head_dim)
            v_buf[rows, :, positions] = v.transpose(1, 2)
        return k_buf[:, :, :end], v_buf[:, :, :end]

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows [start, stop) of this one, sharing its memory (writes go to this cache)."""
        view = KVCache.__new__(KVCache)
        nn.Module.__init__(view)
        view.register_buffer("k", self.k[:, start:stop], persistent=False)
        view.register_buffer("v", self.v[:, start:stop], persistent=False)
        return view

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` slots of row `src` into row `dst` (a batch closing a gap left by a request)."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def reset(self) -> None:
        """Zero every slot (a cache can then serve a new batch of prompts)."""
        self.k.zero_()
        self.v.zero_()
