"""Milliseconds per batch-1 decode step (one token through the model with a KV cache), eager or compiled.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_decode_step.py --model smollm2-135m-instruct --quantize int8
    ... --compile          # the compiled decode step (generate.compiled_decode_step): first-call and steady figures
    ... --profile          # a torch.profiler table of 10 steps (self CPU time per op)
    ... --small-pages      # weights left on 4 KB pages (by default on 2 MB pages, as serve and chat decode)

Prints the load, then the median ms/step of each round, the best round and the fastest single step (the least
disturbed by other work on a shared machine). Positions advance every step as in real decoding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def decode_step(model, ids, cache, positions):
    """generate.decode_step (written out: this script also times older checkouts that lack it)."""
    return model(ids, cache, positions, last_only=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="time the compiled decode step")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--small-pages", action="store_true",
                   help="leave the weights on 4 KB pages (serve and chat move them to 2 MB pages)")
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    from llmscratch.weights import load_model

    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads, torch {torch.__version__}")
    model = load_model(args.model, progress=False, quantize=args.quantize).model.eval()
    try:  # what generate does before decoding (keeps our float32 kernel's layout where it is built)
        from llmscratch.model.quant_kernel import prepare_decoding
    except ImportError:  # older checkouts: the (in, out) layout for torch's matmul
        from llmscratch.model.base import set_weight_layout

        if not args.quantize:
            set_weight_layout(model)
    else:
        import inspect

        if "huge_pages" in inspect.signature(prepare_decoding).parameters:
            moved = prepare_decoding("cpu", model, huge_pages=not args.small_pages)
            print(f"weights on 2 MB pages: {moved / 1e6:.1f} MB")
        else:  # older checkouts
            prepare_decoding("cpu", model)
    cache = model.new_cache(args.batch, 16 + 10 + args.rounds * args.steps + 20)
    ids = torch.randint(0, 1000, (args.batch, 16))
    tok = torch.full((args.batch, 1), 5)
    with torch.inference_mode():
        model(ids, cache, torch.arange(16), last_only=True)
        step = decode_step
        if args.compile:
            from llmscratch.generate import compiled_decode_step

            step = compiled_decode_step(model)
        t0 = time.perf_counter()
        step(model, tok, cache, torch.full((args.batch, 1), 16))
        first = time.perf_counter() - t0
        for pos in range(17, 26):
            step(model, tok, cache, torch.full((args.batch, 1), pos))
        print(f"first step {first:.2f} s{' (compiling)' if args.compile else ''}")
        pos, medians, fastest = 26, [], float("inf")
        for _ in range(args.rounds):
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                step(model, tok, cache, torch.full((args.batch, 1), pos))
                times.append(time.perf_counter() - t)
                pos += 1
            medians.append(statistics.median(times) * 1000)
            fastest = min(fastest, min(times) * 1000)
        kind = f"{args.quantize or 'float32'}{' compiled' if args.compile else ''}, batch {args.batch}"
        print(f"{kind}: rounds {' '.join(f'{m:.1f}' for m in medians)} ms/step; best {min(medians):.1f} ms/step "
              f"= {1000 / min(medians) * args.batch:.1f} tok/s; fastest step {fastest:.1f} ms")
        if args.profile:
            from torch.profiler import profile

            with profile() as prof:
                for _ in range(10):
                    step(model, tok, cache, torch.full((args.batch, 1), pos))
                    pos += 1
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
