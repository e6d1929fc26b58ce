"""Llama: RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU feed-forward, no biases.

The same `CausalSelfAttention` and `KVCache` as GPT-2; what differs is the norm, the feed-forward and that
positions enter through rotary embeddings on q and k instead of a learned position table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from llmscratch.model.attention import CausalSelfAttention, StepContext
from llmscratch.model.base import LanguageModel, tree_version
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.quant_kernel import Linear, inference_ops, kernel_args


@dataclass
class LlamaConfig:
    """Hyperparameters of a Llama-family model (Llama 2/3 layout, SmolLM2). head_dim defaults to emb_dim / n_heads."""

    vocab_size: int = 32000
    context_length: int = 2048
    emb_dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    hidden_dim: int = 11008  # feed-forward width
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    head_dim: int | None = None
    dropout: float = 0.0
    family: str = "llama"

    def __post_init__(self):
        if self.head_dim is None:
            if self.emb_dim % self.n_heads:
                raise ValueError(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
            self.head_dim = self.emb_dim // self.n_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    # SmolLM2 (HuggingFaceTB): values of its config.json / GGUF metadata.
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, context_length=8192, emb_dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
        hidden_dim=1536, rope_theta=100000.0, rms_norm_eps=1e-5, tie_embeddings=True,
    ),
    "smollm2-360m": LlamaConfig(
        vocab_size=49152, context_length=8192, emb_dim=960, n_layers=32, n_heads=15, n_kv_heads=5,
        hidden_dim=2560, rope_theta=100000.0, rms_norm_eps=1e-5, tie_embeddings=True,
    ),
    # Small one for tests.
    "llama-tiny": LlamaConfig(
        vocab_size=512, context_length=64, emb_dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
        hidden_dim=64, rope_theta=10000.0, tie_embeddings=True,
    ),
}


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back (as Llama does)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The norm written out (what the fused call is tested against)."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # one fused call instead of six (equal: a test checks)
            if (ops := inference_ops(x)) is not None:  # inference on the CPU: ours, one call (torch's is six ops)
                return ops.rms_norm(x.contiguous(), self.weight, self.eps, False)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.reference_forward(x)


def rotary_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angle p * theta^(-2i/head_dim) for p < length, each (length, head_dim), float32.

    The two halves of the last axis repeat the same frequencies (rotate-half layout).
    """
    # Computed on the CPU even inside a meta-device context (the tables are not weights to load).
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.int64, device="cpu").float(), inv_freq)  # (length, hd/2)
    angles = torch.cat((angles, angles), dim=-1)  # (length, hd)
    return angles.cos(), angles.sin()


class RotaryEmbedding(nn.Module):
    """Precomputed cos and signed sin tables (`signed_sin`) for every position of the context, looked up by
    position id.

    The tables stay float32 whatever dtype the model is moved to (only the device follows the model); the
    looked-up rows are cast to the activations' dtype.
    """

    def __init__(self, head_dim: int, context_length: int, theta: float):
        super().__init__()
        self.head_dim, self.context_length, self.theta = head_dim, context_length, theta
        cos, sin = rotary_tables(head_dim, context_length, theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("signed_sin", signed_sin(sin), persistent=False)

    def reset_tables(self) -> None:
        """Recompute the tables in float32 on the current device."""
        cos, sin = rotary_tables(self.head_dim, self.context_length, self.theta)
        self.cos, self.signed_sin = cos.to(self.cos.device), signed_sin(sin).to(self.signed_sin.device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:  # a dtype cast: rebuild in float32 on the new device
            self.reset_tables()
        return self

    def forward(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see `rotate`) for position ids pos (B|1, T), each (B|1, 1, T, head_dim) in `dtype`."""
        return self.cos[pos][:, None].to(dtype), self.signed_sin[pos][:, None].to(dtype)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """The sin table with its first half negated: the sign of rotate-half folded in (see `attention.rotate`)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases. gate and up are one Linear `gate_up` (rows [gate | up]): one
    matrix product per step instead of two (checkpoints that store them apart are concatenated at load)."""

    def __init__(self, emb_dim: int, hidden_dim: int):
        super().__init__()
        self.gate_up = Linear(emb_dim, 2 * hidden_dim, bias=False)
        self.down = Linear(hidden_dim, emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)  # (B, T, 2 hidden)
        if (ops := inference_ops(gate_up)) is not None:  # inference on the CPU: one call instead of three
            return self.down(ops.silu_mul(gate_up.contiguous()))
        gate, up = gate_up.chunk(2, dim=-1)  # 2 x (B, T, hidden)
        return self.down(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.norm1 = RMSNorm(c.emb_dim, c.rms_norm_eps)
        self.attn = CausalSelfAttention(
            c.emb_dim, c.n_heads, c.n_kv_heads, c.head_dim, qkv_bias=False, out_bias=False, dropout=c.dropout
        )
        self.norm2 = RMSNorm(c.emb_dim, c.rms_norm_eps)
        self.ffn = SwiGLU(c.emb_dim, c.hidden_dim)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, ctx: StepContext, layer: int) -> torch.Tensor:
        a = self.attn(self.norm1(x), ctx, layer)
        x = x + (self.drop(a) if self.training else a)  # dropout is the identity in eval: skip the call
        f = self.ffn(self.norm2(x))
        return x + (self.drop(f) if self.training else f)


class Llama(LanguageModel):
    """Llama-family language model (also SmolLM2)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = config
        # An uninitialised table (filled by _init_weights): on the meta device, normal_ would cost seconds.
        self.tok_emb = nn.Embedding(c.vocab_size, c.emb_dim, _weight=torch.empty(c.vocab_size, c.emb_dim))
        self.rope = RotaryEmbedding(c.head_dim, c.context_length, c.rope_theta)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layers))
        self.final_norm = RMSNorm(c.emb_dim, c.rms_norm_eps)
        self.head = Linear(c.emb_dim, c.vocab_size, bias=False)
        self.apply(self._init_weights)
        if c.tie_embeddings:
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
        ctx = self._prepare(ids, cache, positions, pad_mask)
        x = self.tok_emb(ids)  # (B, T, emb)
        if self.training:  # dropout is the identity in eval: skip the call
            x = self.drop(x)
        ctx.rotary = self.rope(ctx.position_ids, x.dtype)  # cos, signed sin: 2 x (B|1, 1, T, hd)
        if (y := self._decode_layers(x, ctx)) is not None:
            return self.final_norm(y)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, i)
        return self.final_norm(x)  # (B, T, emb)

    def _decode_layers(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
        """A decode step's blocks in one call of our C++ (csrc/decode_layers.cpp: the same ops in the same order
        as the blocks' own decode path, equal to the bit), so no Python runs per layer: (B, 1, emb). None where
        it does not apply: no kernel, training, gradients, a prefill, another dtype or device, a block whose
        parts were replaced (LoRA) or hooked, a Linear our kernel does not take."""
        ops = inference_ops(x)
        if ops is None or ctx.row_slots is None or ctx.rotary is None or x.shape[1] != 1 or self.training:
            return None
        if _global_forward_hooks or _global_forward_pre_hooks:
            return None
        plan = self._decode_plan()
        if plan is None:
            return None
        layers, hooks = plan
        if any(hooks):  # a hook registered since the plan was built: the blocks' own path runs it
            return None
        kv = [t for i in range(len(layers)) for t in ctx.cache.layer(i)]  # per layer (B, nkv, max_len, hd) k, v
        if any(t.dtype != torch.float32 or not t.is_contiguous() for t in kv):
            return None
        c, B = self.config, x.shape[0]
        cos, ssin = (t.reshape(-1, c.head_dim) for t in ctx.rotary)  # (B|1, hd)
        y = ops.llama_layers(x.reshape(B, c.emb_dim), layers, kv, cos, ssin, ctx.row_slots, self.blocks[0].norm1.eps,
                             c.n_heads, c.n_kv_heads)
        return y.view(B, 1, c.emb_dim)

    def _decode_plan(self) -> tuple[list, list] | None:
        """(each block's arguments for csrc/decode_layers.cpp, the hook dicts of the modules it skips), or None
        where a block is not the plain Llama block our C++ runs. Kept until a parameter, buffer or submodule of
        any module is replaced (`tree_version`) or the model is converted (`_apply`): building it took about
        1 ms of a 6 ms step."""
        cached = self.__dict__.get("_plan")
        if cached is not None and cached[0] == tree_version():
            return cached[1]
        layers, hooks = [], []
        for b in self.blocks:
            attn, ffn = b.attn, b.ffn
            if (type(b) is not LlamaBlock or type(b.norm1) is not RMSNorm or type(b.norm2) is not RMSNorm
                    or type(attn) is not CausalSelfAttention or type(ffn) is not SwiGLU or not attn.fused):
                break
            mats = (attn.qkv, attn.proj, ffn.gate_up, ffn.down)
            linears = [kernel_args(m) for m in mats]
            if None in linears:
                break
            layers.append((b.norm1.weight, linears[0], linears[1], b.norm2.weight, linears[2], linears[3]))
            hooks += [d for m in (b, b.norm1, attn, b.norm2, ffn, *mats) for d in (m._forward_hooks,
                                                                                 m._forward_pre_hooks)]
        plan = (layers, hooks) if len(layers) == len(self.blocks) else None
        self.__dict__["_plan"] = (tree_version(), plan)
        return plan

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_plan", None)  # .to(), .half(), ...: the plan's tensors may change
        return super()._apply(fn, recurse)

