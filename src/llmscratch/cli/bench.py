"""`llmscratch bench ...`: benchmarks (generation with and without the KV cache, training, serving)."""

from __future__ import annotations

from llmscratch.bench.generate import GenerateBenchConfig
from llmscratch.bench.serve import ServeBenchConfig
from llmscratch.bench.train import TrainBenchConfig
from llmscratch.config import add_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks (generation speed with and without the KV cache, ...)",
        description="Benchmarks. Each prints a table with the machine's load and thread settings, and writes a "
        "JSON file and a PNG chart.",
    )
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    add_command(
        sub, "generate", GenerateBenchConfig, _generate,
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
    add_command(
        sub, "train", TrainBenchConfig, _train,
        help="training tokens/s: our GPT-2 vs transformers, eager and compiled, with MFU",
        description="Training steps (forward, cross-entropy, backward, fused AdamW) of our GPT-2 and transformers' "
        "GPT2LMHeadModel with the same config, weights, dropout, batch and optimizer, eager against eager and "
        "torch.compile against torch.compile, interleaved; model FLOPs utilisation against a float32 matmul peak "
        "measured in the same run. Default: gpt2-124m at batch 8 x 256.",
    )
    add_command(
        sub, "serve", ServeBenchConfig, _serve,
        help="llmscratch serve under load: aggregate tokens/s, time to first token, batching on vs off",
        description="Starts `llmscratch serve` on a free loopback port and runs streaming clients against it: for "
        "each client count, every client sends --requests streaming completions of --max-tokens tokens (ignore_eos). "
        "Prints aggregate tokens/s, time to first token and time between tokens (p50/p95), then the same load with "
        "batching off (one request at a time), in one run; writes bench_serve.json and bench_serve.png.",
    )


def _generate(cfg: GenerateBenchConfig) -> None:
    from llmscratch.bench.generate import run_generate_bench
    from llmscratch.utils import check_folder_can_be_made

    check_folder_can_be_made(cfg.out)
    run_generate_bench(cfg)


def _train(cfg: TrainBenchConfig) -> None:
    from llmscratch.bench.train import run_train_bench
    from llmscratch.utils import check_folder_can_be_made

    check_folder_can_be_made(cfg.out_dir)
    run_train_bench(cfg)


def _serve(cfg: ServeBenchConfig) -> None:
    from llmscratch.bench.serve import run_serve_bench
    from llmscratch.utils import check_folder_can_be_made
    from llmscratch.weights import check_model_name

    check_folder_can_be_made(cfg.out)
    check_model_name(cfg.model)  # before a server is started for it
    run_serve_bench(cfg)
