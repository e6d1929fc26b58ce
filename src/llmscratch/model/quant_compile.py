"""QuantLinear products that torch.compile can keep inside its graph.

Our C++ kernel (`quant_kernel`) is a load_inline extension: torch.compile cannot trace into it, so a compiled
decode step would break its graph at every quantized layer (measured: 1.5x slower than eager). Registered here
as torch custom ops (torch.library), with a "fake" function that gives the output's shape, the compiled step
calls them as single nodes. Eager calls are untouched: `compiled_forward` uses the ops only while compiling.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from llmscratch.model import quant_kernel


@torch.library.custom_op("llmscratch::int8_linear", mutates_args=())
def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (rows, in) @ int8 weight (out, in) with per-row scales -> (rows, out), through our kernel."""
    return quant_kernel.kernel().int8_linear(x, qweight, scales)


@int8_linear.register_fake
def _int8_linear_shape(x, qweight, scales):
    return x.new_empty(x.shape[0], qweight.shape[0])


@torch.library.custom_op("llmscratch::int4_linear", mutates_args=())
def int4_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                group: int) -> torch.Tensor:
    """x (rows, in) @ int4 weight (out, in / 2 packed) with group scales and minimums -> (rows, out)."""
    return quant_kernel.kernel().int4_linear(x, qweight, scales, mins, group)


@int4_linear.register_fake
def _int4_linear_shape(x, qweight, scales, mins, group):
    return x.new_empty(x.shape[0], qweight.shape[0])


def compiled_forward(self, x: torch.Tensor) -> torch.Tensor:
    """QuantLinear's forward, through the custom ops while torch.compile traces it (float32 CPU, few rows)."""
    rows = x.numel() // x.shape[-1]
    usable = x.device.type == "cpu" and x.dtype == torch.float32 and rows <= quant_kernel.MAX_ROWS
    if not torch.compiler.is_compiling() or not usable:
        return type(self).forward(self, x)
    x2 = x.reshape(rows, x.shape[-1]).contiguous()  # (rows, in)
    if self.fmt == "int8":
        y = torch.ops.llmscratch.int8_linear(x2, self.qweight, self.scales)
    else:
        y = torch.ops.llmscratch.int4_linear(x2, self.qweight, self.scales, self._kernel_mins, self.group)
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
        if m.fmt == "int4" and m._kernel_mins is None:  # what QuantLinear.forward makes on first use
            m._kernel_mins = m.mins if not m.symmetric else (-8.0 * m.scales).contiguous()
        m.forward = types.MethodType(compiled_forward, m)
    return len(layers)
