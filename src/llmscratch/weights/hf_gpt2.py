"""Hugging Face GPT-2 checkpoints (GPT2LMHeadModel) <-> our GPT.

Hugging Face names, per layer i (`h.{i}.`, with or without a leading `transformer.`): ln_1, attn.c_attn (q, k and
v fused, columns [q | k | v]), attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj; plus wte, wpe, ln_f and lm_head (absent
when tied). GPT-2 computes its projections with `Conv1D`, whose weight is stored (in, out): the transpose of a
torch Linear's (out, in). So the four projection weights of each layer are transposed both ways (the list
`TRANSPOSED`, as in nanoGPT's from_pretrained); biases and everything else map as they are. The fused qkv
matrix keeps its order: after the transpose its rows are [q | k | v], which is our `attn.qkv` layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from llmscratch.model.gpt import GPT, GPTConfig
from llmscratch.utils import UserError
from llmscratch.weights.shapes import check_tensors as shapes_check

# Our per-layer suffix -> Hugging Face suffix.
_LAYER_MAP = {
    "norm1.weight": "ln_1.weight",
    "norm1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.c_attn.weight",
    "attn.qkv.bias": "attn.c_attn.bias",
    "attn.proj.weight": "attn.c_proj.weight",
    "attn.proj.bias": "attn.c_proj.bias",
    "norm2.weight": "ln_2.weight",
    "norm2.bias": "ln_2.bias",
    "ffn.fc.weight": "mlp.c_fc.weight",
    "ffn.fc.bias": "mlp.c_fc.bias",
    "ffn.proj.weight": "mlp.c_proj.weight",
    "ffn.proj.bias": "mlp.c_proj.bias",
}
_TOP_MAP = {
    "tok_emb.weight": "wte.weight",
    "pos_emb.weight": "wpe.weight",
    "final_norm.weight": "ln_f.weight",
    "final_norm.bias": "ln_f.bias",
}
# Conv1D weights, stored (in, out) by Hugging Face: transposed on the way in and out.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers older checkpoints carry (the causal mask and its fill value): nothing to load.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: dict) -> GPTConfig:
    """Our config from a Hugging Face GPT-2 config.json dict; UserError for features we do not implement."""
    if hf.get("model_type") != "gpt2":
        raise UserError(f"not a GPT-2 config (model_type {hf.get('model_type')!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise UserError(f"GPT-2 activation {act!r} is not supported (only the tanh GELU, 'gelu_new')")
    for flag, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                         ("add_cross_attention", False)):
        if bool(hf.get(flag, wanted)) != wanted:
            raise UserError(f"GPT-2 checkpoints with {flag}={not wanted} are not supported")
    try:
        emb = int(hf["n_embd"])
        if hf.get("n_inner") not in (None, 4 * emb):
            raise UserError(f"GPT-2 n_inner={hf['n_inner']} is not supported (only 4 * n_embd = {4 * emb})")
        return GPTConfig(
            vocab_size=int(hf["vocab_size"]),
            context_length=int(hf.get("n_positions") or hf["n_ctx"]),
            emb_dim=emb,
            n_heads=int(hf["n_head"]),
            n_layers=int(hf["n_layer"]),
            dropout=0.0,
            qkv_bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        )
    except KeyError as e:
        raise UserError(f"GPT-2 config.json lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"bad GPT-2 config.json: {e}") from None


def config_to_hf(c: GPTConfig) -> dict:
    """A Hugging Face GPT2LMHeadModel config.json dict for our config."""
    eos = 50256 if c.vocab_size == 50257 else None  # GPT-2's <|endoftext|>
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.context_length,
        "n_ctx": c.context_length,
        "n_embd": c.emb_dim,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "use_cache": True,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


def expected_shapes(c: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Hugging Face GPT-2 checkpoint with this config (names without `transformer.`)."""
    E, V = c.emb_dim, c.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, E), "wpe.weight": (c.context_length, E)}
    for i in range(c.n_layers):
        p = f"h.{i}."
        shapes |= {p + "ln_1.weight": (E,), p + "ln_1.bias": (E,)}
        shapes |= {p + "attn.c_attn.weight": (E, 3 * E), p + "attn.c_attn.bias": (3 * E,)}
        shapes |= {p + "attn.c_proj.weight": (E, E), p + "attn.c_proj.bias": (E,)}
        shapes |= {p + "ln_2.weight": (E,), p + "ln_2.bias": (E,)}
        shapes |= {p + "mlp.c_fc.weight": (E, 4 * E), p + "mlp.c_fc.bias": (4 * E,)}
        shapes |= {p + "mlp.c_proj.weight": (4 * E, E), p + "mlp.c_proj.bias": (E,)}
    shapes |= {"ln_f.weight": (E,), "ln_f.bias": (E,)}
    if not c.tie_embeddings:
        shapes["lm_head.weight"] = (V, E)
    return shapes


def _strip_prefix(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names without the `transformer.` of GPT2LMHeadModel (GPT2Model checkpoints have none)."""
    return {n.removeprefix("transformer."): t for n, t in tensors.items()}


def check_tensors(tensors: Mapping[str, torch.Tensor], c: GPTConfig, source: str = "checkpoint") -> None:
    """Raise UserError naming the first missing, misshapen or unexpected tensor (names already stripped)."""
    shapes = expected_shapes(c)
    tied_copy = {"lm_head.weight": shapes["wte.weight"]} if c.tie_embeddings else None  # may be stored anyway
    shapes_check(tensors, shapes, source, "GPT-2", may_add=tied_copy, ignored_suffixes=_IGNORED_SUFFIXES)


def state_dict_from_hf(tensors: Mapping[str, torch.Tensor], c: GPTConfig, source: str = "checkpoint") -> dict:
    """Our GPT state dict from Hugging Face GPT-2 tensors (Conv1D weights transposed)."""
    tensors = _strip_prefix(tensors)
    check_tensors(tensors, c, source)
    sd = {ours: tensors[theirs] for ours, theirs in _TOP_MAP.items()}
    for i in range(c.n_layers):
        for ours, theirs in _LAYER_MAP.items():
            t = tensors[f"h.{i}.{theirs}"]
            sd[f"blocks.{i}.{ours}"] = t.t() if theirs in TRANSPOSED else t
    sd["head.weight"] = sd["tok_emb.weight"] if c.tie_embeddings else tensors["lm_head.weight"]
    return sd


def state_dict_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Hugging Face GPT2LMHeadModel tensors (contiguous, no shared storage) for our GPT.

    A model without qkv biases gets zero biases (Hugging Face's GPT-2 always has them): the same function.
    """
    c, sd = model.config, model.state_dict()
    out = {"transformer." + theirs: sd[ours] for ours, theirs in _TOP_MAP.items()}
    for i in range(c.n_layers):
        for ours, theirs in _LAYER_MAP.items():
            name = f"blocks.{i}.{ours}"
            if name not in sd:  # qkv bias of a model built without it
                t = torch.zeros(3 * c.emb_dim, dtype=sd[f"blocks.{i}.attn.qkv.weight"].dtype)
            else:
                t = sd[name].t() if theirs in TRANSPOSED else sd[name]
            out[f"transformer.h.{i}.{theirs}"] = t
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}
