"""The key/value cache: preallocated buffers per layer, written at explicit positions (shared or per row)."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of every layer: per layer two buffers `k{i}`, `v{i}` of shape (batch, n_kv_heads,
    max_len, head_dim) (one buffer per layer, not one for all: a compiled step then writes each in place).

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
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.n_layers = n_layers
        for i in range(n_layers):
            self.register_buffer(f"k{i}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
            self.register_buffer(f"v{i}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers of layer i, each (batch, n_kv_heads, max_len, head_dim)."""
        buffers = self._buffers  # direct access: this runs once per layer per token
        return buffers[f"k{i}"], buffers[f"v{i}"]

    @property
    def max_len(self) -> int:
        return self.k0.shape[2]

    @property
    def batch(self) -> int:
        return self.k0.shape[0]

    def update(
        self, layer: int, positions: torch.Tensor, end: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_heads, T, head_dim) at slots `positions`, (T,) for every row or (B, T) per row;
        return slots [0, end) of the layer, (B, n_kv_heads, end, head_dim)."""
        k_buf, v_buf = self.layer(layer)  # (B, n_kv_heads, max_len, head_dim)
        if positions.dim() == 1:
            k_buf.index_copy_(2, positions, k)
            v_buf.index_copy_(2, positions, v)
        else:  # row b writes slots positions[b]
            rows = self._row_ids(k.shape[0], k.device)  # (B, 1)
            k_buf[rows, :, positions] = k.transpose(1, 2)  # indexed view (B, T, n_kv_heads, head_dim)
            v_buf[rows, :, positions] = v.transpose(1, 2)
        return k_buf[:, :, :end], v_buf[:, :, :end]

    def _row_ids(self, n: int, device: torch.device) -> torch.Tensor:
        """0..n-1 as a (n, 1) index, made once (every layer of every step asks for it)."""
        ids = self.__dict__.get("_row_index")
        if ids is None or ids.shape[0] != n or ids.device != device:
            ids = self.__dict__["_row_index"] = torch.arange(n, device=device)[:, None]
        return ids

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows [start, stop) of this one, sharing its memory (writes go to this cache)."""
        view = KVCache.__new__(KVCache)
        nn.Module.__init__(view)
        view.n_layers = self.n_layers
        for name, buf in self._buffers.items():
            view.register_buffer(name, buf[start:stop], persistent=False)
        return view

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` slots of row `src` into row `dst` (a batch closing a gap left by a request)."""
        for buf in self._buffers.values():
            buf[dst, :, :length] = buf[src, :, :length]

    def reset(self) -> None:
        """Zero every slot (a cache can then serve a new batch of prompts)."""
        for buf in self._buffers.values():
            buf.zero_()
