"""A GGUF file's quantized blocks kept quantized: each Linear weight becomes a `QuantLinear` (model/quant.py)
straight from its blocks, without a float32 copy of the model (`--quantize gguf`).

| GGUF type | our layer | how |
|---|---|---|
| Q4_0 | int4, group 32, symmetric | a re-layout: the 16 bytes of nibbles as they are, d (float16) as the scale |
| Q4_1 | int4, group 32 | the same, and m (float16) as the minimum |
| Q8_0 | int8, group 32 | the 32 int8 values as they are, d as the group's scale |
| Q4_K | int4, group 32 | per 32-value sub-block: scale d * sc, minimum -dmin * m (as float16); nibbles reordered |
| Q5_0 | int8, group 32 | exact: the integer q - 16 as int8, d as the scale |
| Q6_K | int8, group 16 | each 16-value sub-block's integer as int8, scale d * sc rounded to float16 |
| other quantized (Q5_1, Q2_K, Q3_K, Q5_K) | int8, group 32 | dequantized one tensor at a time, then requantized |
| F32, F16, BF16 | float32 | as `load_gguf` does |

Llama's attn_q/attn_k rows are un-permuted (a row permutation of the quantized rows), q/k/v are concatenated into
`attn.qkv` (and gate/up into `ffn.gate_up` where the model fuses them): a row concatenation of tensors of the same
format is a plain cat of qweight, scales and mins; parts of different formats are all made int8 group 32 first.
A tied head is quantized once and the embedding reads its rows (`QuantEmbedding`).
"""

from __future__ import annotations

import mmap as mmap_module
import warnings

import numpy as np
import torch
from torch import nn

from llmscratch.model.base import meta_model
from llmscratch.model.lora import _set_submodule
from llmscratch.model.quant import QuantLinear, describe, quantize_int8, tie_embedding
from llmscratch.utils import UserError
from llmscratch.weights.gguf import GEMMA_NORM_SHIFT, dequantize, ggml_type_name, unpermute_qk

# (format, group, symmetric) of the QuantLinear each GGUF type maps to without requantizing
DIRECT = {"Q4_0": ("int4", 32, True), "Q4_1": ("int4", 32, False), "Q8_0": ("int8", 32, True),
          "Q4_K": ("int4", 32, False)}
FLOAT_TYPES = ("F32", "F16", "BF16")
# our Linear (inside a block) -> the GGUF tensors whose rows it concatenates
_LINEAR_PARTS = {"attn.qkv": ("attn_q", "attn_k", "attn_v"), "attn.proj": ("attn_output",),
                 "ffn.gate_up": ("ffn_gate", "ffn_up"), "ffn.gate": ("ffn_gate",), "ffn.up": ("ffn_up",),
                 "ffn.down": ("ffn_down",)}
# our float parameters inside a block -> GGUF tensor (Llama and Gemma 3)
_BLOCK_FLOATS = {"norm1.weight": "attn_norm", "norm2.weight": "ffn_norm",
                 "post_attn_norm.weight": "post_attention_norm", "post_ffn_norm.weight": "post_ffw_norm",
                 "attn.q_norm.weight": "attn_q_norm",
                 "attn.k_norm.weight": "attn_k_norm"}


def _blocks(tensor, block_bytes: int) -> np.ndarray:
    """The tensor's raw bytes as (rows, blocks per row, block_bytes) uint8."""
    rows = int(np.prod(tensor.shape.tolist()[1:])) if len(tensor.shape) > 1 else 1
    return np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1, block_bytes)


def _copy(b: np.ndarray) -> torch.Tensor:
    """A contiguous copy of a strided view of the memory map (torch copies these 1.5x faster than numpy)."""
    with warnings.catch_warnings():  # torch warns that the map is read-only: the view is only read, once
        warnings.simplefilter("ignore", UserWarning)
        view = torch.from_numpy(b)
    return view.clone(memory_format=torch.contiguous_format)


def _bytes(b: np.ndarray) -> torch.Tensor:
    """(rows, n, k) block bytes -> one uint8 tensor (rows, n * k), copied once out of the memory map."""
    return _copy(b).reshape(b.shape[0], -1)


def _f16(b: np.ndarray) -> torch.Tensor:
    """float16 values from (..., 2) little-endian bytes."""
    return _copy(b).view(torch.float16)[..., 0]


def q4_k_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes of packed 6-bit values -> (scales, mins), each (..., 8) uint8 (llama.cpp get_scale_min_k4)."""
    sc = sc.astype(np.uint8)
    lo_s, lo_m = sc[..., 0:4] & 63, sc[..., 4:8] & 63
    hi_s = (sc[..., 8:12] & 0x0F) | ((sc[..., 0:4] >> 6) << 4)
    hi_m = (sc[..., 8:12] >> 4) | ((sc[..., 4:8] >> 6) << 4)
    return np.concatenate([lo_s, hi_s], -1), np.concatenate([lo_m, hi_m], -1)


def quant_tensors(tensor) -> tuple[str, int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(format, group, qweight, scales, mins) of a quantized GGUF tensor, rows in the file's order."""
    kind = ggml_type_name(tensor)
    if kind == "Q4_0":
        b = _blocks(tensor, 18)  # d (f16), 16 bytes: element j low nibble, j + 16 high
        return "int4", 32, _bytes(b[..., 2:]), _f16(b[..., 0:2]), None
    if kind == "Q4_1":
        b = _blocks(tensor, 20)  # d, m (f16), 16 bytes of nibbles
        return "int4", 32, _bytes(b[..., 4:]), _f16(b[..., 0:2]), _f16(b[..., 2:4])
    if kind == "Q8_0":
        b = _blocks(tensor, 34)  # d, 32 int8
        return "int8", 32, _bytes(b[..., 2:]).view(torch.int8), _f16(b[..., 0:2]), None
    if kind == "Q4_K":
        return ("int4", 32, *_q4_k(_blocks(tensor, 144)))
    if kind == "Q5_0":
        b = _blocks(tensor, 22)  # d, 4 bytes of high bits, 16 bytes of low nibbles: (q5 - 16) * d, exact in int8
        qh = b[..., 2:6].copy().view(np.uint32)  # (rows, n, 1)
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4  # (rows, n, 32)
        low = np.concatenate([b[..., 6:] & 0x0F, b[..., 6:] >> 4], axis=-1)
        q = ((low | high).astype(np.int16) - 16).astype(np.int8).reshape(b.shape[0], -1)
        return "int8", 32, torch.from_numpy(q), _f16(b[..., 0:2]), None
    if kind == "Q6_K":
        return ("int8", 16, *_q6_k(tensor), None)
    # any other quantized type: requantize, one tensor at a time
    q, s = quantize_int8(dequantize(tensor), 32)
    return "int8", 32, q, s, None


def _q6_k(tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q6_K -> int8 group 16: each 16-value sub-block's integers (-32..31) as they are, scale d * sc rounded to
    float16 (the only change). The integers are recovered from llama.cpp's own dequantization."""
    b = _blocks(tensor, 210)  # 128 + 64 bytes of values, 16 int8 sub-block scales, d (f16)
    sc = _f16(b[..., 208:210]).float()[..., None] * torch.from_numpy(b[..., 192:208].copy().view(np.int8)).float()
    sc = sc.reshape(b.shape[0], -1)  # (rows, sub-blocks)
    w = dequantize(tensor).reshape(b.shape[0], -1, 16)  # (rows, sub-blocks, 16)
    safe = torch.where(sc != 0, sc, torch.ones_like(sc))
    q = torch.round(w / safe[..., None]).clamp_(-127, 127).to(torch.int8).reshape(b.shape[0], -1)
    return q, sc.half()


def _q4_k(b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K super-blocks (rows, n, 144) -> int4 group 32: qweight (rows, 128 n), scales, mins (rows, 8 n) float16.

    A super-block: d, dmin (f16), 12 bytes of 6-bit sub-block scales and mins, 128 bytes where bytes 32 c .. 32 c + 31
    hold sub-block 2 c (low nibbles) and 2 c + 1 (high nibbles), element l of a sub-block in byte l. Value:
    d * sc * n - dmin * m. Ours holds element l (low) and l + 16 (high) of a group in byte l."""
    rows, n, _ = b.shape
    d = _f16(b[..., 0:2]).float()[..., None]  # (rows, n, 1)
    dmin = _f16(b[..., 2:4]).float()[..., None]
    sc, m = q4_k_scales(b[..., 4:16])  # (rows, n, 8)
    qs = b[..., 16:].reshape(rows, n, 4, 32)  # (rows, n, chunk, 32 bytes)
    nib = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, n * 8, 32)  # (rows, sub-blocks, 32 values)
    packed = nib[..., :16] | (nib[..., 16:] << 4)  # (rows, sub-blocks, 16): our group order
    scales = (d * torch.from_numpy(sc.astype(np.float32))).reshape(rows, n * 8).half()
    mins = (-dmin * torch.from_numpy(m.astype(np.float32))).reshape(rows, n * 8).half()
    return torch.from_numpy(packed.reshape(rows, -1).copy()), scales, mins


def release(reader, tensor) -> None:
    """Tell the OS we are done with `tensor`'s pages of the file's memory map: they stop counting as this
    process's memory (the file stays in the page cache). A no-op where the reader or the OS cannot."""
    mm = getattr(reader, "mm", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap_module, "MADV_DONTNEED"):
        return
    page = mmap_module.PAGESIZE
    start = tensor.data_offset // page * page
    end = tensor.data_offset + tensor.n_bytes
    try:
        mm.madvise(mmap_module.MADV_DONTNEED, start, end - start)
    except (OSError, ValueError):
        pass


def _quant_part(tensor, permute_heads: int | None) -> tuple[str, int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`quant_tensors`, Llama's q/k rows un-permuted when `permute_heads` (the projection's head count) is given."""
    fmt, group, q, s, m = quant_tensors(tensor)
    if permute_heads:
        q, s = unpermute_qk(q, permute_heads), unpermute_qk(s, permute_heads)
        m = None if m is None else unpermute_qk(m, permute_heads)
    return fmt, group, q.contiguous(), s.contiguous(), None if m is None else m.contiguous()


def quant_linear(parts: list) -> QuantLinear:
    """One QuantLinear whose rows are the parts' rows in order; parts are `_quant_part` results."""
    if len({(f, g, m is None) for f, g, _, _, m in parts}) > 1:  # mixed formats: all int8 group 32
        from llmscratch.model.quant import dequantize_int4, dequantize_int8

        def int8_32(p):
            if p[:2] == ("int8", 32):
                return p
            w = dequantize_int8(p[2], p[3]) if p[0] == "int8" else dequantize_int4(p[2], p[3], p[4], p[1])
            return ("int8", 32, *quantize_int8(w, 32), None)

        parts = [int8_32(p) for p in parts]
    fmt, group = parts[0][0], parts[0][1]
    cat = [None if parts[0][i] is None else parts[0][i] if len(parts) == 1 else torch.cat([p[i] for p in parts])
           for i in (2, 3, 4)]
    return QuantLinear.from_tensors(*cat, fmt, group)


def load_quantized_model(reader, config):
    """Our model from an open GGUF reader with every block Linear and the head kept in the file's quantized
    blocks (see the module docstring); float tensors as `load_gguf` makes them."""
    gemma = config.family == "gemma3"
    tensors = {t.name: t for t in reader.tensors}
    kind = {n: ggml_type_name(t) for n, t in tensors.items()}
    model = meta_model(config)
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or not name.startswith("blocks."):
            continue
        _, i, local = name.split(".", 2)
        gg = [f"blk.{i}.{p}.weight" for p in _LINEAR_PARTS.get(local, ())]
        if not gg or any(g not in tensors for g in gg):
            raise UserError(f"GGUF file lacks the tensors of {name} ({', '.join(gg) or 'unknown layer'})")
        heads = {"attn_q": config.n_heads, "attn_k": config.n_kv_heads}
        perm = [None if gemma else heads.get(g.split(".")[2]) for g in gg]
        if any(kind[g] in FLOAT_TYPES for g in gg):  # a float part: the layer stays float32
            ws = [dequantize(tensors[g]) for g in gg]
            mod.weight = nn.Parameter(torch.cat([unpermute_qk(w, h) if h else w for w, h in zip(ws, perm)]),
                                      requires_grad=False)
            continue
        _set_submodule(model, name, quant_linear([_quant_part(tensors[g], h) for g, h in zip(gg, perm)]))
        for g in gg:
            release(reader, tensors[g])
    head_name = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    if kind[head_name] not in FLOAT_TYPES and getattr(model.head, "cap", None) is None:
        model.head = quant_linear([_quant_part(tensors[head_name], None)])
        release(reader, tensors[head_name])
        if config.tie_embeddings:
            tie_embedding(model)
    _fill_floats(model, tensors, dequantize, GEMMA_NORM_SHIFT if gemma else 0.0)
    model.quantization = describe(model, "gguf", None, False, isinstance(model.head, QuantLinear), "gguf",
                                  config.tie_embeddings and not isinstance(model.tok_emb, nn.Embedding))
    return model.eval()


def _fill_floats(model: nn.Module, tensors: dict, dequantize, norm_shift: float) -> None:
    """Every parameter still on the meta device gets its float32 tensor from the file (Gemma's norms shifted
    back); buffers computed at init (rotary tables) are computed."""
    c = model.config
    for name, mod in model.named_modules():
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            full = f"{name}.{pname}" if name else pname
            gguf_name = _float_source(full, tensors)
            w = dequantize(tensors[gguf_name])
            if full.endswith("norm.weight") or full.endswith("norm1.weight") or full.endswith("norm2.weight"):
                w = w - norm_shift
            if c.family != "gemma3" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
                w = unpermute_qk(w, c.n_heads if "attn_q" in gguf_name else c.n_kv_heads)
            if tuple(w.shape) != tuple(p.shape):
                raise UserError(f"GGUF tensor {gguf_name} has shape {tuple(w.shape)}, expected {tuple(p.shape)}")
            setattr(mod, pname, nn.Parameter(w, requires_grad=False))
        meta = [b for b, t in mod.named_buffers(recurse=False) if t.device.type == "meta"]
        for b in meta:  # buffers computed at init (rotary tables): memory here, values from reset_tables
            mod._buffers[b] = torch.empty_like(mod._buffers[b], device="cpu")
        if meta and callable(getattr(mod, "reset_tables", None)):
            mod.reset_tables()
    if c.tie_embeddings and isinstance(model.tok_emb, nn.Embedding) and isinstance(model.head, nn.Linear):
        model.head.weight = model.tok_emb.weight


def _float_source(name: str, tensors: dict) -> str:
    """The GGUF tensor that holds our float parameter `name`; UserError when the file has none."""
    top = {"tok_emb.weight": "token_embd.weight", "final_norm.weight": "output_norm.weight",
           "head.weight": "output.weight" if "output.weight" in tensors else "token_embd.weight"}
    if name in top:
        return top[name]
    _, i, local = name.split(".", 2)
    base = local.removesuffix(".weight")
    if local in _BLOCK_FLOATS:
        gg = f"blk.{i}.{_BLOCK_FLOATS[local]}.weight"
    elif base in _LINEAR_PARTS and len(_LINEAR_PARTS[base]) == 1:
        gg = f"blk.{i}.{_LINEAR_PARTS[base][0]}.weight"
    else:
        raise UserError(f"a float {name} made of several GGUF tensors cannot be loaded with quantize=gguf",
                        params="quantize")
    if gg not in tensors:
        raise UserError(f"GGUF file lacks {gg} (for {name})")
    return gg
