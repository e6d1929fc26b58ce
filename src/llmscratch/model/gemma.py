"""Gemma 3 (text): Llama's skeleton with Google's changes, each one small and named here.

- embeddings scaled by sqrt(width) (`GemmaEmbedding`);
- RMSNorm with a (1 + weight) scale, weights stored as offsets from 1 (`GemmaRMSNorm`);
- "sandwich" norms: a norm before and after both the attention and the MLP (`GemmaBlock`);
- RMSNorm on every query and key head, grouped-query attention, a query scale from the config
  (`GemmaAttention`);
- a GeGLU MLP: down(gelu_tanh(gate(x)) * up(x)) (`GeGLU`);
- sliding-window attention in most layers, global attention in every `sliding_window_pattern`-th layer, each
  kind with its own RoPE base (`StepContext.with_window`, `GemmaConfig.is_global`);
- a tied output head, with tanh soft-capping of the logits when the config has it (`SoftCappedHead`).

The KV cache and the generation loop are the ones every family uses: local layers keep every slot and read
them through the window mask, so a cached step sees exactly what an uncached forward sees.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.attention import StepContext, attend, rotate
from llmscratch.model.base import LanguageModel
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.llama import RotaryEmbedding
from llmscratch.model.quant_kernel import Linear, inference_ops


@dataclass
class GemmaConfig:
    """Hyperparameters of a Gemma 3 text model. Defaults are the architecture's fixed values (transformers'
    Gemma3TextConfig, llama.cpp) that a GGUF file does not store: the local RoPE base, the layer pattern and
    the query scale."""

    vocab_size: int = 262144
    context_length: int = 32768
    emb_dim: int = 640
    n_layers: int = 18
    n_heads: int = 4
    n_kv_heads: int = 1
    head_dim: int = 256
    hidden_dim: int = 2048  # GeGLU width
    query_pre_attn_scalar: int = 256  # attention scores are scaled by query_pre_attn_scalar ** -0.5
    sliding_window: int = 512  # a local layer's query sees itself and the window - 1 slots before it
    sliding_window_pattern: int = 6  # layers 6, 12, ... (1-based) are global, the others local
    rope_theta: float = 1_000_000.0  # global layers
    rope_local_theta: float = 10_000.0  # local (sliding-window) layers
    rms_norm_eps: float = 1e-6
    final_logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    tie_embeddings: bool = True
    dropout: float = 0.0
    family: str = "gemma3"

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.sliding_window < 1 or self.sliding_window_pattern < 1:
            raise ValueError("sliding_window and sliding_window_pattern must be >= 1")
        if not self.tie_embeddings:
            raise ValueError("Gemma ties its output head to the embeddings (tie_embeddings=True)")

    def is_global(self, layer: int) -> bool:
        """Whether block `layer` (0-based) attends to every earlier slot rather than a sliding window."""
        return (layer + 1) % self.sliding_window_pattern == 0

    @property
    def n_global_layers(self) -> int:
        return sum(self.is_global(i) for i in range(self.n_layers))


GEMMA_PRESETS: dict[str, GemmaConfig] = {
    # google/gemma-3-270m: values of its config.json / GGUF metadata.
    "gemma3-270m": GemmaConfig(),
    # Small one for tests: 3 local layers then 1 global, a window of 8 slots.
    "gemma3-tiny": GemmaConfig(
        vocab_size=512, context_length=64, emb_dim=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16,
        hidden_dim=64, query_pre_attn_scalar=16, sliding_window=8, sliding_window_pattern=4,
    ),
}


class GemmaRMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * (1 + weight), in float32, cast back after the scale (as Gemma does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The norm written out (what the fused call is tested against)."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).type_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # one fused call (equal to the written-out form: tests)
            if (ops := inference_ops(x)) is not None:  # inference on the CPU: ours, one call
                return ops.rms_norm(x.contiguous(), self.weight, self.eps, True)
            return F.rms_norm(x, self.weight.shape, 1.0 + self.weight, self.eps)
        return self.reference_forward(x)


class GemmaEmbedding(nn.Embedding):
    """A token embedding multiplied by sqrt(width) (the factor rounded to the table's dtype first)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(math.sqrt(self.embedding_dim), dtype=self.weight.dtype)
        return super().forward(ids) * scale.to(self.weight.device)


class SoftCappedHead(Linear):
    """The output projection followed by cap * tanh(logits / cap)."""

    def __init__(self, in_features: int, out_features: int, cap: float):
        super().__init__(in_features, out_features, bias=False)
        self.cap = cap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x) / self.cap) * self.cap


class GeGLU(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)), no biases; gate and up are one Linear `gate_up` (rows [gate | up])."""

    def __init__(self, emb_dim: int, hidden_dim: int):
        super().__init__()
        self.gate_up = Linear(emb_dim, 2 * hidden_dim, bias=False)
        self.down = Linear(hidden_dim, emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # 2 x (B, T, hidden)
        return self.down(F.gelu(gate, approximate="tanh") * up)


class GemmaAttention(nn.Module):
    """Grouped-query attention with RMSNorm on each query and key head before the rotary embedding."""

    def __init__(self, c: GemmaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.qkv = Linear(c.emb_dim, (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, bias=False)
        self.proj = Linear(c.n_heads * c.head_dim, c.emb_dim, bias=False)
        self.q_norm = GemmaRMSNorm(c.head_dim, c.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(c.head_dim, c.rms_norm_eps)
        # Attention divides scores by sqrt(head_dim); queries are rescaled so that it is sqrt(query_pre_attn_scalar).
        self.q_scale = math.sqrt(c.head_dim / c.query_pre_attn_scalar)
        self.dropout = c.dropout
        self.fused = True  # False: the written-out path

    def forward(self, x: torch.Tensor, ctx: StepContext, layer: int) -> torch.Tensor:
        """x (B, T, emb) -> (B, T, emb); `layer` says which layer of the cache to write and read."""
        B, T, _ = x.shape
        nh, nkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = self.q_norm(q.view(B, T, nh, hd)).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_norm(k.view(B, T, nkv, hd)).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = rotate(q, *ctx.rotary), rotate(k, *ctx.rotary)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        if ctx.cache is not None:
            k, v = ctx.cache.update(layer, ctx.positions, ctx.end, k, v)  # (B, nkv, end, hd)
        y = attend(self, q, k, v, ctx)  # (B, nh, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, nh * hd))  # (B, T, emb)


class GemmaBlock(nn.Module):
    """Sandwich-norm block: x + post_attn_norm(attn(norm1(x))), then x + post_ffn_norm(ffn(norm2(x)))."""

    def __init__(self, c: GemmaConfig):
        super().__init__()
        self.norm1 = GemmaRMSNorm(c.emb_dim, c.rms_norm_eps)
        self.attn = GemmaAttention(c)
        self.post_attn_norm = GemmaRMSNorm(c.emb_dim, c.rms_norm_eps)
        self.norm2 = GemmaRMSNorm(c.emb_dim, c.rms_norm_eps)
        self.ffn = GeGLU(c.emb_dim, c.hidden_dim)
        self.post_ffn_norm = GemmaRMSNorm(c.emb_dim, c.rms_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, ctx: StepContext, layer: int) -> torch.Tensor:
        a = self.post_attn_norm(self.attn(self.norm1(x), ctx, layer))
        x = x + (self.drop(a) if self.training else a)  # dropout is the identity in eval: skip the call
        f = self.post_ffn_norm(self.ffn(self.norm2(x)))
        return x + (self.drop(f) if self.training else f)


class Gemma(LanguageModel):
    """Gemma 3 text language model."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = c = config
        # An uninitialised table (filled by _init_weights): on the meta device, normal_ would cost seconds.
        self.tok_emb = GemmaEmbedding(c.vocab_size, c.emb_dim, _weight=torch.empty(c.vocab_size, c.emb_dim))
        self.rope_global = RotaryEmbedding(c.head_dim, c.context_length, c.rope_theta)
        self.rope_local = RotaryEmbedding(c.head_dim, c.context_length, c.rope_local_theta)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(GemmaBlock(c) for _ in range(c.n_layers))
        self.final_norm = GemmaRMSNorm(c.emb_dim, c.rms_norm_eps)
        if c.final_logit_softcap is None:
            self.head = Linear(c.emb_dim, c.vocab_size, bias=False)
        else:
            self.head = SoftCappedHead(c.emb_dim, c.vocab_size, c.final_logit_softcap)
        self.apply(self._init_weights)
        self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)) and not m.weight.is_meta:  # meta: built to be loaded into
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def hidden_states(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config
        ctx = self._prepare(ids, cache, positions, pad_mask)
        x = self.tok_emb(ids)  # (B, T, emb)
        if self.training:  # dropout is the identity in eval: skip the call
            x = self.drop(x)
        global_ctx = dataclasses.replace(ctx, rotary=self.rope_global(ctx.position_ids, x.dtype))  # 2 x (B|1, 1, T, hd)
        local_ctx = dataclasses.replace(
            ctx.with_window(c.sliding_window), rotary=self.rope_local(ctx.position_ids, x.dtype)
        )
        for i, block in enumerate(self.blocks):
            x = block(x, global_ctx if c.is_global(i) else local_ctx, i)
        return self.final_norm(x)  # (B, T, emb)
