"""Quantized weights against float32 on a real model: perplexity, greedy agreement and decode speed.

    LLMSCRATCH_DATA_MIRROR=/work/shared/data OMP_WAIT_POLICY=PASSIVE nice -n 10 \\
        python benchmarks/bench_quant_quality.py --model smollm2-135m-instruct --threads 2

- perplexity on the-verdict (windows of --window tokens, stride --window), float32 vs int8 vs int4 vs gguf (a GGUF
  file's own blocks kept quantized, `--quantize gguf`); with --float-activations, each quantized variant also with
  its activations kept float32 (where the kernel would round them to int8 per block of 32: VNNI CPUs);
- greedy agreement: tokens generated alike before the first difference, over --agree-tokens from one prompt;
- decode tokens/s at batch 1 (--decode-tokens new tokens after a --prompt-tokens prompt), every variant once per
  round for --repeats interleaved rounds, medians; and the kernel the quantized layers used. Also tokens per second
  of this process's CPU time (all threads): steadier than wall time on a busy machine.
Prints the machine's load first: on a shared machine figures move.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llmscratch.bench.generate import agreement  # noqa: E402
from llmscratch.data.registry import fetch  # noqa: E402
from llmscratch.generate import SamplingConfig, generate  # noqa: E402
from llmscratch.model import quant_kernel  # noqa: E402
from llmscratch.model.quant import quantize_loaded, quantized_bytes  # noqa: E402
from llmscratch.weights import load_model  # noqa: E402


@torch.no_grad()
def perplexity(model, ids: list[int], window: int) -> float:
    """exp(mean next-token cross-entropy) over non-overlapping windows of `window` tokens."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor(ids[start:start + window + 1])
        if len(chunk) < 2:
            break
        logits = model(chunk[None, :-1])  # (1, T, vocab)
        total += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
        count += len(chunk) - 1
    return math.exp(total / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--agree-tokens", type=int, default=200)
    ap.add_argument("--decode-tokens", type=int, default=100)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", default="int8,int4,gguf")
    ap.add_argument("--speed-only", action="store_true", help="decode speed only (no perplexity, no agreement)")
    ap.add_argument("--float-activations", action="store_true",
                    help="add each quantized variant with float32 activations (the int8-dot path off)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.threads} threads; "
          f"kernel: {quant_kernel.status()}")
    loaded = load_model(args.model, progress=False)
    base = loaded.model
    models = {"float32": base}
    for fmt in args.formats.split(","):
        if fmt == "gguf":
            models[fmt] = load_model(args.model, progress=False, quantize="gguf").model
        else:
            models[fmt] = quantize_loaded(copy.deepcopy(base), fmt)  # what --quantize FMT does
        if args.float_activations:
            models[f"{fmt}/fx"] = float_x = copy.deepcopy(models[fmt])
            for m in float_x.modules():
                if hasattr(m, "int8_activations"):
                    m.int8_activations = False
    for m in models.values():  # what `generate` does before decoding (the (in, out) layout only without our kernel)
        quant_kernel.prepare_decoding("cpu", m)
    text = fetch("the-verdict").read_text(encoding="utf-8")
    ids = loaded.tokenizer.encode(text)
    prompt = ids[:args.prompt_tokens]
    print(f"{loaded.name}: the-verdict {len(ids)} tokens; windows of {args.window}")
    ppl = {k: math.nan if args.speed_only else perplexity(m, ids, args.window) for k, m in models.items()}
    cfg = SamplingConfig(max_new_tokens=0 if args.speed_only else args.agree_tokens)
    outs = {k: generate(m, [prompt], cfg)[0] for k, m in models.items()}
    times, cpu = {k: [] for k in models}, {k: [] for k in models}
    dcfg = SamplingConfig(max_new_tokens=args.decode_tokens)
    for _ in range(args.repeats):
        for k, m in models.items():
            t, c = time.perf_counter(), time.process_time()
            n = len(generate(m, [prompt], dcfg)[0])
            times[k].append(n / (time.perf_counter() - t))
            cpu[k].append(n / (time.process_time() - c))
    f32, c32 = statistics.median(times["float32"]), statistics.median(cpu["float32"])
    print(f"{'variant':10s} {'MiB':>6s} {'perplexity':>10s} {'vs f32':>7s} {'agree/' + str(args.agree_tokens):>10s} "
          f"{'tokens/s':>9s} {'vs f32':>7s} {'tok/cpu-s':>9s} {'vs f32':>7s}")
    for k, m in models.items():
        tps, cps = statistics.median(times[k]), statistics.median(cpu[k])
        print(f"{k:10s} {quantized_bytes(m) / 2**20:6.0f} {ppl[k]:10.3f} {ppl[k] / ppl['float32'] - 1:+7.2%} "
              f"{agreement(outs['float32'], outs[k]):10d} {tps:9.1f} {tps / f32:6.2f}x {cps:9.1f} {cps / c32:6.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
