"""Hugging Face Gemma 3 text checkpoints (Gemma3ForCausalLM, model_type "gemma3_text") <-> our Gemma.

Names on the Hugging Face side, per layer i (`model.layers.{i}.`): input_layernorm, self_attn.{q,k,v,o}_proj,
self_attn.{q,k}_norm, post_attention_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm,
mlp.{gate,up,down}_proj; plus model.embed_tokens and model.norm (the head is tied). Our side: tok_emb,
blocks.{i}.norm1, .attn.qkv (rows [q | k | v]), .attn.{q,k}_norm, .attn.proj, .post_attn_norm, .norm2,
.ffn.gate_up (rows [gate | up]), .ffn.down, .post_ffn_norm, final_norm, head. Norm weights mean the same on both
sides (scale 1 + w).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from llmscratch.model.gemma import GemmaConfig
from llmscratch.utils import UserError
from llmscratch.weights.shapes import check_tensors as shapes_check

# Per-layer tensors that map one to one: our suffix -> Hugging Face suffix.
_LAYER_MAP = {
    "norm1.weight": "input_layernorm.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "post_attn_norm.weight": "post_attention_layernorm.weight",
    "norm2.weight": "pre_feedforward_layernorm.weight",
    "ffn.down.weight": "mlp.down_proj.weight",
    "post_ffn_norm.weight": "post_feedforward_layernorm.weight",
}
_QKV = ("q_proj", "k_proj", "v_proj")
_GATE_UP = ("gate_proj", "up_proj")  # rows of our ffn.gate_up, in this order
GLOBAL, LOCAL = "full_attention", "sliding_attention"


def _pattern(hf: dict, n_layers: int) -> int:
    """The sliding-window pattern (every n-th layer global) of `layer_types`, or of the older integer key."""
    types = hf.get("layer_types")
    if not types:
        return int(hf.get("sliding_window_pattern", 6))
    if GLOBAL not in types:
        raise UserError("Gemma config: layer_types has no full_attention layer; not supported")
    pattern = types.index(GLOBAL) + 1
    if list(types) != [GLOBAL if (i + 1) % pattern == 0 else LOCAL for i in range(n_layers)]:
        raise UserError("Gemma config: layer_types does not repeat one local/global pattern; not supported")
    return pattern


def _rope_bases(hf: dict) -> tuple[float, float]:
    """(global, local) RoPE bases; refuses rotary scaling we do not implement."""
    params = hf.get("rope_parameters") or {}
    full, sliding = params.get(GLOBAL) or {}, params.get(LOCAL) or {}
    for p in (full, sliding, hf.get("rope_scaling") or {}):
        kind = p.get("rope_type") or p.get("type") or "default"
        if kind != "default":
            raise UserError(f"rotary scaling {kind!r} is not supported (only plain RoPE)")
    theta = full.get("rope_theta") or hf.get("rope_theta") or 1_000_000.0
    local = sliding.get("rope_theta") or hf.get("rope_local_base_freq") or 10_000.0
    return float(theta), float(local)


def config_from_hf(hf: dict) -> GemmaConfig:
    """Our config from a Hugging Face Gemma 3 text config.json dict; UserError for what we do not implement."""
    if hf.get("model_type") != "gemma3_text":
        raise UserError(f"not a Gemma 3 text config (model_type {hf.get('model_type')!r})")
    for flag in ("attention_bias", "attn_logit_softcapping", "use_bidirectional_attention"):
        if hf.get(flag):
            raise UserError(f"Gemma checkpoints with {flag} set are not supported")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise UserError(f"Gemma activation {hf['hidden_activation']!r} is not supported (only gelu_pytorch_tanh)")
    theta, local = _rope_bases(hf)
    try:
        n_layers = int(hf["num_hidden_layers"])
        return GemmaConfig(
            vocab_size=int(hf["vocab_size"]),
            context_length=int(hf.get("max_position_embeddings", 32768)),
            emb_dim=int(hf["hidden_size"]),
            n_layers=n_layers,
            n_heads=int(hf["num_attention_heads"]),
            n_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            head_dim=int(hf.get("head_dim", 256)),
            hidden_dim=int(hf["intermediate_size"]),
            query_pre_attn_scalar=int(hf.get("query_pre_attn_scalar", 256)),
            sliding_window=int(hf.get("sliding_window") or 4096),
            sliding_window_pattern=_pattern(hf, n_layers),
            rope_theta=theta,
            rope_local_theta=local,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            final_logit_softcap=hf.get("final_logit_softcapping"),
        )
    except KeyError as e:
        raise UserError(f"Gemma config.json lacks {e.args[0]!r}") from None
    except ValueError as e:
        raise UserError(f"bad Gemma config.json: {e}") from None


def config_to_hf(c: GemmaConfig) -> dict:
    """A Hugging Face Gemma3ForCausalLM config.json dict for our config."""
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.context_length,
        "hidden_size": c.emb_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.hidden_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": c.query_pre_attn_scalar,
        "sliding_window": c.sliding_window,
        "layer_types": [GLOBAL if c.is_global(i) else LOCAL for i in range(c.n_layers)],
        "rope_parameters": {
            GLOBAL: {"rope_type": "default", "rope_theta": c.rope_theta},
            LOCAL: {"rope_type": "default", "rope_theta": c.rope_local_theta},
        },
        "rms_norm_eps": c.rms_norm_eps,
        "final_logit_softcapping": c.final_logit_softcap,
        "attn_logit_softcapping": None,
        "attention_bias": False,
        "tie_word_embeddings": True,
        # transformers' defaults (bos 2, eos 1) would stop its generate() at token 1; the tokenizer sets them on export
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": "float32",
    }


def expected_shapes(c: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face Gemma 3 text checkpoint with this config, name -> shape."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.emb_dim)}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            shapes[f"{p}{name}.weight"] = (c.emb_dim,)
        shapes[p + "self_attn.q_proj.weight"] = (q, c.emb_dim)
        shapes[p + "self_attn.k_proj.weight"] = (kv, c.emb_dim)
        shapes[p + "self_attn.v_proj.weight"] = (kv, c.emb_dim)
        shapes[p + "self_attn.o_proj.weight"] = (c.emb_dim, q)
        shapes[p + "self_attn.q_norm.weight"] = (c.head_dim,)
        shapes[p + "self_attn.k_norm.weight"] = (c.head_dim,)
        shapes[p + "mlp.gate_proj.weight"] = (c.hidden_dim, c.emb_dim)
        shapes[p + "mlp.up_proj.weight"] = (c.hidden_dim, c.emb_dim)
        shapes[p + "mlp.down_proj.weight"] = (c.emb_dim, c.hidden_dim)
    shapes["model.norm.weight"] = (c.emb_dim,)
    return shapes


def state_dict_from_hf(tensors: Mapping[str, torch.Tensor], c: GemmaConfig, source: str = "checkpoint") -> dict:
    """Our Gemma state dict from Hugging Face tensors (q, k, v rows concatenated into attn.qkv, gate and
    up rows into ffn.gate_up)."""
    shapes = expected_shapes(c)
    tied_copy = {"lm_head.weight": shapes["model.embed_tokens.weight"]}
    shapes_check(tensors, shapes, source, "Gemma 3", may_add=tied_copy)
    sd = {"tok_emb.weight": tensors["model.embed_tokens.weight"], "final_norm.weight": tensors["model.norm.weight"]}
    for i in range(c.n_layers):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        for mine, theirs in _LAYER_MAP.items():
            sd[ours + mine] = tensors[hf + theirs]
        sd[ours + "attn.qkv.weight"] = torch.cat([tensors[f"{hf}self_attn.{n}.weight"] for n in _QKV], dim=0)
        sd[ours + "ffn.gate_up.weight"] = torch.cat([tensors[f"{hf}mlp.{n}.weight"] for n in _GATE_UP], dim=0)
    sd["head.weight"] = sd["tok_emb.weight"]
    return sd


def state_dict_to_hf(model) -> dict[str, torch.Tensor]:
    """Hugging Face tensors (contiguous, no shared storage) for our Gemma."""
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
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
