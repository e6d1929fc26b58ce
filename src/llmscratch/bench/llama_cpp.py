"""llama.cpp as a peer in `llmscratch bench generate`: the user's own `llama-bench` binary (never a dependency)
run on the same .gguf file and thread count as ours, plus float copies of that file made with the
`llama-quantize` found beside it, so that each of our weight formats meets llama.cpp at the same precision.

One `llama-bench` call measures one file once (`-r 1`): prefill tokens/s over `prefill` tokens (`-p`) and, for
each new-token count n, the wall time of a `prompt`-token prompt followed by n generated tokens (`-pg
prompt,n`), turned into n / seconds: the same figure as ours (our generate timed over prompt and n tokens).
The benchmark calls it once per round, interleaved with our variants. The peak memory of each call (the
child's maxrss) is read with os.wait4. benchmarks/get_llama_cpp.sh builds the binaries from PyPI's sources.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH, QUANTIZE, SIMPLE = "llama-bench", "llama-quantize", "llama-simple"
SIBLINGS = ("llama-cli", "llama-server", QUANTIZE, SIMPLE)  # a path to one of these finds llama-bench beside it
# a float (or int8) copy of the file for each of our weight formats: llama-quantize's type names
COPY_TYPES = ("F32", "F16", "Q8_0")


@dataclass
class Tools:
    """The llama.cpp binaries found: llama-bench, and llama-quantize / llama-simple beside it (or None)."""

    bench: Path
    quantize: Path | None = None
    simple: Path | None = None


def find_tools(path: str | None) -> Tools | str:
    """The binaries for `path` (llama-bench itself, another llama.cpp tool or a folder holding them; None:
    llama-bench or llama-cli on PATH), or a sentence saying why there are none."""
    if path is None:
        found = shutil.which(BENCH) or next((shutil.which(s) for s in SIBLINGS if shutil.which(s)), None)
        if found is None:
            return "no llama.cpp binary: give llama_cpp (--llama-cpp PATH) or put llama-bench on PATH"
        path = found
    p = Path(path).expanduser()
    if p.is_dir():
        folder = p / "bin" if (p / "bin" / BENCH).is_file() else p
        bench = folder / BENCH
    elif p.is_file():
        folder = p.parent
        bench = folder / BENCH if p.name.startswith(SIBLINGS) else p
    else:
        return f"llama.cpp binary {path} not found"
    if not (bench.is_file() and os.access(bench, os.X_OK)):
        return f"no executable {BENCH} at {bench} (llmscratch reads llama-bench's JSON; build it: " \
               "benchmarks/get_llama_cpp.sh)"

    def beside(name: str) -> Path | None:
        q = bench.parent / name
        return q if q.is_file() and os.access(q, os.X_OK) else None

    return Tools(bench, beside(QUANTIZE), beside(SIMPLE))


@dataclass
class Child:
    """A finished child process: exit code, output, wall seconds and peak resident memory (MB)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    maxrss_mb: float


# A child's ru_maxrss starts at its parent's resident size (Linux keeps the larger of the two across fork and
# exec), so a child of this process (torch and the models loaded) would report at least our own size. A small
# Python process in between starts the command and reports that grandchild's own peak (argv: out file, cmd...).
_REPORTER = """
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(cmd: list[str], timeout: float, env: dict | None = None) -> Child:
    """Run `cmd` to the end (killed after `timeout` s) and read its own peak memory (see _REPORTER)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _REPORTER, str(rss_file), *cmd], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)  # its own process group: a timeout kills the command too
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"{cmd[0]} ran longer than {timeout:.0f} s") from e
        seconds = time.perf_counter() - start
        try:
            rss = int(rss_file.read_text())
        except (OSError, ValueError):  # the command could not be started
            rss = 0
        mb = rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6  # bytes on macOS, KiB on Linux
        return Child(proc.returncode, stdout, stderr, seconds, mb)


@dataclass
class PeerFile:
    """One .gguf file llama.cpp runs: its label (the file's weight type), path, and the measurements so far."""

    label: str
    path: Path
    decode: dict[int, list[float]] = field(default_factory=dict)  # new tokens -> tokens/s per round
    prefill: list[float] = field(default_factory=list)  # tokens/s per round
    maxrss_mb: float = 0.0
    model_type: str = ""
    model_bytes: int = 0
    error: str | None = None


# OpenMP settings of ours that llama.cpp does not get: with OMP_WAIT_POLICY=PASSIVE its threads sleep at every
# one of its many barriers (SmolLM2's Q4_1 file here: 37 instead of 118 tokens/s), so it runs as its user runs it.
OURS_ONLY = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def peer_env() -> dict:
    """The environment llama.cpp's processes run in: ours without the OpenMP tuning meant for our process."""
    return {k: v for k, v in os.environ.items() if k not in OURS_ONLY}


def bench_command(tools: Tools, gguf: Path, threads: int, prompt: int, tokens, prefill: int) -> list[str]:
    """llama-bench's arguments for one round: -p prefill (0: none), -pg prompt,n for each n, JSON out."""
    cmd = [str(tools.bench), "-m", str(gguf), "-t", str(threads), "-r", "1", "-n", "0", "-o", "json",
           "-p", str(prefill)]
    for n in tokens:
        cmd += ["-pg", f"{prompt},{n}"]
    return cmd


def measure_round(tools: Tools, peer: PeerFile, threads: int, prompt: int, tokens, prefill: int,
                  timeout: float = 1800) -> None:
    """One llama-bench call on peer.path; appends its rates to `peer` (or sets peer.error)."""
    if peer.error:
        return
    cmd = bench_command(tools, peer.path, threads, prompt, tokens, prefill)
    try:
        child = run_child(cmd, timeout, peer_env())
        if child.returncode != 0:
            raise RuntimeError(f"exit code {child.returncode}: {child.stderr.strip()[-300:]}")
        rows = json.loads(child.stdout)
        peer.maxrss_mb = max(peer.maxrss_mb, child.maxrss_mb)
        for row in rows:
            seconds = row["avg_ns"] / 1e9
            peer.model_type, peer.model_bytes = str(row.get("model_type", "")), int(row.get("model_size", 0))
            if row["n_gen"] == 0 and row["n_prompt"] == prefill:
                peer.prefill.append(prefill / seconds)
            elif row["n_prompt"] == prompt and row["n_gen"] in tokens:
                peer.decode.setdefault(row["n_gen"], []).append(row["n_gen"] / seconds)
        missing = [n for n in tokens if n not in peer.decode] + ([f"prefill {prefill}"] if prefill and
                                                                   not peer.prefill else [])
        if missing:
            raise ValueError(f"llama-bench printed no figures for {missing}")
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        peer.error = f"llama.cpp run failed ({' '.join(cmd)}): {type(e).__name__}: {str(e)[:300]}"


def copy_path(gguf: Path, kind: str, folder: Path) -> Path:
    return folder / f"{gguf.stem}.{kind}.gguf"


def make_copy(tools: Tools, gguf: Path, kind: str, folder: Path, timeout: float = 1800) -> Path:
    """`gguf` converted to `kind` (F32, F16, Q8_0) by llama-quantize --allow-requantize, kept in `folder` and
    reused; RuntimeError when it cannot be made."""
    out = copy_path(gguf, kind, folder)
    if out.is_file():
        return out
    if tools.quantize is None:
        raise RuntimeError(f"no {QUANTIZE} beside {tools.bench} to make a {kind} copy")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        child = run_child([str(tools.quantize), "--allow-requantize", str(gguf), str(tmp), kind], timeout)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{QUANTIZE} {kind} failed: {e}") from e
    if child.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{QUANTIZE} {kind} failed (exit {child.returncode}): {child.stderr.strip()[-300:]}")
    os.replace(tmp, out)
    return out


def gguf_type(path: Path) -> str:
    """The weight type a .gguf file is stored in: its general.file_type (e.g. Q4_1), else the type most of its
    matrices have; '' when unknown."""
    from llmscratch.weights.gguf import GGUFFile, ggml_type_name

    try:
        reader = GGUFFile(path)
        file_type = reader.metadata.get("general.file_type")
        if file_type is not None:
            from gguf import LlamaFileType

            return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        kinds = Counter(ggml_type_name(t) for t in reader.tensors if len(t.shape) >= 2)
        return kinds.most_common(1)[0][0] if kinds else ""
    except (OSError, ValueError, KeyError, IndexError, struct.error):
        return ""


def startup_command(tools: Tools, gguf: Path, threads: int, prompt: str = "Hello") -> list[str] | None:
    """llama-simple generating one token after `prompt` (a whole process, for the start-up time), if present."""
    if tools.simple is None:
        return None
    return [str(tools.simple), "-m", str(gguf), "-n", "1", prompt]
