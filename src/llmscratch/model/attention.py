"""Causal multi-head self-attention (with grouped-query heads and optional rotary embeddings).

Equal paths compute the same thing: `attention_manual` writes it out (scores, mask, softmax, weighted
values); `attention_fused` calls torch's scaled_dot_product_attention; `attention_one_query` is the decode
step's case (one query per row), its grouped-query heads gathered by a reshape. Tests check they agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.kv_cache import KVCache
from llmscratch.model.quant_kernel import Linear, inference_ops


def attention_manual(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention written out. q (B, nh, T, hd); k, v (B, nkv, S, hd); mask (B|1, 1, T, S) bool, True = may attend."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:  # grouped-query attention: each kv head serves n_rep query heads
        k = k.repeat_interleave(n_rep, dim=1)  # (B, nh, S, hd)
        v = v.repeat_interleave(n_rep, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ v  # (B, nh, T, hd)


def attention_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The same attention through torch's scaled_dot_product_attention."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1]
    )


def attention_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of one query per row (a decode step): q (B, nh, 1, hd); k, v (B, nkv, S, hd); mask (B|1, 1, 1, S)
    bool or None (every key may be seen).

    The n_rep = nh / nkv query heads that share a kv head are one (B, nkv, n_rep, hd) batch of queries, so each
    kv head's keys are read once for all of them (no repeat_interleave, no per-head GQA broadcast); about 1.5x
    faster than `attention_fused` on SmolLM2's 3 groups of 3 heads at 100-250 cached slots.
    """
    B, nh, _, hd = q.shape
    nkv = k.shape[1]
    grouped = q.view(B, nkv, nh // nkv, hd)  # (B, nkv, n_rep, hd): one query token, so no causal order among them
    y = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask)  # (B, nkv, n_rep, hd)
    return y.view(B, nh, 1, hd)


def attention_mask(
    positions: torch.Tensor, end: int, pad_mask: torch.Tensor | None, window: int | None = None,
    shortcuts: bool = True,
) -> tuple[torch.Tensor | None, bool]:
    """The mask for queries at slots `positions` over key slots [0, end): (mask, is_causal).

    positions (T,) are shared by every row, (B, T) are each row's own: a query sees the keys at or before its
    own slot. window: a sliding window, keys more than window - 1 slots behind the query are masked.
    pad_mask (B, >= end) marks real tokens True and padding False.
    Returns (None, True) for a plain causal prefill from slot 0, (None, False) when every key may be seen
    (one shared decode step without padding), else a bool mask (B|1, 1, T, end), True where attending is allowed.
    shortcuts=False: always the mask (keys past the queries may exist: a compiled step reads the whole cache).
    """
    shared = positions.dim() == 1
    T = positions.shape[-1]
    plain = pad_mask is None or bool(pad_mask[:, :end].all())
    windowed = window is not None and end > window  # else no key can fall out of the window
    if shortcuts and plain and shared and not windowed and T == end:
        return None, True
    if shortcuts and plain and shared and not windowed and T == 1:
        return None, False
    keys = torch.arange(end, device=positions.device)
    query = positions[..., None]  # (T, 1) or (B, T, 1)
    mask = keys <= query  # (T, end) or (B, T, end) causal
    if windowed:
        mask = mask & (keys > query - window)
    mask = mask[None, None] if shared else mask[:, None]  # (B|1, 1, T, end)
    if pad_mask is not None:
        mask = mask & pad_mask[:, None, None, :end]  # (B, 1, T, end)
        # A padding query sees no real key before it; let it see itself so softmax stays finite.
        itself = keys == query  # (T, end) or (B, T, end)
        mask = mask | (itself[None, None] if shared else itself[:, None])
    return mask, False


def position_ids(positions: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    """Positions of the tokens in their own sequence: slot index minus the padding before it. (B|1, T)"""
    rows = positions if positions.dim() == 2 else positions[None, :]  # (B|1, T)
    if pad_mask is None:
        return rows
    before = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S) real tokens up to each slot, minus one
    return before.gather(1, rows.expand(pad_mask.shape[0], -1))  # (B, T)


@dataclass
class StepContext:
    """What every block of one forward call takes besides its activations (built by `LanguageModel._prepare`)."""

    positions: torch.Tensor  # (T,) slots shared by every row, or (B, T) each row's own slots
    end: int  # keys are read from slots [0, end)
    mask: torch.Tensor | None  # (B|1, 1, T, end) bool, True = may attend; None: see is_causal
    is_causal: bool  # with mask None: True for a plain causal prefill, False when every key may be seen
    pad_mask: torch.Tensor | None = None  # (B, >= end) True on real tokens (left padding)
    cache: KVCache | None = None
    position_ids: torch.Tensor | None = None  # (B|1, T) positions in each row's own sequence
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, signed sin (B|1, 1, T, hd): see `rotate`
    whole_cache: bool = False  # end is the cache length, slots past each query masked (a compiled step)
    row_slots: torch.Tensor | None = None  # (B,) int64: a decode step without padding, row b at slot row_slots[b]

    def with_window(self, window: int) -> StepContext:
        """The same step for sliding-window layers: keys more than window - 1 slots behind a query are masked."""
        mask, is_causal = attention_mask(self.positions, self.end, self.pad_mask, window, not self.whole_cache)
        return dataclasses.replace(self, mask=mask, is_causal=is_causal)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection and grouped key/value heads.

    GPT-2 uses n_kv_heads == n_heads and biases; Llama uses fewer kv heads and rotary embeddings (`rotary`).
    """

    def __init__(
        self,
        emb_dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        qkv_bias: bool,
        out_bias: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.qkv = Linear(emb_dim, (n_heads + 2 * n_kv_heads) * head_dim, bias=qkv_bias)
        self.proj = Linear(n_heads * head_dim, emb_dim, bias=out_bias)
        self.dropout = dropout
        self.fused = True  # False: the written-out path

    def forward(self, x: torch.Tensor, ctx: StepContext, layer: int = 0) -> torch.Tensor:
        """x (B, T, emb) -> (B, T, emb); `layer` says which layer of the cache to write and read."""
        B, T, _ = x.shape
        nh, nkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)  # (B, T, (nh + 2 nkv) hd)
        if ctx.row_slots is not None and self.fused and not self.training:  # a decode step: one fused call?
            y = decode_attention(qkv, ctx, layer, nh, nkv)
            if y is not None:
                return self.proj(y.view(B, T, nh * hd))
        qk, v = qkv.split([(nh + nkv) * hd, nkv * hd], dim=-1)
        qk = qk.view(B, T, nh + nkv, hd).transpose(1, 2)  # (B, nh + nkv, T, hd)
        if ctx.rotary is not None:  # q and k rotated together: one set of elementwise ops per layer, not two
            qk = rotate(qk, *ctx.rotary)
        q, k = qk.split([nh, nkv], dim=1)  # (B, nh, T, hd), (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if ctx.cache is not None:
            k, v = ctx.cache.update(layer, ctx.positions, ctx.end, k, v)  # (B, nkv, end, hd)
        y = attend(self, q, k, v, ctx)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, nh hd)
        return self.proj(y)


_NO_TABLE = torch.empty(0)


def decode_attention(qkv: torch.Tensor, ctx: StepContext, layer: int, nh: int, nkv: int) -> torch.Tensor | None:
    """A decode step's attention (rotary, cache write, one query per row over its slots 0..its own) in one call
    of our C++ op (csrc/decode_ops.cpp), for qkv (B, 1, (nh + 2 nkv) hd) float32 on the CPU at inference;
    y (B, nh hd), or None when the op does not apply (the caller then runs the PyTorch path above)."""
    k_buf, v_buf = ctx.cache.layer(layer)  # (B, nkv, max_len, hd)
    ops = inference_ops(qkv)
    if (ops is None or k_buf.dtype != torch.float32 or v_buf.dtype != torch.float32 or not qkv.is_contiguous()
            or not k_buf.is_contiguous() or not v_buf.is_contiguous()):
        return None
    B, hd = qkv.shape[0], k_buf.shape[-1]
    cos, ssin = (t.reshape(-1, hd) for t in ctx.rotary) if ctx.rotary is not None else (_NO_TABLE, _NO_TABLE)
    return ops.decode_attention(qkv.view(B, -1), cos, ssin, k_buf, v_buf, ctx.row_slots, nh, nkv)


def attend(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The attention path of `layer` (its `fused` and `dropout` attributes) for q (B, nh, T, hd), k, v
    (B, nkv, S, hd): the one-query path for an inference decode step, else fused or written out."""
    if not layer.fused:
        return attention_manual(q, k, v, ctx.mask, ctx.is_causal, layer.dropout if layer.training else 0.0)
    if q.shape[2] == 1 and not layer.training:  # (is_causal with one query means one key: nothing to mask)
        return attention_one_query(q, k, v, ctx.mask)
    return attention_fused(q, k, v, ctx.mask, ctx.is_causal, layer.dropout if layer.training else 0.0)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, Hugging Face rotate-half convention. x (B, h, T, hd); cos, sin (B|1, 1, T, hd).

    The reference form; the models call `rotate` (the same values with two fewer ops)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` with the rotate-half sign folded into the table: signed_sin = [-sin | sin] by halves
    (`llama.RotaryEmbedding` keeps it), so rotate-half is a roll by hd/2. x (B, h, T, hd); tables (B|1, 1, T, hd)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
