"""One batch-1 product x (1, 768) @ W^T, W (3072, 768), by every way of multiplying quantized weights we tried.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/bench_quant_kernels.py --threads 2 --repeats 7

Variants (interleaved rounds, median ms per product; the same matrix repeated, so mostly from cache):
float32 F.linear; int8 converted to float32 then F.linear; torch's `_weight_int8pack_mm`; a torch.compile'd fused
dequantize-and-dot (gpt-fast's int8 path, inductor's C++ backend; skipped with --no-compile); our C++ kernel
(model/quant_kernel.py) for int8 and int4 (group 32); our int4 reference (unpack, dequantize, F.linear).
Prints the machine's load first: on a shared machine figures move.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llmscratch.model import quant_kernel  # noqa: E402
from llmscratch.model.quant import QuantLinear  # noqa: E402


def timed(fn, inner: int) -> float:
    """Milliseconds per call over `inner` calls."""
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) * 1000 / inner


def variants(x, lin, compile_: bool) -> dict:
    w = lin.weight.detach()
    q8 = QuantLinear.from_linear(lin, "int8")
    q4 = QuantLinear.from_linear(lin, "int4", 32)
    wq, s = q8.qweight, q8.scales
    out = {
        "float32 F.linear": lambda: F.linear(x, w),
        "int8 -> float32, then F.linear": lambda: F.linear(x, wq.to(torch.float32)) * s,
        "ours int8 (C++ kernel)": lambda: q8(x),
        "ours int4 g32 (C++ kernel)": lambda: q4(x),
        "ours int4 g32 (reference: dequantize + F.linear)": lambda: q4.reference_forward(x),
    }
    if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        out["torch _weight_int8pack_mm"] = lambda: torch.ops.aten._weight_int8pack_mm(x, wq, s)
    if compile_:
        def fused(x, wq, s):
            return F.linear(x, wq.to(x.dtype)) * s  # inductor fuses the conversion into the dot

        cf = torch.compile(fused, dynamic=False)
        try:
            cf(x, wq, s)
            out["torch.compile fused int8 (gpt-fast)"] = lambda: cf(x, wq, s)
        except Exception as e:  # no compiler or an inductor failure: say so, measure the rest
            print(f"torch.compile variant skipped: {str(e).splitlines()[0][:160]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--inner", type=int, default=200, help="products per round and variant")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to build)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.threads} threads; "
          f"kernel: {quant_kernel.status()}")
    torch.manual_seed(0)
    lin = torch.nn.Linear(768, 3072, bias=False)
    x = torch.randn(1, 768)
    with torch.no_grad():
        vs = variants(x, lin, not args.no_compile)
        times = {k: [] for k in vs}
        for fn in vs.values():
            timed(fn, 20)  # warm-up
        for _ in range(args.repeats):
            for k, fn in vs.items():
                times[k].append(timed(fn, args.inner))
    base = statistics.median(times["float32 F.linear"])
    print(f"{'variant':52s} {'ms':>8s} {'vs float32':>10s}")
    for k, t in times.items():
        m = statistics.median(t)
        print(f"{k:52s} {m:8.3f} {base / m:9.2f}x")


if __name__ == "__main__":
    main()
