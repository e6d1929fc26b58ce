"""GGUF files (llama.cpp's format) -> our Llama or Gemma 3, its tokenizer and its chat template.

Read with the `gguf` package: `GGUFReader` for metadata and tensor bytes, `gguf.quants.dequantize` to turn
quantized blocks back into float32. What a GGUF does differently from a Hugging Face checkpoint:
- for Llama, llama.cpp's converter permutes the rows of attn_q and attn_k so that each head's rotary pairs sit
  side by side (its interleaved RoPE). Our attention rotates halves (rotate-half), so `unpermute_qk` undoes
  that permutation. Gemma's rows are not permuted.
- for Gemma, llama.cpp stores every RMSNorm weight with 1 added (its norm multiplies by the weight, Gemma's by
  1 + weight): `GEMMA_NORM_SHIFT` is taken off again. The local RoPE base, the local/global layer pattern and
  the query scale are not in the file; the architecture fixes them (GemmaConfig's defaults, as llama.cpp does).
- the tokenizer lives in the metadata (`tokenizer.ggml.*`), and so does the chat template.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmscratch.model.gemma import GemmaConfig
from llmscratch.model.llama import LlamaConfig
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.sentencepiece import from_gguf_vocab
from llmscratch.utils import UserError
from llmscratch.weights import hf_gemma, hf_llama
from llmscratch.weights.ours import model_from_state_dict
from llmscratch.weights.shapes import checked_config

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
# Tensor types we turn into float32 (plain floats, llama.cpp's legacy quants and its K-quants).
SUPPORTED_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)
# GGUF tensor name (per block after "blk.{i}.") -> Hugging Face Llama name (after "model.layers.{i}.").
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Gemma 3: per-block names that differ from Llama's (the others are shared).
_GEMMA_BLOCK_NAMES = {
    **_BLOCK_NAMES,
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}
GEMMA_NORM_SHIFT = 1.0  # llama.cpp's converter adds this to Gemma's norm weights
# Metadata arrays longer than this are left out of `GGUFModel.metadata` (vocabularies, merges).
_METADATA_ARRAY_LIMIT = 64


@dataclass
class GGUFModel:
    """What a GGUF file gives: the model, its tokenizer, its chat template (or None) and scalar metadata."""

    model: Any  # Llama or Gemma
    tokenizer: Any  # llmscratch.tokenizer.Tokenizer
    chat_template: str | None
    metadata: dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)


@lru_cache(maxsize=1)
def _fast_reader_class():
    """GGUFReader reading through a plain ndarray view of its memory map: the same bytes, but slicing skips
    np.memmap's per-slice bookkeeping, which dominates parsing a 49k-token vocabulary (about 4x faster)."""
    from gguf import GGUFReader

    class FastGGUFReader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None or plain.base is not self.data:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset : offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return FastGGUFReader


def open_gguf(path: str | os.PathLike):
    """A `gguf.GGUFReader` on `path`; UserError when the file is missing or not a GGUF file."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        try:
            return _fast_reader_class()(path)
        except (TypeError, AttributeError):  # a gguf version whose reader internals differ: the plain reader
            return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise UserError(f"{path} is not a readable GGUF file: {e}") from None


def field_value(reader, key: str, default: Any = None) -> Any:
    """The value of metadata `key` (a scalar, a string or a list), or `default` when absent."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def scalar_metadata(reader) -> dict[str, Any]:
    """Every metadata entry except long arrays (vocabulary, merges, token types)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or len(field.data) > _METADATA_ARRAY_LIMIT:
            continue
        out[key] = field.contents()
    return out


def architecture(reader) -> str:
    """`general.architecture`; UserError when it is not one we implement."""
    arch = field_value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def _metadata_getter(reader, arch: str):
    """get(key, default) for `{arch}.{key}` metadata: UserError naming the key when it is absent without a default."""

    def get(key: str, default: Any = None) -> Any:
        value = field_value(reader, f"{arch}.{key}", default)
        if value is None:
            raise UserError(f"GGUF metadata lacks {arch}.{key}")
        return value

    return get


def config_from_gguf(reader) -> LlamaConfig | GemmaConfig:
    """Our config from the `{architecture}.*` metadata: Llama (tied output when the file has no output.weight)
    or Gemma 3."""
    arch = architecture(reader)
    if arch == "gemma3":
        return gemma_config_from_gguf(reader)
    get = _metadata_getter(reader, arch)

    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise UserError("this GGUF uses scaled rotary frequencies (rope_freqs.weight, Llama 3.1+); not supported")
    n_heads = int(get("attention.head_count"))
    emb_dim = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", emb_dim // n_heads))
    rope_dim = int(get("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise UserError(f"GGUF rotary dimension {rope_dim} != head dimension {head_dim}: partial RoPE is not supported")
    vocab = field_value(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    try:
        return LlamaConfig(
            vocab_size=int(vocab),
            context_length=int(get("context_length")),
            emb_dim=emb_dim,
            n_layers=int(get("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            hidden_dim=int(get("feed_forward_length")),
            rope_theta=_f32(get("rope.freq_base", 10000.0)),
            rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings="output.weight" not in names,
            head_dim=head_dim,
        )
    except ValueError as e:
        raise UserError(f"inconsistent GGUF metadata: {e}") from None


def gemma_config_from_gguf(reader) -> GemmaConfig:
    """Our Gemma config from `gemma3.*` metadata; what the file lacks keeps the architecture's fixed value."""
    get = _metadata_getter(reader, "gemma3")
    n_heads, emb_dim, n_layers = int(get("attention.head_count")), int(get("embedding_length")), int(get("block_count"))
    head_dim = int(get("attention.key_length", 256))
    vocab = field_value(reader, "gemma3.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    defaults = GemmaConfig()
    try:
        return GemmaConfig(
            vocab_size=int(vocab),
            context_length=int(get("context_length")),
            emb_dim=emb_dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            hidden_dim=int(get("feed_forward_length")),
            # llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B (62 blocks): 1/sqrt(width / heads)
            query_pre_attn_scalar=emb_dim // n_heads if n_layers == 62 else head_dim,
            sliding_window=int(get("attention.sliding_window", defaults.sliding_window)),
            sliding_window_pattern=int(get("attention.sliding_window_pattern", defaults.sliding_window_pattern)),
            rope_theta=_f32(get("rope.freq_base", defaults.rope_theta)),
            rope_local_theta=_f32(get("rope.freq_base_swa", defaults.rope_local_theta)),
            rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", defaults.rms_norm_eps)),
            final_logit_softcap=field_value(reader, "gemma3.final_logit_softcapping"),
        )
    except ValueError as e:
        raise UserError(f"inconsistent GGUF metadata: {e}") from None


def _f32(value) -> float:
    """A float32 metadata value as the shortest decimal that reads back the same (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row permutation of a Q or K weight (rows = n_heads * head_dim).

    llama.cpp reorders each head's rows from [first half | second half] to interleaved pairs (0, hd/2, 1,
    hd/2 + 1, ...); this restores the rotate-half order. `n_heads` is the head count of this projection
    (the kv head count for K).
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    # llama.cpp: (n_heads, 2, half, ...) -> swap -> (n_heads, half, 2, ...); we go back.
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def dequantize(tensor) -> torch.Tensor:
    """A GGUF tensor as float32 torch tensor shaped (rows, cols) like PyTorch (GGUF lists dims reversed)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    kind = GGMLQuantizationType(tensor.tensor_type).name
    if kind not in SUPPORTED_TYPES:
        raise UserError(
            f"GGUF tensor {tensor.name} has type {kind}, which is not supported; "
            f"supported types: {', '.join(SUPPORTED_TYPES)}"
        )
    values = np.asarray(gguf_dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return torch.from_numpy(values.reshape(shape).copy())


def hf_tensors_from_gguf(reader, c: LlamaConfig | GemmaConfig, progress: bool = True) -> dict[str, torch.Tensor]:
    """Every weight dequantized to float32 under Hugging Face names: Llama's Q and K rows un-permuted, Gemma's
    norm weights shifted back."""
    from tqdm.auto import tqdm

    gemma = c.family == "gemma3"
    out: dict[str, torch.Tensor] = {}
    for t in tqdm(reader.tensors, desc="dequantizing GGUF", unit="tensor", disable=not progress, leave=False):
        name = _hf_name(t.name, _GEMMA_BLOCK_NAMES if gemma else _BLOCK_NAMES)
        w = dequantize(t)
        if gemma:
            out[name] = w - GEMMA_NORM_SHIFT if t.name.endswith("norm.weight") else w
            continue
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_qk(w, c.n_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_qk(w, c.n_kv_heads)
        out[name] = w
    return out


def _hf_name(gguf_name: str, block_names: dict[str, str]) -> str:
    """Hugging Face name of a GGUF tensor name; UserError for a tensor we have no place for."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in block_names:
        return f"model.layers.{parts[1]}.{block_names[parts[2]]}"
    raise UserError(f"GGUF tensor {gguf_name!r} is not part of the architecture we implement")


def tokenizer_from_gguf(reader):
    """Our tokenizer from `tokenizer.ggml.*` metadata: byte-level BPE ("gpt2": vocabulary, merges, token types)
    or SentencePiece-style BPE ("llama": pieces, scores, token types)."""
    kind = field_value(reader, "tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise UserError(
            f"GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' (byte-level BPE) and 'llama' "
            "(SentencePiece BPE)"
        )
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise UserError("GGUF metadata lacks tokenizer.ggml.tokens")

    def token_id(key: str) -> int | None:
        value = field_value(reader, f"tokenizer.ggml.{key}")
        return None if value is None else int(value)

    types = field_value(reader, "tokenizer.ggml.token_type")
    ids = {key: token_id(f"{key[:3]}_token_id") for key in ("bos_id", "eos_id")}
    ids["pad_id"] = token_id("padding_token_id")
    try:
        if kind == "llama":
            scores = field_value(reader, "tokenizer.ggml.scores")
            if scores is None or types is None:
                raise UserError("GGUF metadata lacks tokenizer.ggml.scores or tokenizer.ggml.token_type")
            return from_gguf_vocab(
                tokens, scores, types, unk_id=token_id("unknown_token_id"),
                add_bos=bool(field_value(reader, "tokenizer.ggml.add_bos_token", True)),
                # llama.cpp's default for SentencePiece vocabularies that do not say
                add_space_prefix=bool(field_value(reader, "tokenizer.ggml.add_space_prefix", True)), **ids,
            )
        merges = field_value(reader, "tokenizer.ggml.merges")
        if merges is None:
            raise UserError("GGUF metadata lacks tokenizer.ggml.merges")
        pre = field_value(reader, "tokenizer.ggml.pre", "gpt2")
        if pre == "default":  # llama.cpp's name for "no specific pre-tokenizer": GPT-2's pattern
            pre = "gpt2"
        return Tokenizer.from_vocab_and_merges(tokens, merges, pre=pre, token_types=types, **ids)
    except ValueError as e:
        raise UserError(f"cannot build the tokenizer of this GGUF file: {e}") from None


def load_gguf(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    reader=None,
    progress: bool = True,
    keep_quantized: bool = False,
) -> GGUFModel:
    """Load a Llama or Gemma 3 GGUF file: model (eval mode, float32 unless `dtype`), tokenizer, chat template, metadata.

    `reader`: an already opened `GGUFReader` on `path` (opening one parses all metadata, which takes seconds).
    `keep_quantized`: every block Linear and the head stay in the file's quantized blocks (weights/gguf_quant.py,
    `--quantize gguf`; CPU, float32 activations).
    """
    path = Path(path)
    reader = reader if reader is not None else open_gguf(path)
    config = checked_config(lambda: config_from_gguf(reader), str(path))
    tokenizer = tokenizer_from_gguf(reader)
    if keep_quantized:
        from llmscratch.weights.gguf_quant import load_quantized_model

        if dtype not in (None, torch.float32) or device not in (None, "cpu", torch.device("cpu")):
            raise UserError("a GGUF model kept quantized (quantize=gguf) runs on the CPU in float32: leave the "
                            "device and dtype at their defaults", params="quantize")
        model = load_quantized_model(reader, config)
    else:
        tensors = hf_tensors_from_gguf(reader, config, progress)
        importer = hf_gemma if config.family == "gemma3" else hf_llama
        state = importer.state_dict_from_hf(tensors, config, str(path))
        model = model_from_state_dict(config, state, str(path), device, dtype)
    template = field_value(reader, "tokenizer.chat_template")
    return GGUFModel(model.eval(), tokenizer, template, scalar_metadata(reader), path)
