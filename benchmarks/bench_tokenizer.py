"""Benchmark our byte-level BPE against tiktoken (GPT-2's vocabulary, same local files) and time training.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tokenizer.py [--mb 5] [--repeats 5] [--train-vocab 10000]

GPT-2's files come from the data registry ("gpt2-bpe") or, when the registry is not available, from the
data mirror ($LLMSCRATCH_DATA_MIRROR/gpt2). tiktoken is built from those same files (nothing downloaded).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("LLMSCRATCH_DATA_MIRROR") and (ROOT.parent / "shared" / "data" / "README.md").exists():
    os.environ["LLMSCRATCH_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")
os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # tiktoken: read the local files, cache nothing


def gpt2_folder() -> Path:
    """GPT-2's encoder.json + vocab.bpe: through the registry, else the mirror."""
    try:
        from llmscratch.data.registry import fetch

        return Path(fetch("gpt2-bpe"))
    except Exception as e:  # registry missing or offline: fall back to the mirror's copy
        mirror = os.environ.get("LLMSCRATCH_DATA_MIRROR")
        if mirror and (Path(mirror) / "gpt2" / "encoder.json").exists():
            return Path(mirror) / "gpt2"
        sys.exit(f"bench_tokenizer: GPT-2 files unavailable ({e}) and no data mirror")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=5.0, help="size of the benchmark text in MB (default 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per encoder (default 5)")
    parser.add_argument("--train-vocab", type=int, default=10_000, help="vocabulary size to train (default 10000)")
    args = parser.parse_args()

    import tiktoken
    import tiktoken.load

    from llmscratch.tokenizer.bench import benchmark_text, mirror_text_files, run_tokenizer_benchmark
    from llmscratch.tokenizer.files import read_gpt2_files
    from llmscratch.tokenizer.pretokenize import GPT2_PATTERN

    folder = gpt2_folder()
    ours = read_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(folder / "vocab.bpe"), encoder_json_file=str(folder / "encoder.json")
    )
    enc = tiktoken.Encoding(
        "gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )
    text, source = benchmark_text(int(args.mb * 1e6), mirror_text_files())
    result = run_tokenizer_benchmark(
        ours,
        text,
        source,
        baseline=enc.encode_ordinary,
        baseline_name="tiktoken",
        repeats=args.repeats,
        train_vocab_size=args.train_vocab,
        train_bytes=int(args.mb * 1e6),
    )
    print(f"GPT-2 files: {folder}")
    print(result.format())


if __name__ == "__main__":
    main()
