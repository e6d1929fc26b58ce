"""`llmscratch bench ...`: benchmarks (generation with and without the KV cache, training, serving)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks (generation speed with and without the KV cache, ...)",
        description="Benchmarks. Each prints a table with the machine's load and thread settings, and writes a "
        "JSON file and a PNG chart.",
    )
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    add_generate_parser(sub)
    add_train_parser(sub)
    add_serve_parser(sub)


def add_generate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate",
        help="tokens/s of batch-1 decoding: our KV cache vs none vs transformers (GPT-2, SmolLM2/Llama)",
        description="Batch-1 greedy decoding on the CPU in float32: new tokens per second without and with our "
        "KV cache for several output lengths, and transformers' GPT2LMHeadModel or LlamaForCausalLM with the same "
        "weights (cache on and off; skipped when transformers is not installed). Several models, comma-separated, "
        "give one section each in the same JSON and chart, e.g. --model gpt2-124m,smollm2-135m-instruct. "
        "Variants run interleaved, medians are reported. "
        "Also measures memory bandwidth and shows each rate as a share of the batch-1 limit (bandwidth / "
        "bytes of weights read per token). Default model: the gpt2-124m preset (random weights from a fixed "
        "seed: same speed as the real ones).",
    )
    p.add_argument("--model", default=None,
                   help="GPT-2 or Llama model(s), comma-separated: preset (default gpt2-124m; gpt2-tiny with --quick; "
                   "llama-tiny), registered name (smollm2-135m-instruct: its GGUF, dequantized), folder, .gguf")
    p.add_argument("--tokens", default=None, help="new-token counts, comma-separated (default 50,200,500)")
    p.add_argument("--repeats", type=int, default=None, help="rounds for the cached variants (default 3)")
    p.add_argument("--no-cache-repeats", type=int, default=None,
                   help="rounds for the uncached variants (default 1: at 500 tokens one run takes minutes)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length in tokens (default 16)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--no-transformers", action="store_true", help="benchmark ours only")
    p.add_argument("--out", default="bench-results", help="folder for bench_generate.json and .png")
    p.add_argument("--quick", action="store_true", help="a few-seconds smoke run (tiny preset, few tokens)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=_generate)
    return p


def _generate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from llmscratch.bench.generate import GenerateBenchConfig, run_generate_bench
    from llmscratch.utils import UserError

    overrides: dict = {"out": Path(args.out), "transformers": not args.no_transformers,
                       "progress": not args.no_progress}
    if args.model:
        overrides["model"] = args.model
    if args.tokens:
        try:
            overrides["tokens"] = tuple(int(t) for t in args.tokens.split(",") if t.strip())
        except ValueError:
            raise UserError(f"--tokens takes comma-separated integers, not {args.tokens!r}") from None
    for name in ("repeats", "no_cache_repeats", "prompt_tokens", "threads"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = GenerateBenchConfig.quick_run(**overrides) if args.quick else GenerateBenchConfig(**overrides)
    run_generate_bench(cfg)


def add_train_parser(sub) -> argparse.ArgumentParser:
    from llmscratch.bench.train import add_arguments

    p = sub.add_parser(
        "train",
        help="training tokens/s: our GPT-2 vs transformers, eager and compiled, with MFU",
        description="Training steps (forward, cross-entropy, backward, fused AdamW) of our GPT-2 and transformers' "
        "GPT2LMHeadModel with the same config, weights, dropout, batch and optimizer, eager against eager and "
        "torch.compile against torch.compile, interleaved; model FLOPs utilisation against a float32 matmul peak "
        "measured in the same run. Default: gpt2-124m at batch 8 x 256.",
    )
    add_arguments(p)
    p.set_defaults(func=_train)
    return p


def _train(args: argparse.Namespace) -> None:
    from llmscratch.bench.train import config_from_args, run_train_bench

    run_train_bench(config_from_args(args))


def add_serve_parser(sub) -> argparse.ArgumentParser:
    from llmscratch.bench.serve import ServeBenchConfig

    d = ServeBenchConfig()
    p = sub.add_parser(
        "serve",
        help="llmscratch serve under load: aggregate tokens/s, time to first token, batching on vs off",
        description="Starts `llmscratch serve` on a free loopback port and runs streaming clients against it: for "
        "each client count, every client sends --requests streaming completions of --max-tokens tokens (ignore_eos). "
        "Prints aggregate tokens/s, time to first token and time between tokens (p50/p95), then the same load with "
        "batching off (one request at a time), in one run; writes bench_serve.json and bench_serve.png.",
    )
    p.add_argument("--model", default=d.model,
                   help=f"model to serve: registered name, folder, .gguf or preset (default {d.model}, random weights)")
    p.add_argument("--clients", default=",".join(map(str, d.clients)),
                   help=f"concurrent client counts, comma-separated (default {','.join(map(str, d.clients))})")
    p.add_argument("--requests", type=int, default=d.requests, help=f"requests per client (default {d.requests})")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help=f"new tokens per request (default {d.max_tokens})")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"the batching server's --max-batch (default {d.max_batch})")
    p.add_argument("--no-batching-off", action="store_true", help="skip the run with batching off")
    p.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: all cores)")
    p.add_argument("--out", default=str(d.out), help=f"folder for bench_serve.json and .png (default {d.out})")
    p.set_defaults(func=_serve)
    return p


def _serve(args: argparse.Namespace) -> None:
    from pathlib import Path

    from llmscratch.bench.serve import ServeBenchConfig, run_serve_bench
    from llmscratch.utils import UserError

    try:
        clients = tuple(int(c) for c in args.clients.split(",") if c.strip())
    except ValueError:
        raise UserError(f"--clients takes comma-separated integers, not {args.clients!r}") from None
    run_serve_bench(ServeBenchConfig(
        model=args.model, clients=clients, requests=args.requests, max_tokens=args.max_tokens,
        max_batch=args.max_batch, batching_off=not args.no_batching_off, threads=args.threads, out=Path(args.out),
    ))
