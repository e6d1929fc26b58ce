"""Our C++ kernels for small-batch (decode) products: y = x @ W^T for int8, int4 and float32 weights W, without
making a quantized W float.

The sources are `model/csrc/quant_kernels.cpp` (the products; plain C++ with x86 intrinsics: AVX-512, AVX2 + FMA,
or a plain loop, chosen at compile time for the build machine) and `quant_bind.cpp` (Python bindings; output rows
are split over torch's threads). They are built once at first use with `torch.utils.cpp_extension.load` (ninja)
into a folder named by a fingerprint of the sources under ~/.cache/torch_extensions (or $TORCH_EXTENSIONS_DIR),
from which later processes import the built module directly. Up to `PASS_ROWS` input rows (a short prompt) the
kernel runs in passes of `MAX_ROWS` rows; for more (a long prefill, compute-bound) a quantized weight is
dequantized in C++ and F.linear multiplies. When no C++ compiler is found,
callers fall back to the pure-PyTorch reference (dequantize, then F.linear) and `status()` says why.

Int8 activations: where the CPU has AVX-512 VNNI, a batch-1..8 product with an int8 weight in groups of 32
(GGUF's Q8_0, Q5_0) or with one scale per row (`--quantize int8`), or an int4 group-32 weight (Q4_0, Q4_1,
Q4_K) quantizes x to int8 per block of 32 (scale max|x| / 127, as llama.cpp's Q8 activations) and multiplies 32
bytes by 32 bytes with one `vpdpbusd` instead of converting every weight to float. Products of more rows then
quantize x the same way (`quantize_activations`), so a prefill and the decode steps after it compute the same
function. LLMSCRATCH_INT8_ACTIVATIONS=0 keeps x float32.

The same extension holds the small ops of an inference step (csrc/decode_ops.cpp, `inference_ops`): RMSNorm,
silu(gate) * up and a decode step's attention, one call each where PyTorch takes several ops.

LLMSCRATCH_QUANT_KERNEL=0 uses the reference only; =avx2, =plain or =novnni builds that path instead of the native
one (to test the fallbacks on an AVX-512 machine).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

MAX_ROWS = 8  # input rows per kernel call
# up to this many input rows (a short prompt), the kernel in passes of MAX_ROWS; above, dequantize + F.linear (a
# float matmul). SmolLM2 gguf, 2 threads: a 16-token prefill 84 ms in passes against 258 ms dequantized; 64: 297/408
PASS_ROWS = 64
SOURCES = Path(__file__).with_name("csrc")
_FLAGS = {"native": ["-march=native"], "avx2": ["-mavx2", "-mfma", "-mf16c"], "plain": [],
          "novnni": ["-march=native", "-mno-avx512vnni", "-mno-avxvnni"]}
# LLMSCRATCH_INFERENCE_OPS=0: PyTorch ops for RMSNorm, SwiGLU and decode attention even where ours apply
INFERENCE_OPS = os.environ.get("LLMSCRATCH_INFERENCE_OPS", "1") != "0"
_lock = threading.Lock()
_looked = False  # kernel(build=False) looked for an earlier build
_module = None
_status = "not built yet"


def _build_dir(name: str, flags: list[str]) -> Path:
    """Our build folder beside torch's extension cache, named by a fingerprint of the sources, flags, torch and
    Python versions: a changed source builds afresh, an unchanged one loads without asking ninja."""
    import hashlib
    import sys

    h = hashlib.sha256(f"{name} {flags} {torch.__version__} {sys.version_info[:2]}".encode())
    for f in sorted(SOURCES.iterdir()):
        if f.suffix in (".cpp", ".h"):
            h.update(f.name.encode() + f.read_bytes())
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / f"{name}-{h.hexdigest()[:16]}"


def _import_built(name: str, folder: Path):
    """The extension module built earlier in `folder`, imported directly (no build tools loaded); None if absent."""
    import importlib.util

    so = folder / f"{name}.so"
    if not so.is_file():
        return None
    spec = importlib.util.spec_from_file_location(name, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _name_and_flags(choice: str) -> tuple[str, list[str]]:
    """The extension's name and compiler flags for LLMSCRATCH_QUANT_KERNEL=`choice` (native, avx2, plain...)."""
    isa = choice if choice in _FLAGS else "native"
    return f"llmscratch_kernels_v5_{isa}", ["-O3", "-std=c++17", *_FLAGS[isa]]


def _load(compile_missing: bool) -> None:
    """Set `_module` (and `_status`) from our build on this machine; without one, compile it when
    `compile_missing`, else leave everything as it was (nothing is said of a build that was not asked for)."""
    global _module, _status
    choice = os.environ.get("LLMSCRATCH_QUANT_KERNEL", "1")
    if choice == "0":
        if compile_missing:
            _status = "off (LLMSCRATCH_QUANT_KERNEL=0): pure-PyTorch reference"
        return
    name, flags = _name_and_flags(choice)
    folder = _build_dir(name, flags)
    failed = folder / "build-failed.txt"  # a failed build is not retried by every process: delete it to retry
    try:
        try:
            _module = _import_built(name, folder)
        except ImportError:  # a cut or stale build product: build again
            _module = None
        if _module is None and compile_missing:
            if failed.is_file():
                raise RuntimeError(failed.read_text().strip() + f" (recorded in {failed})")
            _module = _compile(name, flags, folder, failed)
    except Exception as e:  # no compiler, no headers, a failed build: the reference still works
        _module = None
        _status = f"pure-PyTorch reference (C++ kernel build failed: {str(e).splitlines()[0][:200]})"
    if _module is not None:
        _status = f"C++ kernel, {_module.simd()}"


def _compile(name: str, flags: list[str], folder: Path, failed: Path):
    """Build the extension into `folder` (torch's ninja build); a failure is written to `failed` and raised."""
    import shutil
    import sys

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler}) on PATH")
    print("llmscratch: building our C++ kernels (once per machine, about a minute)...", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    from torch.utils.cpp_extension import load

    try:
        return load(name=name, sources=[str(SOURCES / f) for f in ("quant_bind.cpp", "quant_kernels.cpp",
                                                                      "decode_ops.cpp", "thread_pool.cpp",
                                                                      "decode_layers.cpp")],
                    extra_include_paths=[str(SOURCES)], extra_cflags=flags, build_directory=str(folder),
                    verbose=False)
    except Exception as e:
        failed.write_text(f"the C++ kernel build failed: {str(e).splitlines()[0][:300]}\n")
        raise


def kernel(build: bool = True):
    """The compiled extension module, built on first call; None when it cannot be built (see `status`).

    build=False: only a module built earlier on this machine, imported (never compiled here); None if there is none
    yet. The decode ops of float models ask this way, so that no one waits a minute for a build in the middle of
    other work (a training run's text samples); `generate`, `chat`, `serve`, `bench generate` and every quantized
    layer build it."""
    global _status, _looked
    if _module is None and _status == "not built yet" and (build or not _looked):
        with _lock:
            if _module is None and _status == "not built yet":
                if build:
                    _status = "building"
                    _load(compile_missing=True)
                elif not _looked:
                    _looked = True
                    _load(compile_missing=False)
    return _module


# `generate` moves the weights to 2 MB pages (`prepare_decoding`) when it makes at least this many new tokens.
# Measured on SmolLM2 here (a 2-core VM, where each new 2 MB page takes 2.5-3.5 ms to fault in): the move costs
# 0.2-0.3 s for the Q4_1 file's 94 MB of weights and about 1 s for float32's 542 MB, and saves 5-17% of every step
# (0.5-1 ms), so it pays from about 300 tokens for quantized weights and 1,000 for float32.
HUGE_PAGES_MIN_TOKENS = 512


def prepare_decoding(device: torch.device | str, model: torch.nn.Module | None = None,
                     huge_pages: bool = False) -> int:
    """Before a command decodes on `device`: on the CPU, build our kernels now if this machine has none (once,
    about a minute, said on stderr), so that the decode ops of float models are there from the first token.
    Where they cannot be built, `model`'s Linear weights are stored (in, out), the layout torch's own matmul
    multiplies one row by fastest here (`model.base.set_weight_layout`).

    `huge_pages`: for processes that decode for a while (a chat session, a long generation), `model`'s weights
    then move to memory on 2 MB pages (`model.base.move_to_huge_pages`): every step 5-17% faster, for a one-time
    cost (see HUGE_PAGES_MIN_TOKENS). Returns the bytes moved."""
    if torch.device(device).type != "cpu":
        return 0
    if kernel() is None and model is not None:
        from llmscratch.model.base import set_weight_layout

        set_weight_layout(model)
    if not huge_pages or model is None:
        return 0
    from llmscratch.model.base import move_to_huge_pages

    return move_to_huge_pages(model)


def inference_ops(x: torch.Tensor):
    """The compiled module when `x` may go through our fused inference ops (`rms_norm`, `silu_mul`,
    `decode_attention` of csrc/decode_ops.cpp): float32 on the CPU, 1..MAX_ROWS rows (a decode step, where per-op
    overhead is the cost; inputs of more rows, as most prefills and every training step, keep PyTorch's ops), no
    gradients wanted, not being traced by torch.compile. None otherwise, or when there is no kernel (callers then
    run PyTorch ops)."""
    if (not INFERENCE_OPS or x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled()
            or not 0 < x.numel() <= MAX_ROWS * x.shape[-1] or torch.compiler.is_compiling()):
        return None
    return _module if _module is not None else kernel(build=False)


def status() -> str:
    """Which kernel quantized layers use, in words (builds the kernel first if needed)."""
    kernel()
    return _status


def int8_activations(layer) -> bool:
    """True when `layer` (a QuantLinear) multiplies int8-quantized activations (see the module docstring)."""
    mod = _module if _module is not None else kernel()
    if mod is None or not mod.has_vnni() or os.environ.get("LLMSCRATCH_INT8_ACTIVATIONS", "1") == "0":
        return False
    # int4 or int8 in groups of 32, and int8 with one scale per row (x still in blocks of 32: since the decode
    # step lost its per-op overhead, this is 2.5x faster than converting every weight to float)
    per_row_int8 = layer.fmt == "int8" and layer.group == layer.in_features
    return layer.in_features % 32 == 0 and (layer.group == 32 or per_row_int8)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) rounded as the int8-dot path sees it: per block of 32, round(x / d) * d with d = max|x| / 127."""
    b = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)  # (..., blocks, 32)
    d = b.abs().amax(dim=-1, keepdim=True) / 127.0
    q = torch.where(d > 0, torch.round(b / torch.where(d > 0, d, torch.ones_like(d))), torch.zeros_like(b))
    return (q * d).reshape(x.shape)


def dequantize(layer) -> torch.Tensor:
    """The float32 weight (out, in) of `layer` (a QuantLinear), made in C++."""
    mod = kernel()
    if layer.fmt == "int8":
        return mod.q8_dequant(layer.qweight, layer.scales, layer.group)
    return mod.q4_dequant(layer.qweight, layer.scales, getattr(layer, "mins", None), layer.group)


def linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """x (..., in) float32 CPU through `layer`'s (a QuantLinear) kernel; None when the caller must use the
    reference (no kernel)."""
    mod = _module if _module is not None else kernel()
    if mod is None:
        return None
    k = x.shape[-1]
    rows = x.numel() // k
    int8_x = _int8_x(layer)
    if rows > PASS_ROWS or rows == 0:  # compute-bound (or empty): the float weight (in C++), then F.linear
        return torch.nn.functional.linear(quantize_activations(x) if int8_x else x, dequantize(layer), layer.bias)
    x2 = x.reshape(rows, k)  # (rows, in)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if rows > MAX_ROWS:  # a short prefill: the kernel in passes of MAX_ROWS rows
        y = torch.cat([_kernel_rows(mod, x2[i : i + MAX_ROWS], layer, int8_x) for i in range(0, rows, MAX_ROWS)])
    else:
        y = _kernel_rows(mod, x2, layer, int8_x)
    if layer.bias is not None:
        y += layer.bias
    return y.view(*x.shape[:-1], layer.out_features)  # (..., out)


def _kernel_rows(mod, x2: torch.Tensor, layer, int8_x: bool) -> torch.Tensor:
    """x2 (1..MAX_ROWS, in) contiguous through `layer`'s kernel, without the bias: (rows, out)."""
    if layer.fmt == "int8":
        return mod.q8_linear(x2, layer.qweight, layer.scales, layer.group, int8_x)
    return mod.q4_linear(x2, layer.qweight, layer.scales, layer.mins, layer.group, int8_x)


def kernel_args(layer) -> tuple | None:
    """`layer` (our Linear or a QuantLinear) as csrc/decode_layers.cpp takes it: (kind 0 float32 / 1 int8 / 2
    int4, weight, scales, mins, group, int8 activations, bias); None where a decode product of `layer` would not
    be our kernel's (another class, dtype or layout)."""
    from llmscratch.model.quant import QuantLinear

    if type(layer) is Linear:
        return (0, layer.weight, None, None, 0, False, layer.bias) if _float_kernel_takes(layer.weight) else None
    if type(layer) is QuantLinear:
        int4 = layer.fmt == "int4"
        return (1 + int4, layer.qweight, layer.scales, layer.mins if int4 else None, layer.group, _int8_x(layer),
                layer.bias)
    return None


def _int8_x(layer) -> bool:
    """`int8_activations(layer)`, decided once per layer (kept on it)."""
    if layer.int8_activations is None:
        layer.int8_activations = int8_activations(layer)
    return layer.int8_activations


def _float_kernel_takes(weight: torch.Tensor) -> bool:
    """Whether our float32 kernel multiplies by `weight` (out, in): float32, contiguous, in % 16 == 0."""
    return weight.dtype == torch.float32 and weight.is_contiguous() and weight.shape[1] % 16 == 0


def float_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """x (..., in) @ weight (out, in)^T with our float32 kernel for 1..MAX_ROWS rows; None when it does not
    apply (no kernel, more rows, another dtype or layout, gradients wanted)."""
    k = x.shape[-1]
    rows = x.numel() // k
    mod = _module if _module is not None else kernel()
    if (mod is None or not 1 <= rows <= MAX_ROWS or x.dtype != torch.float32 or not _float_kernel_takes(weight)
            or x.device.type != "cpu" or torch.is_grad_enabled()):
        return None
    x2 = x.reshape(rows, k)
    y = mod.f32_linear(x2 if x2.is_contiguous() else x2.contiguous(), weight)
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(torch.nn.Linear):
    """nn.Linear whose float32 CPU products of 1..MAX_ROWS rows without gradients (decode steps) go through our
    float32 kernel (`float_linear`: on a 2-core EPYC 1.6-2.4x torch's own for SmolLM2's shapes); every other
    product (training, prefill, other dtypes and devices) is torch's F.linear. Parameters and state dicts are
    nn.Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if inference_ops(x) is not None:
            y = float_linear(x, self.weight, self.bias)
            if y is not None:
                return y
        return torch.nn.functional.linear(x, self.weight, self.bias)

