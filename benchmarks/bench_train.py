"""Training tokens/s of our GPT-2 against transformers' GPT2LMHeadModel (same config, weights, optimizer),
eager and torch.compile, with model FLOPs utilisation against a matmul peak measured in the same run.

    .venv/bin/python benchmarks/bench_train.py            # gpt2-124m, batch 8 x 256 (several minutes)
    .venv/bin/python benchmarks/bench_train.py --quick    # tiny preset, seconds
    .venv/bin/llmscratch bench train ...                  # the same, through the CLI
"""

from __future__ import annotations

import argparse

from llmscratch.bench.train import add_arguments, config_from_args, run_train_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run_train_bench(config_from_args(parser.parse_args()))


if __name__ == "__main__":
    main()
