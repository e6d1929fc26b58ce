"""Training tokens/s of our GPT-2 against transformers' GPT2LMHeadModel (same config, weights, optimizer),
eager and torch.compile, with model FLOPs utilisation against a matmul peak measured in the same run; the same
as `llmscratch bench train` (same flags).

    .venv/bin/python benchmarks/bench_train.py            # gpt2-124m, batch 8 x 256 (several minutes)
    .venv/bin/python benchmarks/bench_train.py --quick    # tiny preset, seconds
"""

from __future__ import annotations

import sys

from llmscratch.cli import main

if __name__ == "__main__":
    main(["bench", "train", *sys.argv[1:]])
