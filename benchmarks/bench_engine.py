"""Aggregate decode throughput of the serving engine at several concurrent greedy requests (no HTTP).

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/bench_engine.py --model gpt2-124m --clients 1,4,8

Random weights of a preset (no download). Each run submits N requests at once (different prompts of the
same length) and times them until the last finishes: tokens/s = all new tokens / wall time, prefill
included. The same runs with batching off (SerialEngine) are printed beside, and the ratio to one client.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from llmscratch.bench.common import format_machine, format_table, machine_info  # noqa: E402
from llmscratch.generate import SamplingConfig  # noqa: E402
from llmscratch.model import build_model, get_config  # noqa: E402
from llmscratch.serve.engine import Engine, SerialEngine  # noqa: E402


def run(engine_class, model, prompts, new_tokens: int) -> tuple[float, float]:
    """(wall, CPU) seconds for every prompt submitted at once to a fresh engine, until the last one finishes."""
    engine = engine_class(model, max_batch=len(prompts), max_len=len(prompts[0]) + new_tokens)
    engine.start()
    cfg = SamplingConfig(max_new_tokens=new_tokens)
    started, cpu = time.perf_counter(), time.process_time()
    handles = [engine.submit(p, cfg, lambda t: None, lambda r: None) for p in prompts]
    for h in handles:
        h.wait()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.stop()
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-124m", help="a model preset (random weights)")
    parser.add_argument("--clients", default="1,4,8", help="numbers of concurrent requests, comma separated")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per request")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (the best is kept)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(get_config(args.model)).eval()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    print(format_machine(machine_info()))
    print(f"engine bench: {args.model} (random weights), {args.prompt_len}-token prompts, {args.tokens} new tokens")
    run(Engine, model, [[1] * args.prompt_len], 4)  # warm-up
    rows, base = [], {}
    for n in [int(c) for c in args.clients.split(",")]:
        prompts = [torch.randint(0, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(n)]
        rates, per_cpu = {}, {}
        for name, cls in (("batched", Engine), ("serial", SerialEngine)):
            wall, cpu = min(run(cls, model, prompts, args.tokens) for _ in range(args.repeats))
            rates[name], per_cpu[name] = n * args.tokens / wall, n * args.tokens / cpu
            base.setdefault(name, rates[name])
        b, s = rates["batched"], rates["serial"]
        ratio = b / base["batched"]
        rows.append([n, f"{b:.1f}", f"{ratio:.2f}x", f"{per_cpu['batched']:.1f}", f"{s:.1f}", f"{b / s:.2f}x"])
    headers = ["clients", "batched tok/s", "vs 1 client", "tok per CPU s", "serial tok/s", "batched/serial"]
    print(format_table(headers, rows))
    print("tok/s: new tokens of all requests / wall time (prefill included); tok per CPU s: the same per second "
          "of CPU time this process used (less sensitive to other load on the machine)")


if __name__ == "__main__":
    main()
