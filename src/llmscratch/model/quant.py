"""Weight-only quantization: int8 (per output channel, symmetric) and int4 (group-wise) Linear weights.

Formats (the weight W is (out, in); activations stay float):
- "int8": q = round(W / s), s = max|W[o]| / 127 per output row o, q in [-127, 127] (int8, (out, in)).
- "int4": groups of `group` (32, 64 or 128) consecutive inputs; asymmetric: W ~ n * s + m with n in 0..15,
  s = (max - min) / 15, m = min per group (llama.cpp's Q4_1); symmetric: W ~ (n - 8) * s, s = max|W| / -8
  signed toward the largest magnitude (Q4_0), stored without minimums. Two values per byte: in each group,
  byte j holds element j in its low nibble and element j + group/2 in its high nibble (GGUF's block order),
  so `qweight` is uint8 (out, in / 2), `scales` (out, in / group), `mins` (out, in / group) when asymmetric.

`quantize_model(model, "int8")` swaps every block nn.Linear (and the head if `head=True`) for a `QuantLinear`,
in place, like LoRA's wrapping: the model files stay untouched. A `QuantLinear` multiplies through our C++
kernel (model/quant_kernel.py) when it is available and otherwise through the pure-PyTorch reference
(dequantize, then F.linear); both give the same products to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.lora import _set_submodule, name_matches
from llmscratch.utils import UserError

FORMATS = ("int8", "int4")
GROUPS = (32, 64, 128)
DEFAULT_GROUP = 32
HEAD_FORMAT = {"int8": "int8", "int4": "int8"}  # the head's format under `--quantize FMT`


# ---- int8: per output channel, symmetric ----------------------------------------------------------------------

def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (out, in), scales float32 (out,)) with w ~ q * scales[:, None]."""
    w = w.detach().float()
    scales = w.abs().amax(dim=1) / 127.0  # (out,)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero row: any scale works
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 (out, in) from `quantize_int8`'s output."""
    return q.float() * scales.float()[:, None]


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
    """(qweight uint8 (out, in/2), scales (out, in/group), mins (out, in/group) or None when `symmetric`)."""
    out, inp = w.shape
    _check_group(inp, group)
    g = w.detach().float().reshape(out, inp // group, group)  # (out, groups, group)
    if symmetric:  # Q4_0: the value of largest magnitude maps to -8, so both signs use the full range
        idx = g.abs().argmax(dim=2, keepdim=True)
        scales = (g.gather(2, idx) / -8.0).squeeze(2)  # (out, groups)
        safe = torch.where(scales != 0, scales, torch.ones_like(scales))
        n = torch.round(g / safe[..., None] + 8).clamp_(0, 15)
        mins = None
    else:  # Q4_1: 16 levels from the group's minimum to its maximum
        lo, hi = g.amin(dim=2), g.amax(dim=2)
        scales = (hi - lo) / 15.0
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        n = torch.round((g - lo[..., None]) / safe[..., None]).clamp_(0, 15)
        mins = lo
    return pack_int4(n.reshape(out, inp), group), scales, mins


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


# ---- the module -----------------------------------------------------------------------------------------------

class QuantLinear(nn.Module):
    """A Linear layer whose weight is stored quantized (see the module docstring); inference only.

    Buffers: `qweight`, `scales`, `mins` (int4 asymmetric only) and `bias` (when the layer has one): they are what
    the state dict (and a saved quantized folder) holds.
    """

    def __init__(self, in_features: int, out_features: int, fmt: str, group: int = DEFAULT_GROUP,
                 symmetric: bool = False, bias: bool = False, device=None):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown quantization format {fmt!r}; known: {', '.join(FORMATS)}")
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.group = group if fmt == "int4" else in_features
        self.symmetric = symmetric or fmt == "int8"
        if fmt == "int8":
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.ones(out_features, device=device))
        else:
            _check_group(in_features, group)
            groups = in_features // group
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scales", torch.ones(out_features, groups, device=device))
            if not symmetric:
                self.register_buffer("mins", torch.zeros(out_features, groups, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._kernel_mins: torch.Tensor | None = None  # int4 symmetric: -8 * scales, made on first use

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, group: int = DEFAULT_GROUP,
                    symmetric: bool = False) -> QuantLinear:
        """Quantize `linear`'s weight (float) into a new QuantLinear on the same device."""
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, fmt, group, symmetric, linear.bias is not None, w.device)
        q.load_weight(w)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q

    @torch.no_grad()
    def load_weight(self, w: torch.Tensor) -> None:
        """Quantize float weight `w` (out, in) into this layer's buffers."""
        if self.fmt == "int8":
            q, s = quantize_int8(w)
            self.qweight.copy_(q), self.scales.copy_(s)
        else:
            q, s, m = quantize_int4(w, self.group, self.symmetric)
            self.qweight.copy_(q), self.scales.copy_(s)
            if m is not None:
                self.mins.copy_(m)
        self._kernel_mins = None

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer multiplies by."""
        if self.fmt == "int8":
            return dequantize_int8(self.qweight, self.scales)
        return dequantize_int4(self.qweight, self.scales, getattr(self, "mins", None), self.group)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pure-PyTorch product: dequantize, then F.linear (what the kernel is tested against)."""
        w = self.dequantized_weight().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from llmscratch.model import quant_kernel

        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled() and x.requires_grad:
            return self.reference_forward(x)
        if self.fmt == "int4" and self._kernel_mins is None:
            self._kernel_mins = self.mins if not self.symmetric else (-8.0 * self.scales).contiguous()
        y = quant_kernel.linear(x, self)
        return self.reference_forward(x) if y is None else y

    def extra_repr(self) -> str:
        kind = self.fmt if self.fmt == "int8" else f"int4, group={self.group}, symmetric={self.symmetric}"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {kind}"


# ---- swapping a model's layers ----------------------------------------------------------------------------------

def quantizable_layers(model: nn.Module, head: bool = False) -> list[str]:
    """Names of the nn.Linear layers `quantize_model` swaps: every one inside the blocks, plus `head` if asked."""
    targets = ("blocks.*", "head") if head else ("blocks.*",)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and name_matches(n, targets)
            and (n == "head" or n.startswith("blocks."))]


def check_spec(fmt: str, group: int = DEFAULT_GROUP) -> None:
    """UserError for an unknown format or int4 group size."""
    if fmt not in FORMATS:
        raise UserError(f"unknown quantization {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "int4" and group not in GROUPS:
        raise UserError(f"int4 group size must be one of {', '.join(map(str, GROUPS))}, got {group}")


@torch.no_grad()
def quantize_model(model: nn.Module, fmt: str, group: int = DEFAULT_GROUP, symmetric: bool = False,
                   head: bool = False, head_format: str | None = None) -> nn.Module:
    """Swap the model's block Linears (and the head when `head`, in `head_format`, default `fmt`) for QuantLinears
    of `fmt`, in place.

    A tied head is quantized on its own (the embedding keeps its float table for lookups). Records the choice
    as `model.quantization` (a dict, saved as config.json's "quantization" entry).
    """
    head_format = head_format or fmt
    check_spec(fmt, group), check_spec(head_format, group)
    if getattr(model, "quantization", None):
        raise UserError(f"this model is already quantized ({model.quantization['format']})")
    names = quantizable_layers(model, head)
    for name in names:
        lin = model.get_submodule(name)
        f = head_format if name == "head" else fmt
        if f == "int4" and lin.in_features % group:
            continue  # a layer whose width the group does not divide stays in float
        _set_submodule(model, name, QuantLinear.from_linear(lin, f, group, symmetric))
    model.quantization = describe(model, fmt, group, symmetric, head, head_format)
    return model


def describe(model: nn.Module, fmt: str, group: int, symmetric: bool, head: bool, head_format: str) -> dict:
    """The `quantization` record of a quantized model: format, group, symmetric, head (and its format), and the
    quantized layer names."""
    layers = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    return {"format": fmt, "group": group if fmt == "int4" else None, "symmetric": symmetric or fmt == "int8",
            "head": head, "head_format": head_format if head else None, "layers": layers}


def quantize_loaded(model: nn.Module, fmt: str) -> nn.Module:
    """What `--quantize FMT` does: every block Linear to `fmt` (default group) and the head to HEAD_FORMAT[fmt]
    (int8 for int4: the head's errors go straight into the logits, as llama.cpp keeps its output tensor at
    higher precision); a model that was
    loaded already quantized must be in `fmt` (it cannot be requantized from its rounded weights)."""
    check_spec(fmt)
    have = getattr(model, "quantization", None)
    if have:
        if have["format"] != fmt:
            raise UserError(f"the model was saved quantized as {have['format']}; it cannot be turned into {fmt}")
        return model
    return quantize_model(model, fmt, head=True, head_format=HEAD_FORMAT[fmt])


def quantized_skeleton(model: nn.Module, spec: dict) -> nn.Module:
    """Swap the Linears named in `spec["layers"]` for empty QuantLinears (to load a saved quantized state into)."""
    fmt, group = spec.get("format"), spec.get("group") or DEFAULT_GROUP
    head_format = spec.get("head_format") or fmt
    check_spec(fmt, group), check_spec(head_format, group)
    for name in spec["layers"]:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"quantized layer {name!r} is not in this model") from None
        if not isinstance(lin, nn.Linear):
            raise UserError(f"quantized layer {name!r} is not a Linear layer")
        dev = lin.weight.device
        q = QuantLinear(lin.in_features, lin.out_features, head_format if name == "head" else fmt, group,
                        bool(spec.get("symmetric")), lin.bias is not None, None if dev.type == "meta" else dev)
        _set_submodule(model, name, q)
    model.quantization = describe(model, fmt, group, bool(spec.get("symmetric")), bool(spec.get("head")),
                                  head_format)
    return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (each tensor once): the model's weight memory."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


__all__ = [
    "FORMATS", "GROUPS", "QuantLinear", "check_spec", "dequantize_int4", "dequantize_int8", "pack_int4",
    "quantize_int4", "quantize_int8", "quantize_loaded", "quantize_model", "quantized_skeleton", "quantizable_layers",
    "unpack_int4",
]
