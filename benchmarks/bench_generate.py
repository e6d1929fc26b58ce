"""The KV-cache generation benchmark; the same as `llmscratch bench generate` (same flags).

    python benchmarks/bench_generate.py --tokens 50,200,500 --repeats 3 --out bench-results
    python benchmarks/bench_generate.py --quick
"""

from __future__ import annotations

import sys

from llmscratch.cli import main

if __name__ == "__main__":
    main(["bench", "generate", *sys.argv[1:]])
