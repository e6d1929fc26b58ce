"""GPT-2: token + position embeddings, pre-LayerNorm blocks, GELU feed-forward, tied output head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.attention import CausalSelfAttention, StepContext
from llmscratch.model.base import LanguageModel
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.quant_kernel import Linear


@dataclass
class GPTConfig:
    """Hyperparameters of a GPT-2 model."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    dropout: float = 0.0
    qkv_bias: bool = True
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    family: str = "gpt2"

    def __post_init__(self):
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads


GPT_PRESETS: dict[str, GPTConfig] = {
    "gpt2-124m": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-355m": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-774m": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-1558m": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # Small ones for tests and the demo.
    "gpt2-tiny": GPTConfig(vocab_size=512, context_length=64, emb_dim=32, n_layers=2, n_heads=4),
    "gpt2-small-demo": GPTConfig(vocab_size=2048, context_length=128, emb_dim=192, n_layers=4, n_heads=6),
}


class FeedForward(nn.Module):
    """Two linear layers with a tanh-GELU between, 4x expansion."""

    def __init__(self, emb_dim: int):
        super().__init__()
        self.fc = Linear(emb_dim, 4 * emb_dim)
        self.proj = Linear(4 * emb_dim, emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + ffn(ln(x)), dropout on both residuals."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.emb_dim, eps=c.layer_norm_eps)
        self.attn = CausalSelfAttention(
            c.emb_dim, c.n_heads, c.n_heads, c.head_dim, qkv_bias=c.qkv_bias, out_bias=True, dropout=c.dropout
        )
        self.norm2 = nn.LayerNorm(c.emb_dim, eps=c.layer_norm_eps)
        self.ffn = FeedForward(c.emb_dim)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, ctx: StepContext, layer: int) -> torch.Tensor:
        a = self.attn(self.norm1(x), ctx, layer)
        x = x + (self.drop(a) if self.training else a)  # dropout is the identity in eval: skip the call
        f = self.ffn(self.norm2(x))
        return x + (self.drop(f) if self.training else f)


class GPT(LanguageModel):
    """GPT-2 language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.emb_dim)
        self.pos_emb = nn.Embedding(c.context_length, c.emb_dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(GPTBlock(c) for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.emb_dim, eps=c.layer_norm_eps)
        self.head = Linear(c.emb_dim, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def hidden_states(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ctx = self._prepare(ids, cache, positions, pad_mask)
        x = self.tok_emb(ids) + self.pos_emb(ctx.position_ids)  # (B, T, emb)
        if self.training:
            x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, i)
        return self.final_norm(x)  # (B, T, emb)
