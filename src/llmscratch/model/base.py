"""What every model family shares: the forward contract, the cache factory and parameter counting."""

from __future__ import annotations

import torch
from torch import nn

from llmscratch.model.attention import attention_mask
from llmscratch.model.kv_cache import KVCache


class LanguageModel(nn.Module):
    """Base of GPT and Llama: `model(ids, cache=None, positions=None, pad_mask=None) -> logits`.

    - ids (B, T) token ids.
    - positions (T,) the slots these tokens occupy (default 0..T-1; required with a cache).
    - pad_mask (B, S) bool, True for real tokens, over slots 0..S-1 with S >= positions[-1] + 1 (left padding).
    Subclasses implement `hidden_states` (final-normed activations, (B, T, emb_dim)) and own `self.head`.
    """

    config: object
    head: nn.Linear

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.head(self.hidden_states(ids, cache, positions, pad_mask))  # (B, T, vocab)

    def hidden_states(self, ids, cache=None, positions=None, pad_mask=None) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `max_len` tokens (default: the context length)."""
        c = self.config
        max_len = max_len or c.context_length
        if max_len > c.context_length:
            raise ValueError(f"max_len {max_len} exceeds the model's context length {c.context_length}")
        p = next(self.parameters())
        return KVCache(c.n_layers, batch, c.n_kv_heads, max_len, c.head_dim, dtype=p.dtype, device=p.device)

    def _prepare(
        self,
        ids: torch.Tensor,
        cache: KVCache | None,
        positions: torch.Tensor | None,
        pad_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, int, torch.Tensor | None, bool]:
        """Check the arguments; return (positions, end, mask, is_causal) for the attention layers."""
        T = ids.shape[1]
        if positions is None:
            if cache is not None:
                raise ValueError("positions are required with a cache: the slots to write these tokens at")
            positions = torch.arange(T, device=ids.device)
        end = int(positions[-1]) + 1
        limit = cache.max_len if cache is not None else self.config.context_length
        if end > limit:
            raise ValueError(
                f"position {end - 1} is past the {'cache' if cache is not None else 'context'} length {limit}"
            )
        if cache is None and end != T:
            raise ValueError("without a cache, positions must be 0..T-1")
        mask, is_causal = attention_mask(positions, end, pad_mask)
        return positions, end, mask, is_causal

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (shared tensors counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total
