"""Start-up to the first token of a whole process: `python -m llmscratch generate --model M --max-new-tokens 1`
timed from launch to exit, with its peak memory (the child's maxrss), and a second child that splits the time
into importing, loading the weights and producing the first token (the library calls `generate` makes).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

from llmscratch.bench.llama_cpp import run_child

PROMPT = "Hello"

# The split: the same steps as `llmscratch generate`, timed one by one (argv: model, quantize or "").
SPLIT_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import torch
from llmscratch.generate import SamplingConfig, generate_text
from llmscratch.model.quant_kernel import prepare_decoding
from llmscratch.weights import load_model
t1 = time.perf_counter()
loaded = load_model(sys.argv[1], device="cpu", dtype=torch.float32, quantize=sys.argv[2] or None, progress=False)
prepare_decoding("cpu", loaded.model)
t2 = time.perf_counter()
generate_text(loaded.model, loaded.tokenizer, sys.argv[3], SamplingConfig(max_new_tokens=1))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_token_s": t3 - t2}))
"""


@dataclass
class Startup:
    """One whole `generate` process: wall seconds to its exit after one new token, peak memory, the split."""

    command: list[str]
    wall_s: float | None  # None: it did not finish (see error)
    maxrss_mb: float | None
    import_s: float | None = None
    load_s: float | None = None
    first_token_s: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def child_env(threads: int | None) -> dict:
    """This process's environment, with the thread count for the child's torch (OMP_NUM_THREADS), and Python's
    bytecode cache allowed (PYTHONDONTWRITEBYTECODE dropped): an installed package has its bytecode, while a
    start that compiles our ~40 modules first takes about 0.05 s longer."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def measure_startup(model: str, quantize: str | None = None, threads: int | None = None,
                    timeout: float = 600) -> Startup:
    """Launch `llmscratch generate` for one token (and the split script) as fresh processes; their figures."""
    cmd = [sys.executable, "-m", "llmscratch", "generate", "--model", model, "--prompt", PROMPT,
           "--max-new-tokens", "1", *(["--quantize", quantize] if quantize else [])]
    env = child_env(threads)
    try:  # the split first: it also warms the file cache and writes the bytecode the timed run then finds
        split = run_child([sys.executable, "-c", SPLIT_SCRIPT, model, quantize or "", PROMPT], timeout, env)
        parts = json.loads(split.stdout.strip().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        parts = None
    try:
        whole = run_child(cmd, timeout, env)
    except OSError as e:  # a timeout, or no Python to start
        return Startup(cmd, None, None, error=str(e))
    result = Startup(cmd, whole.seconds, whole.maxrss_mb)
    if whole.returncode != 0:
        result.error = f"exit code {whole.returncode}: {whole.stderr.strip()[-300:]}"
        return result
    keys = ("import_s", "load_s", "first_token_s")
    if isinstance(parts, dict) and all(k in parts for k in keys):
        result.import_s, result.load_s, result.first_token_s = (parts[k] for k in keys)
    else:
        result.error = "the split run (import / load / first token) failed"
    return result


def llama_cpp_startup(cmd: list[str], timeout: float = 120) -> Startup:
    """A llama.cpp command generating one token, timed as a whole process."""
    from llmscratch.bench.llama_cpp import peer_env

    try:
        child = run_child(cmd, timeout, peer_env())
    except OSError as e:
        return Startup(cmd, None, None, error=str(e))
    error = None if child.returncode == 0 else f"exit code {child.returncode}: {child.stderr.strip()[-300:]}"
    return Startup(cmd, child.seconds, child.maxrss_mb, error=error)
