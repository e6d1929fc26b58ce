"""Batch-1 (and few-row) products on SmolLM2-135M's real shapes, weights streamed from memory, by every way of
multiplying we have: GB/s of weights read per variant.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/bench_quant_kernels.py --threads 2 --repeats 5

Shapes (in -> out) as one decode step meets them, 30 layers each (distinct matrices, so the weights do not stay in
the core caches): 576 -> 960 (q, k, v fused), 576 -> 576 (attention output), 576 -> 1536 (gate, up), 1536 -> 576
(down), and the head 576 -> 49152 once. GB/s: bytes of weights per wall second; GB/cpu-s: per second of this
process's CPU time (all its threads), which a busy machine disturbs less.
Variants: float32 `F.linear` (MKL), our float32 kernel, our int8 per row,
int8 in groups of 32 (GGUF Q8_0), int4 group 32 asymmetric (Q4_1) and symmetric (Q4_0), all from
model/quant_kernel.py. Interleaved rounds, medians; the machine's load is printed first (on a shared machine
figures move: read the ratios).
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
from llmscratch.model.quant import QuantLinear, quantize_int8  # noqa: E402

SHAPES = {"qkv 576->960": (576, 960, 30), "proj 576->576": (576, 576, 30), "gate/up 576->1536": (576, 1536, 60),
          "down 1536->576": (1536, 576, 30), "head 576->49152": (576, 49152, 1)}


def layers(k: int, n: int, count: int) -> dict:
    """{variant: (list of `count` callables x -> y, bytes of weights per product)}."""
    torch.manual_seed(0)
    ws = [torch.randn(n, k) / k**0.5 for _ in range(count)]
    out = {"float32 F.linear (MKL)": ([lambda x, w=w: F.linear(x, w) for w in ws], n * k * 4),
           "float32 ours": ([lambda x, w=w: quant_kernel.float_linear(x, w) for w in ws], n * k * 4)}
    variants = {"int8 per row": ("int8", None, True), "int8 group 32 (Q8_0)": ("int8", 32, True),
                "int4 g32 asym (Q4_1)": ("int4", 32, False), "int4 g32 sym (Q4_0)": ("int4", 32, True)}
    for name, (fmt, group, sym) in variants.items():
        qs = []
        for w in ws:
            lin = torch.nn.Linear(k, n, bias=False)
            lin.weight.data = w
            if fmt == "int8" and group:
                q, s = quantize_int8(w, group)
                qs.append(QuantLinear.from_tensors(q, s, None, "int8", group))
            else:
                qs.append(QuantLinear.from_linear(lin, fmt, 32, sym))
        size = sum(t.numel() * t.element_size() for t in (qs[0].qweight, qs[0].scales, qs[0].mins) if t is not None)
        out[name] = (qs, size)
    del ws
    return out


def timed(fns, x, inner: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per product, running every callable of `fns` in turn, `inner`
    times. CPU time leaves out the time other processes had the cores: on a busy machine it is the steadier one."""
    t, c = time.perf_counter(), time.process_time()
    for _ in range(inner):
        for f in fns:
            f(x)
    n = inner * len(fns)
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1, help="input rows per product (1 = decode)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--inner", type=int, default=5, help="passes over the layers per round and variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.threads} threads; {args.rows} "
          f"row(s); kernel: {quant_kernel.status()}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    step: dict[str, float] = {}
    with torch.no_grad():
        for shape, (k, n, count) in SHAPES.items():
            vs = layers(k, n, count)
            x = torch.randn(args.rows, k)
            times = {name: [] for name in vs}
            cpu = {name: [] for name in vs}
            for fns, _ in vs.values():
                timed(fns, x, 1)  # warm-up
            for _ in range(args.repeats):
                for name, (fns, _) in vs.items():
                    wall, c = timed(fns, x, args.inner)
                    times[name].append(wall), cpu[name].append(c)
            print(f"\n{shape} x{count}   {'us':>8s} {'GB/s':>7s} {'vs MKL':>7s} {'GB/cpu-s':>9s} {'vs MKL':>7s}")
            base = statistics.median(times["float32 F.linear (MKL)"])
            cbase = statistics.median(cpu["float32 F.linear (MKL)"])
            for name, (_fns, size) in vs.items():
                t, c = statistics.median(times[name]), statistics.median(cpu[name])
                step[name] = step.get(name, 0.0) + t * count
                print(f"  {name:24s} {t * 1e6:8.1f} {size / t / 1e9:7.1f} {base / t:6.2f}x {size / c / 1e9:9.1f} "
                      f"{cbase / c:6.2f}x")
            del vs
    print(f"\nall products of one SmolLM2 decode step (210 block products + head), ms (load "
          f"{os.getloadavg()[0]:.2f} at the end):")
    for name, t in step.items():
        print(f"  {name:24s} {t * 1e3:7.2f}")


if __name__ == "__main__":
    main()
