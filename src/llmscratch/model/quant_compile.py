"""QuantLinear products that torch.compile can keep inside its graph.

Our C++ kernel (`quant_kernel`) is a compiled extension: torch.compile cannot trace into it, so a compiled
decode step would break its graph at every quantized layer (measured: 1.5x slower than eager). Registered here
as torch custom ops (torch.library), with a "fake" function that gives the output's shape, the compiled step
calls them as single nodes. Eager calls are untouched: `compiled_forward` uses the ops only while compiling.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from llmscratch.model import quant_kernel


@torch.library.custom_op("llmscratch::q8_linear", mutates_args=())
def q8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group: int, int8_x: bool) -> torch.Tensor:
    """x (rows, in) @ int8 weight (out, in) with scales per row or per group -> (rows, out), through our kernel."""
    return quant_kernel.kernel().q8_linear(x, qweight, scales, group, int8_x)


@q8_linear.register_fake
def _q8_linear_shape(x, qweight, scales, group, int8_x):
    return x.new_empty(x.shape[0], qweight.shape[0])


@torch.library.custom_op("llmscratch::q4_linear", mutates_args=())
def q4_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None,
              group: int, int8_x: bool) -> torch.Tensor:
    """x (rows, in) @ int4 weight (out, in / 2 packed) with group scales and minimums (None: symmetric)."""
    return quant_kernel.kernel().q4_linear(x, qweight, scales, mins, group, int8_x)


@q4_linear.register_fake
def _q4_linear_shape(x, qweight, scales, mins, group, int8_x):
    return x.new_empty(x.shape[0], qweight.shape[0])


def compiled_forward(self, x: torch.Tensor) -> torch.Tensor:
    """QuantLinear's forward, through the custom ops while torch.compile traces it (float32 CPU, few rows); the
    same kernel calls as `quant_kernel.linear`."""
    rows = x.numel() // x.shape[-1]
    usable = x.device.type == "cpu" and x.dtype == torch.float32 and rows <= quant_kernel.MAX_ROWS
    if not torch.compiler.is_compiling() or not usable:
        return type(self).forward(self, x)
    x2 = x.reshape(rows, x.shape[-1]).contiguous()  # (rows, in)
    if self.fmt == "int8":
        y = torch.ops.llmscratch.q8_linear(x2, self.qweight, self.scales, self.group, self.int8_activations)
    else:
        y = torch.ops.llmscratch.q4_linear(x2, self.qweight, self.scales, self.mins, self.group,
                                           self.int8_activations)
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], self.out_features)  # (..., out)


def use_compiled_ops(model: nn.Module) -> int:
    """Give every QuantLinear of `model` `compiled_forward` (when our kernel is built); returns how many."""
    from llmscratch.model.quant import QuantLinear

    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers or quant_kernel.kernel() is None or any(m.in_features % 32 for m in layers):
        return 0
    for m in layers:
        m.int8_activations = quant_kernel.int8_activations(m)  # decided now: the traced forward reads a bool
        m.forward = types.MethodType(compiled_forward, m)
    return len(layers)
