"""GGUF files (llama.cpp's format) -> our Llama or Gemma 3, its tokenizer and its chat template.

The container (metadata, tensor table, memory-mapped tensor bytes) is read by `GGUFFile` here; the `gguf` package's
`gguf.quants.dequantize` turns quantized blocks into float32 when a float model is asked for. What a GGUF does
differently from a Hugging Face checkpoint:
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
import struct
from dataclasses import dataclass
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


# The GGUF container, read by our own code (the `gguf` package's reader parses a 49k-token vocabulary in about
# 1.5 s; this one in about 0.1 s). A file: "GGUF", version (2 or 3), tensor count, metadata count, the metadata
# (key, type, value), the tensor table (name, dims, type, offset), then the tensor data, aligned.
# GGML tensor types: id -> (name, elements per block, bytes per block), as llama.cpp's ggml.h numbers them.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
# Types whose data is a plain array of numbers (the others are bytes of quantized blocks).
_PLAIN_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16,
                "I32": np.int32, "I64": np.int64}
# Metadata value types: id -> struct format of one value (8: string, 9: array).
_VALUE_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_ARRAY_DTYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
                 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


@dataclass
class GGUFTensor:
    """One tensor of a GGUF file: `shape` in the file's order (innermost first, as llama.cpp lists it), `data`
    a read-only view of its bytes in the memory map: numbers shaped like PyTorch for plain types, else uint8
    (rows, bytes per row)."""

    name: str
    tensor_type: int
    shape: np.ndarray
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray


def ggml_type_name(tensor) -> str:
    """The GGML type name of a GGUF tensor ("Q4_1", "F32", ...; "type N" for a number we do not know)."""
    return GGML_TYPES.get(int(tensor.tensor_type), (f"type {int(tensor.tensor_type)}",))[0]


class GGUFFile:
    """A GGUF file opened for reading: `metadata` (key -> int, float, bool, str or list), `tensors` (in file
    order), `mm` the file's read-only memory map; tensor bytes are read only when used."""

    def __init__(self, path: str | os.PathLike):
        import mmap

        self.path = Path(path)
        with open(self.path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        magic, version = self._read("<4sI")
        if magic != b"GGUF":
            raise ValueError(f"not a GGUF file (it starts with {magic!r})")
        if version not in (2, 3) and int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
            raise ValueError("big-endian GGUF files are not supported")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = self._read("<QQ")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._read("<I")[0])
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._read("<I")
            dims = self._read(f"<{n_dims}Q")
            kind, offset = self._read("<IQ")
            infos.append((name, dims, kind, offset))
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise ValueError(f"invalid general.alignment {align!r} (a power of two is required)")
        start = -(-self._pos // align) * align
        data = np.frombuffer(self.mm, dtype=np.uint8)
        self.tensors = [self._tensor(data, start, *info) for info in infos]

    def _read(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.mm, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        return self._strings(1)[0]

    def _strings(self, n: int) -> list[str]:
        """n strings (length, UTF-8 bytes) from the current position: the hot loop of opening a file (vocabularies,
        merges)."""
        out, mm, pos, length = [], self.mm, self._pos, struct.Struct("<Q").unpack_from
        for _ in range(n):
            (k,) = length(mm, pos)
            out.append(mm[pos + 8 : pos + 8 + k].decode("utf-8", errors="replace"))
            pos += 8 + k
        if pos > len(mm):
            raise ValueError("the file ends inside a string")
        self._pos = pos
        return out

    def _value(self, kind: int) -> Any:
        if kind == 8:
            return self._string()
        if kind in _VALUE_FORMATS:
            value = self._read("<" + _VALUE_FORMATS[kind])[0]
            return float(np.float32(value)) if kind == 6 else value
        if kind != 9:
            raise ValueError(f"unknown metadata value type {kind}")
        item, n = self._read("<IQ")
        if item in _ARRAY_DTYPES:  # numbers: one read for the whole array
            dtype = np.dtype(_ARRAY_DTYPES[item]).newbyteorder("<")
            values = np.frombuffer(self.mm, dtype=dtype, count=n, offset=self._pos)
            self._pos += n * dtype.itemsize
            return values.tolist()
        if item == 8:
            return self._strings(n)
        return [self._value(item) for _ in range(n)]  # arrays of arrays

    def _tensor(self, data: np.ndarray, start: int, name: str, dims: tuple, kind: int, offset: int) -> GGUFTensor:
        n = int(np.prod(dims)) if dims else 1
        type_name, block, block_bytes = GGML_TYPES.get(kind, (None, 1, 0))
        torch_shape = tuple(reversed(dims))  # PyTorch's order: outermost first
        n_bytes = n // block * block_bytes
        begin = start + offset
        if type_name is not None and begin + n_bytes > len(data):
            raise ValueError(f"tensor {name} lies past the end of the file (a cut download?)")
        if type_name is None:
            view = data[:0]  # a type we do not know: `dequantize` names it when the tensor is used
        elif type_name in _PLAIN_TYPES:
            view = data[begin : begin + n_bytes].view(_PLAIN_TYPES[type_name]).reshape(torch_shape)
        else:
            view = data[begin : begin + n_bytes].reshape(*torch_shape[:-1], -1)  # (rows, bytes per row)
        return GGUFTensor(name, kind, np.array(dims, dtype=np.int64), n, n_bytes, begin, view)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """The GGUF file at `path`, its metadata parsed; UserError when it is missing or not a readable GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        return GGUFFile(path)
    except (ValueError, OSError, IndexError, KeyError, struct.error, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable GGUF file: {e}") from None


def field_value(reader: GGUFFile, key: str, default: Any = None) -> Any:
    """The value of metadata `key` (a scalar, a string or a list), or `default` when absent."""
    return reader.metadata.get(key, default)


def scalar_metadata(reader: GGUFFile) -> dict[str, Any]:
    """Every metadata entry except long arrays (vocabulary, merges, token types)."""
    return {k: v for k, v in reader.metadata.items()
            if not (isinstance(v, list) and len(v) > _METADATA_ARRAY_LIMIT)}


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
        vocab = len(field_value(reader, "tokenizer.ggml.tokens", ()))
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
    vocab = field_value(reader, "gemma3.vocab_size") or len(field_value(reader, "tokenizer.ggml.tokens", ()))
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
    kind = ggml_type_name(tensor)
    if kind not in SUPPORTED_TYPES:
        raise UserError(
            f"GGUF tensor {tensor.name} has type {kind}, which is not supported; "
            f"supported types: {', '.join(SUPPORTED_TYPES)}"
        )
    if kind in ("F32", "F16"):
        values = np.asarray(tensor.data, dtype=np.float32)
    else:  # quantized blocks: the `gguf` package's numpy dequantization
        from gguf.quants import dequantize as gguf_dequantize

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

    `reader`: an already opened `GGUFFile` on `path` (opening one parses all metadata).
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
