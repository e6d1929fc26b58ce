"""Weight-only quantization: int8 (per output channel, symmetric) and int4 (group-wise) Linear weights.

Formats (the weight W is (out, in); activations stay float):
- "int8": q = round(W / s), q in [-127, 127] (int8, (out, in)); s = max|W[o]| / 127 per output row o (float32
  (out,)), or per group of 32 consecutive inputs (float16 (out, in / 32): llama.cpp's Q8_0, from GGUF files).
- "int4": groups of `group` (32, 64 or 128) consecutive inputs; asymmetric: W ~ n * s + m with n in 0..15,
  s = (max - min) / 15, m = min per group (llama.cpp's Q4_1); symmetric: W ~ (n - 8) * s, s = max|W| / -8
  signed toward the largest magnitude (Q4_0), stored without minimums. Two values per byte: in each group,
  byte j holds element j in its low nibble and element j + group/2 in its high nibble (GGUF's block order),
  so `qweight` is uint8 (out, in / 2), `scales` (out, in / group), `mins` (out, in / group) when asymmetric,
  both float16 (GGUF's layout: a Q4_0/Q4_1 block is one group of 32).

`quantize_model(model, "int8")` swaps every block nn.Linear (and the head if `head=True`) for a `QuantLinear`,
in place, like LoRA's wrapping: the model files stay untouched. A `QuantLinear` multiplies through our C++
kernel (model/quant_kernel.py) when it is available and otherwise through the pure-PyTorch reference
(dequantize, then F.linear); both give the same products to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model import quant_kernel
from llmscratch.model.lora import _set_submodule, name_matches
from llmscratch.utils import UserError

FORMATS = ("int8", "int4")
GROUPS = (32, 64, 128)
DEFAULT_GROUP = 32
HEAD_FORMAT = {"int8": "int8", "int4": "int8"}  # the head's format under `--quantize FMT`


# ---- int8: per output channel, symmetric ----------------------------------------------------------------------

def quantize_int8(w: torch.Tensor, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (out, in), scales) with w ~ q * scale: per output row (scales float32 (out,)) when `group` is None,
    else per `group` consecutive inputs (scales float16 (out, in / group), llama.cpp's Q8_0 for group 32)."""
    w = w.detach().float()
    out, inp = w.shape
    g = w.reshape(out, 1 if group is None else inp // group, -1)  # (out, groups, group)
    scales = g.abs().amax(dim=2) / 127.0  # (out, groups)
    if group is not None:
        scales = scales.half().float()  # stored as float16: round first so that q matches the stored scale
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero group: any scale works
    q = torch.round(g / scales[..., None]).clamp_(-127, 127).to(torch.int8).reshape(out, inp)
    return q, scales[:, 0] if group is None else scales.half()


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 (out, in) from `quantize_int8`'s output (per-row or grouped scales)."""
    out, inp = q.shape
    s = scales.float().reshape(out, -1)  # (out, groups)
    return (q.float().reshape(out, s.shape[1], -1) * s[..., None]).reshape(out, inp)


# ---- int4: group-wise, two values per byte ----------------------------------------------------------------------

def _check_group(in_features: int, group: int) -> None:
    if group not in GROUPS:
        raise ValueError(f"int4 group must be one of {GROUPS}, got {group}")
    if in_features % group:
        raise ValueError(f"in_features {in_features} is not a multiple of the int4 group {group}")


def pack_int4(n: torch.Tensor, group: int) -> torch.Tensor:
    """uint8 (out, in / 2) from nibbles n (out, in) in 0..15 (GGUF block order within each group)."""
    out, inp = n.shape
    g = n.to(torch.uint8).reshape(out, inp // group, 2, group // 2)  # (out, groups, low/high half, group/2)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(out, inp // 2)


def unpack_int4(packed: torch.Tensor, group: int) -> torch.Tensor:
    """Nibbles uint8 (out, in) in 0..15 from `pack_int4`'s output."""
    out, half = packed.shape
    p = packed.reshape(out, half * 2 // group, 1, group // 2)  # (out, groups, 1, group/2)
    return torch.cat([p & 0x0F, p >> 4], dim=2).reshape(out, half * 2)


def quantize_int4(
    w: torch.Tensor, group: int = DEFAULT_GROUP, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(qweight uint8 (out, in/2), scales (out, in/group), mins (out, in/group) or None when `symmetric`); scales
    and mins are float16 (as in GGUF's Q4_0/Q4_1 blocks)."""
    out, inp = w.shape
    _check_group(inp, group)
    g = w.detach().float().reshape(out, inp // group, group)  # (out, groups, group)
    if symmetric:  # Q4_0: the value of largest magnitude maps to -8, so both signs use the full range
        idx = g.abs().argmax(dim=2, keepdim=True)
        scales = (g.gather(2, idx) / -8.0).squeeze(2).half().float()  # (out, groups), stored as float16
        safe = torch.where(scales != 0, scales, torch.ones_like(scales))
        n = torch.round(g / safe[..., None] + 8).clamp_(0, 15)
        mins = None
    else:  # Q4_1: 16 levels from the group's minimum to its maximum
        lo, hi = g.amin(dim=2).half().float(), g.amax(dim=2)
        scales = ((hi - lo) / 15.0).half().float()
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        n = torch.round((g - lo[..., None]) / safe[..., None]).clamp_(0, 15)
        mins = lo.half()
    return pack_int4(n.reshape(out, inp), group), scales.half(), mins


def dequantize_int4(
    qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, group: int
) -> torch.Tensor:
    """float32 (out, in): n * s + m (asymmetric) or (n - 8) * s (symmetric, `mins` None)."""
    n = unpack_int4(qweight, group).float()
    out, inp = n.shape
    g = n.reshape(out, inp // group, group)  # (out, groups, group)
    s = scales.float()[..., None]
    w = g * s + mins.float()[..., None] if mins is not None else (g - 8.0) * s
    return w.reshape(out, inp)


# ---- the modules ----------------------------------------------------------------------------------------------

class QuantLinear(nn.Module):
    """A Linear layer whose weight is stored quantized (see the module docstring); inference only.

    Buffers: `qweight`, `scales`, `mins` (int4 asymmetric only) and `bias` (when the layer has one): they are what
    the state dict (and a saved quantized folder) holds. `group`: int4's group, int8's group (None: per row).
    """

    def __init__(self, in_features: int, out_features: int, fmt: str, group: int | None = DEFAULT_GROUP,
                 symmetric: bool = False, bias: bool = False, device=None):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown quantization format {fmt!r}; known: {', '.join(FORMATS)}")
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.symmetric = symmetric or fmt == "int8"
        mins = None
        if fmt == "int8":
            self.int8_group = group if group and group != in_features else None
            if self.int8_group and (self.int8_group % 16 or in_features % self.int8_group):
                raise ValueError(f"int8 group {group} must be a multiple of 16 dividing in_features {in_features}")
            self.group = self.int8_group or in_features  # the kernel's group: the whole row when per row
            qweight = torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
            scales = (torch.ones(out_features, device=device) if self.int8_group is None else
                      torch.ones(out_features, in_features // group, dtype=torch.float16, device=device))
        else:
            _check_group(in_features, group)
            self.group = group
            qweight = torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device)
            scales = torch.ones(out_features, in_features // group, dtype=torch.float16, device=device)
            mins = None if symmetric else torch.zeros(scales.shape, dtype=torch.float16, device=device)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("mins", mins)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.int8_activations: bool | None = None  # whether the kernel quantizes x (quant_kernel.int8_activations)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, group: int | None = DEFAULT_GROUP,
                    symmetric: bool = False) -> QuantLinear:
        """Quantize `linear`'s weight (float) into a new QuantLinear on the same device; int8 is per row
        (`group` is int4's; grouped int8 comes from GGUF Q8_0 blocks)."""
        w = linear.weight
        if fmt == "int8":
            group = None
        q = cls(linear.in_features, linear.out_features, fmt, group, symmetric, linear.bias is not None, w.device)
        q.load_weight(w)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q

    @classmethod
    def from_tensors(cls, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, fmt: str,
                     group: int | None, bias: torch.Tensor | None = None) -> QuantLinear:
        """A QuantLinear holding already quantized tensors (e.g. a GGUF file's blocks) without copying them."""
        out = qweight.shape[0]
        inp = qweight.shape[1] * (2 if fmt == "int4" else 1)
        q = cls(inp, out, fmt, group, fmt == "int8" or mins is None, bias is not None, device="meta")
        for name, t, like in (("qweight", qweight, q.qweight), ("scales", scales, q.scales), ("mins", mins, q.mins),
                              ("bias", bias, q.bias)):
            if (t is None) != (like is None) or t is not None and (t.shape != like.shape or t.dtype != like.dtype):
                raise ValueError(f"{name}: expected {None if like is None else (tuple(like.shape), like.dtype)}, "
                                 f"got {None if t is None else (tuple(t.shape), t.dtype)}")
            setattr(q, name, t if t is None else t.contiguous())
        return q

    @torch.no_grad()
    def load_weight(self, w: torch.Tensor) -> None:
        """Quantize float weight `w` (out, in) into this layer's buffers."""
        if self.fmt == "int8":
            q, s = quantize_int8(w, self.int8_group)
            self.qweight.copy_(q), self.scales.copy_(s)
        else:
            q, s, m = quantize_int4(w, self.group, self.symmetric)
            self.qweight.copy_(q), self.scales.copy_(s)
            if m is not None:
                self.mins.copy_(m)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer multiplies by."""
        if self.fmt == "int8":
            return dequantize_int8(self.qweight, self.scales)
        return dequantize_int4(self.qweight, self.scales, self.mins, self.group)

    def dequantized_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 rows `ids` (any shape) of the weight: (*ids.shape, in) (an embedding lookup)."""
        flat = ids.reshape(-1)
        if self.fmt == "int8":
            w = dequantize_int8(self.qweight[flat], self.scales[flat])
        else:
            w = dequantize_int4(self.qweight[flat], self.scales[flat], None if self.mins is None else self.mins[flat],
                                self.group)
        return w.reshape(*ids.shape, self.in_features)

    def reference_forward(self, x: torch.Tensor, int8_activations: bool = False) -> torch.Tensor:
        """The pure-PyTorch product: dequantize, then F.linear (what the kernel is tested against); with
        `int8_activations`, x rounded per block of 32 first as the kernel's int8-dot path does."""
        if int8_activations:
            x = quant_kernel.quantize_activations(x)
        w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled() and x.requires_grad:
            return self.reference_forward(x)
        y = quant_kernel.linear(x, self)
        return self.reference_forward(x) if y is None else y

    def extra_repr(self) -> str:
        kind = (f"int8, group={self.int8_group}" if self.fmt == "int8" else
                f"int4, group={self.group}, symmetric={self.symmetric}")
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {kind}"


class QuantEmbedding(nn.Module):
    """A token embedding that reads rows of a quantized table (a tied head's `QuantLinear`): only the looked-up
    rows are dequantized, so no float copy of the table is kept. `scale` multiplies the rows (Gemma's
    sqrt(width), rounded to float32 as GemmaEmbedding does), None for none."""

    def __init__(self, table: QuantLinear, scale: float | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.scale = table.out_features, table.in_features, scale
        self._table = [table]  # a plain list, not a submodule: the table is registered (and saved) once, as the head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self._table[0].dequantized_rows(ids)  # (*ids.shape, emb)
        return rows if self.scale is None else rows * self.scale

    @classmethod
    def tied_to(cls, embedding: nn.Embedding, head: QuantLinear) -> QuantEmbedding:
        """The quantized replacement of `embedding` whose table is `head`'s (keeps GemmaEmbedding's factor)."""
        from llmscratch.model.gemma import GemmaEmbedding

        scale = None
        if isinstance(embedding, GemmaEmbedding):
            scale = float(torch.tensor(math.sqrt(embedding.embedding_dim), dtype=torch.float32))
        return cls(head, scale)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows of the quantized head, scale={self.scale}"


# ---- swapping a model's layers ----------------------------------------------------------------------------------

def quantizable_layers(model: nn.Module, head: bool = False) -> list[str]:
    """Names of the nn.Linear layers `quantize_model` swaps: every one inside the blocks, plus `head` if asked
    (a soft-capped head keeps its float weight: its cap lives in its forward)."""
    targets = ("blocks.*", "head") if head else ("blocks.*",)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and name_matches(n, targets)
            and (n == "head" and getattr(m, "cap", None) is None or n.startswith("blocks."))]


def check_spec(fmt: str, group: int = DEFAULT_GROUP) -> None:
    """UserError for an unknown format or int4 group size."""
    if fmt not in FORMATS:
        raise UserError(f"unknown quantization {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "int4" and group not in GROUPS:
        raise UserError(f"int4 group size must be one of {', '.join(map(str, GROUPS))}, got {group}")


def _tied_head(model: nn.Module) -> bool:
    """True when the model's head shares the token embedding's table."""
    emb, head = getattr(model, "tok_emb", None), getattr(model, "head", None)
    return isinstance(emb, nn.Embedding) and isinstance(head, nn.Linear) and head.weight is emb.weight


def tie_embedding(model: nn.Module) -> bool:
    """Make the token embedding read rows of the quantized head (`QuantEmbedding`) when the model ties them;
    returns whether it did. Call with the float tied embedding still in place, after the head was swapped."""
    emb, head = getattr(model, "tok_emb", None), getattr(model, "head", None)
    if not isinstance(head, QuantLinear) or not isinstance(emb, nn.Embedding) or not model.config.tie_embeddings:
        return False
    model.tok_emb = QuantEmbedding.tied_to(emb, head)
    return True


@torch.no_grad()
def quantize_model(model: nn.Module, fmt: str, group: int = DEFAULT_GROUP, symmetric: bool = False,
                   head: bool = False, head_format: str | None = None) -> nn.Module:
    """Swap the model's block Linears (and the head when `head`, in `head_format`, default `fmt`) for QuantLinears
    of `fmt`, in place.

    A tied head is quantized once and the embedding then reads rows of it (`QuantEmbedding`), so no float table
    is kept. Records the choice as `model.quantization` (a dict, saved as config.json's "quantization" entry).
    """
    head_format = head_format or fmt
    check_spec(fmt, group), check_spec(head_format, group)
    if getattr(model, "quantization", None):
        raise UserError(f"this model is already quantized ({model.quantization['format']})")
    tied = _tied_head(model)
    names = quantizable_layers(model, head)
    for name in names:
        lin = model.get_submodule(name)
        f = head_format if name == "head" else fmt
        if f == "int4" and lin.in_features % group:
            continue  # a layer whose width the group does not divide stays in float
        _set_submodule(model, name, QuantLinear.from_linear(lin, f, group, symmetric))
    embedding = tied and tie_embedding(model)
    model.quantization = describe(model, fmt, group, symmetric, head, head_format, embedding)
    return model


def describe(model: nn.Module, fmt: str, group: int | None, symmetric: bool, head: bool, head_format: str | None,
             embedding: bool = False) -> dict:
    """The `quantization` record of a quantized model: format, group, symmetric, head (and its format), whether the
    embedding reads the quantized head ("embedding"), and the quantized layer names. Format "gguf" (a GGUF file's
    own blocks, weights/gguf.py) lists each layer's own {"format", "group", "symmetric"} instead."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    record = {"format": fmt, "group": group if fmt == "int4" else None, "symmetric": symmetric or fmt == "int8",
              "head": head, "head_format": head_format if head else None, "embedding": embedding,
              "layers": list(layers)}
    if fmt == "gguf":
        record["layers"] = {n: {"format": m.fmt, "group": m.group if m.fmt == "int4" else m.int8_group,
                                "symmetric": m.symmetric} for n, m in layers.items()}
    return record


def quantize_loaded(model: nn.Module, fmt: str) -> nn.Module:
    """What `--quantize FMT` does: every block Linear to `fmt` (default group) and the head to HEAD_FORMAT[fmt]
    (int8 for int4: the head's errors go straight into the logits, as llama.cpp keeps its output tensor at
    higher precision); a model that was loaded already quantized must be in `fmt` (it cannot be requantized from
    its rounded weights)."""
    have = getattr(model, "quantization", None)
    if have:
        if have["format"] != fmt:
            raise UserError(f"the model was saved quantized as {have['format']}; it cannot be turned into {fmt}")
        return model
    if fmt == "gguf":
        raise UserError("quantize=gguf keeps a GGUF file's own quantized blocks: give a .gguf file (or a model "
                        "registered as one)", params="quantize")
    check_spec(fmt)
    return quantize_model(model, fmt, head=True, head_format=HEAD_FORMAT[fmt])


def _layer_specs(spec: dict) -> dict[str, tuple[str, int | None, bool]]:
    """{layer name: (format, group, symmetric)} of a saved `quantization` record; UserError when malformed."""
    fmt, layers = spec.get("format"), spec.get("layers")
    if fmt == "gguf" and isinstance(layers, dict):
        out = {}
        for name, d in layers.items():
            f, g = d.get("format") if isinstance(d, dict) else None, d.get("group") if isinstance(d, dict) else None
            check_spec(f, g or DEFAULT_GROUP)
            out[name] = (f, g, bool(d.get("symmetric")))
        return out
    group = spec.get("group") or DEFAULT_GROUP
    head_format = spec.get("head_format") or fmt
    check_spec(fmt, group), check_spec(head_format, group)
    if not isinstance(layers, list):
        raise UserError("the quantization record lacks its list of layers")
    return {name: ((f := head_format if name == "head" else fmt), group if f == "int4" else None,
                   bool(spec.get("symmetric"))) for name in layers}


def quantized_skeleton(model: nn.Module, spec: dict) -> nn.Module:
    """Swap the Linears named in `spec["layers"]` for empty QuantLinears (to load a saved quantized state into)."""
    tied = _tied_head(model)
    for name, (fmt, group, symmetric) in _layer_specs(spec).items():
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"quantized layer {name!r} is not in this model") from None
        if not isinstance(lin, nn.Linear):
            raise UserError(f"quantized layer {name!r} is not a Linear layer")
        dev = lin.weight.device
        q = QuantLinear(lin.in_features, lin.out_features, fmt, group, symmetric, lin.bias is not None,
                        None if dev.type == "meta" else dev)
        _set_submodule(model, name, q)
    if spec.get("embedding") and tied:
        tie_embedding(model)
    model.quantization = dict(spec)
    return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights, quantized or not: what its state dict holds (each memory once; tables the
    model computes, such as RoPE's, left out), as `model info` counts them."""
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


__all__ = [
    "FORMATS", "GROUPS", "QuantEmbedding", "QuantLinear", "check_spec", "dequantize_int4", "dequantize_int8",
    "pack_int4", "quantize_int4", "quantize_int8", "quantize_loaded", "quantize_model", "quantized_skeleton",
    "quantizable_layers", "tie_embedding", "unpack_int4",
]
