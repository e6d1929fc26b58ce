"""Hugging Face Llama checkpoints (LlamaForCausalLM: Llama 2/3 layout, SmolLM2) <-> our Llama.

Names on the Hugging Face side, per layer i (`model.layers.{i}.`): input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj; plus model.embed_tokens, model.norm and lm_head (absent when
tied). Our side: tok_emb, blocks.{i}.norm1, .attn.qkv (rows [q | k | v]), .attn.proj, .norm2, .ffn.gate_up (rows
[gate | up]), .ffn.down, final_norm, head. Both use the rotate-half rotary layout, so no row permutation is needed
here (GGUF needs one).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from llmscratch.model.llama import Llama, LlamaConfig
from llmscratch.utils import UserError
from llmscratch.weights.shapes import check_tensors as shapes_check

# Per-layer tensors that map one to one: our suffix -> Hugging Face suffix.
_LAYER_MAP = {
    "norm1.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "ffn.down.weight": "mlp.down_proj.weight",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_GATE_UP = ("gate_proj", "up_proj")  # rows of our ffn.gate_up, in this order
# Tensors some checkpoints carry that hold nothing we need (older exports saved the rotary frequencies).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _rope_theta(hf: dict) -> float:
    """The rotary base of a Hugging Face config; refuses rotary scaling we do not implement."""
    params = hf.get("rope_parameters") or {}  # transformers >= 5
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UserError(f"rotary scaling {rope_type!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)


def config_from_hf(hf: dict) -> LlamaConfig:
    """Our config from a Hugging Face Llama config.json dict; UserError for features we do not implement."""
    if hf.get("model_type") != "llama":
        raise UserError(f"not a Llama config (model_type {hf.get('model_type')!r})")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise UserError(f"Llama checkpoints with {flag}=true are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"Llama activation {hf['hidden_act']!r} is not supported (only silu)")
    try:
        return LlamaConfig(
            vocab_size=int(hf["vocab_size"]),
            context_length=int(hf.get("max_position_embeddings", 2048)),
            emb_dim=int(hf["hidden_size"]),
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=int(hf["num_attention_heads"]),
            n_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            hidden_dim=int(hf["intermediate_size"]),
            rope_theta=_rope_theta(hf),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            head_dim=hf.get("head_dim"),
        )
    except KeyError as e:
        raise UserError(f"Llama config.json lacks {e.args[0]!r}") from None
    except ValueError as e:
        raise UserError(f"bad Llama config.json: {e}") from None


def config_to_hf(c: LlamaConfig) -> dict:
    """A Hugging Face LlamaForCausalLM config.json dict for our config."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.context_length,
        "hidden_size": c.emb_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.hidden_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
        "torch_dtype": "float32",
    }


def expected_shapes(c: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face Llama checkpoint with this config, name -> shape."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.emb_dim)}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (c.emb_dim,)
        shapes[p + "self_attn.q_proj.weight"] = (q, c.emb_dim)
        shapes[p + "self_attn.k_proj.weight"] = (kv, c.emb_dim)
        shapes[p + "self_attn.v_proj.weight"] = (kv, c.emb_dim)
        shapes[p + "self_attn.o_proj.weight"] = (c.emb_dim, q)
        shapes[p + "post_attention_layernorm.weight"] = (c.emb_dim,)
        shapes[p + "mlp.gate_proj.weight"] = (c.hidden_dim, c.emb_dim)
        shapes[p + "mlp.up_proj.weight"] = (c.hidden_dim, c.emb_dim)
        shapes[p + "mlp.down_proj.weight"] = (c.emb_dim, c.hidden_dim)
    shapes["model.norm.weight"] = (c.emb_dim,)
    if not c.tie_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.emb_dim)
    return shapes


def check_tensors(tensors: Mapping[str, torch.Tensor], c: LlamaConfig, source: str = "checkpoint") -> None:
    """Raise UserError naming the first missing, misshapen or unexpected tensor."""
    shapes = expected_shapes(c)
    tied_copy = {"lm_head.weight": shapes["model.embed_tokens.weight"]} if c.tie_embeddings else None
    shapes_check(tensors, shapes, source, "Llama", may_add=tied_copy, ignored_suffixes=_IGNORED_SUFFIXES)


def state_dict_from_hf(tensors: Mapping[str, torch.Tensor], c: LlamaConfig, source: str = "checkpoint") -> dict:
    """Our Llama state dict from Hugging Face tensors (q, k, v rows concatenated into attn.qkv, gate and
    up rows into ffn.gate_up)."""
    check_tensors(tensors, c, source)
    sd = {"tok_emb.weight": tensors["model.embed_tokens.weight"], "final_norm.weight": tensors["model.norm.weight"]}
    for i in range(c.n_layers):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        for mine, theirs in _LAYER_MAP.items():
            sd[ours + mine] = tensors[hf + theirs]
        sd[ours + "attn.qkv.weight"] = torch.cat([tensors[f"{hf}self_attn.{n}.weight"] for n in _QKV], dim=0)
        sd[ours + "ffn.gate_up.weight"] = torch.cat([tensors[f"{hf}mlp.{n}.weight"] for n in _GATE_UP], dim=0)
    sd["head.weight"] = sd["tok_emb.weight"] if c.tie_embeddings else tensors["lm_head.weight"]
    return sd


def state_dict_to_hf(model: Llama) -> dict[str, torch.Tensor]:
    """Hugging Face tensors (contiguous, no shared storage) for our Llama."""
    c, sd = model.config, model.state_dict()
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["final_norm.weight"]}
    for i in range(c.n_layers):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        for mine, theirs in _LAYER_MAP.items():
            out[hf + theirs] = sd[ours + mine]
        for n, w in zip(_QKV, sd[ours + "attn.qkv.weight"].split([q, kv, kv], dim=0)):
            out[f"{hf}self_attn.{n}.weight"] = w
        for n, w in zip(_GATE_UP, sd[ours + "ffn.gate_up.weight"].chunk(2, dim=0)):
            out[f"{hf}mlp.{n}.weight"] = w
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}

