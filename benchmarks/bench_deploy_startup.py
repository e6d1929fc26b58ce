"""Start-up time of the serving container's entrypoint, outside Docker, on an unpacked model.tar.gz: what SageMaker
waits for after the model download (the port opens, /ping answers 200), the first /invocations, and SIGTERM.

    python benchmarks/bench_deploy_startup.py                          # tiny + smollm2-135m-instruct, 3 runs each
    python benchmarks/bench_deploy_startup.py --models tiny --repeats 5

Needs `llmscratch serve`. Binds 127.0.0.1 only. Prints the machine's load first: start-up is CPU-bound (Python and
torch imports, weight loading and dequantization).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from llmscratch.bench.common import format_machine, format_table, machine_info, median
from llmscratch.deploy import entrypoint_script
from llmscratch.deploy.config import PackageConfig
from llmscratch.deploy.package import package_model


def tiny_model(folder: Path) -> Path:
    """A random GPT-2 of 2 layers, width 32, with a byte tokenizer (what the tests serve)."""
    import torch

    from llmscratch.model import GPTConfig, build_model
    from llmscratch.tokenizer import Tokenizer
    from llmscratch.weights.ours import save_pretrained

    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], {"<|endoftext|>": 256}, eos_id=256)
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=257, context_length=64, emb_dim=32, n_layers=2, n_heads=4))
    return save_pretrained(model, tok, folder / "tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(model_dir: Path, tokens: int) -> dict[str, float]:
    """Start the entrypoint once; seconds to: port open, /ping 200, first answer; and SIGTERM to exit."""
    import httpx

    port = free_port()
    env = {**os.environ, "LLMSCRATCH_MODEL_DIR": str(model_dir), "LLMSCRATCH_HOST": "127.0.0.1",
           "SAGEMAKER_BIND_TO_PORT": str(port), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.monotonic()
    proc = subprocess.Popen(["sh", str(entrypoint_script()), "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        port_open = time.monotonic() - start
        while httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code != 200:
            time.sleep(0.02)
        ping = time.monotonic() - start
        t = time.monotonic()
        httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                   json={"inputs": "The capital of France is", "parameters": {"max_new_tokens": tokens}})
        first = time.monotonic() - t
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        return {"port": port_open, "ping": ping, "first": first, "stop": time.monotonic() - t}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,smollm2-135m-instruct",
                   help="comma-separated: tiny, a registered name, a model folder or a .gguf file")
    p.add_argument("--repeats", type=int, default=3, help="starts per model (medians are shown)")
    p.add_argument("--tokens", type=int, default=16, help="new tokens in the first request")
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(format_machine(machine_info()))
    rows = []
    for spec in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            source = str(tiny_model(tmp)) if spec == "tiny" else spec
            r = package_model(PackageConfig(model=source, out=str(tmp / "model.tar.gz"), progress=False))
            t = time.monotonic()
            with tarfile.open(r.path, "r:gz") as tar:
                tar.extractall(tmp / "model", filter="data")
            unpack = time.monotonic() - t
            runs = [one_start(tmp / "model", args.tokens) for _ in range(args.repeats)]
        rows.append([spec, f"{r.size / 1e6:.1f}", f"{r.seconds:.1f}", f"{unpack:.1f}",
                     *(f"{median([x[k] for x in runs]):.2f}" for k in ("port", "ping", "first", "stop"))])
    print(format_table(["model", "archive MB", "package s", "unpack s", "port open s", "/ping 200 s",
                        f"first answer ({args.tokens} tok) s", "SIGTERM->exit s"], rows))


if __name__ == "__main__":
    main()
