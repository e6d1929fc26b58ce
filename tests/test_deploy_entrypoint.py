"""The container's entrypoint script, run outside Docker on an unpacked model.tar.gz (LLMSCRATCH_MODEL_DIR), on a
loopback port: what SageMaker checks (the port opens soon, /ping answers within 2 s, /invocations answers and
streams) and that SIGTERM ends the server."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from llmscratch.deploy import entrypoint_script
from llmscratch.deploy.config import PackageConfig, ServingConfig
from llmscratch.deploy.package import package_model
from llmscratch.model import GPTConfig, build_model
from llmscratch.tokenizer import Tokenizer
from llmscratch.weights.ours import save_pretrained

SRC = Path(__file__).resolve().parents[1] / "src"


def serve_command_exists() -> bool:
    from llmscratch.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "serve" in sub.choices


needs_serve = pytest.mark.skipif(not serve_command_exists(),
                                 reason="`llmscratch serve` does not exist yet (the server is being written on "
                                        "branch `server`); this test runs once it lands")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model packaged and unpacked, as SageMaker does into /opt/ml/model."""
    tmp = tmp_path_factory.mktemp("opt-ml")
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], {"<|endoftext|>": 256}, eos_id=256)
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=257, context_length=64, emb_dim=32, n_layers=2, n_heads=4))
    folder = save_pretrained(model, tok, tmp / "tiny")
    archive = package_model(PackageConfig(model=str(folder), out=str(tmp / "model.tar.gz"), progress=False,
                                          serving=ServingConfig(default_max_tokens=8, max_batch=2))).path
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp / "model", filter="data")
    return tmp / "model"


def entrypoint_env(model_dir: Path, port: int | None = None) -> dict:
    env = {**os.environ, "LLMSCRATCH_MODEL_DIR": str(model_dir), "LLMSCRATCH_HOST": "127.0.0.1",
           "PYTHONPATH": str(SRC), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    if port is not None:
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
    return env


def test_the_script_is_shipped_in_the_package():
    script = entrypoint_script()
    assert script.is_file() and script.read_text().startswith("#!/bin/sh")
    assert os.access(script, os.X_OK)


def test_a_corrupted_archive_stops_the_container_with_the_reason(model_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    done = subprocess.run(["sh", str(entrypoint_script()), "serve"], env=entrypoint_env(broken, 1),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "model.safetensors does not match its sha256" in done.stderr and "Traceback" not in done.stderr
    (broken / "manifest.json").unlink()
    done = subprocess.run(["sh", str(entrypoint_script())], env=entrypoint_env(broken, 1), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "has no manifest.json" in done.stderr


def test_other_commands_run_as_given(model_dir):
    done = subprocess.run(["sh", str(entrypoint_script()), "llmscratch", "deploy", "verify", str(model_dir)],
                          env=entrypoint_env(model_dir), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "every file matches manifest.json" in done.stdout


def test_the_start_up_check_does_not_import_torch(model_dir):
    """The entrypoint's check runs before the server and adds to every start: it stays light."""
    code = ("import sys; from llmscratch.deploy.__main__ import main; main(['verify', sys.argv[1]]); "
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')")
    done = subprocess.run([sys.executable, "-c", code, str(model_dir)], env=entrypoint_env(model_dir),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{model_dir}: every file matches manifest.json; model: {model_dir}",
                                        "no torch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until the port accepts a connection (fails if the process exits or time runs out)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"port {port} did not open within {timeout} s")


def wait_for_ping(base: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until /ping answers 200, as SageMaker polls it: every answer (503 while the model loads) must come
    within 2 s."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        t = time.monotonic()
        status = httpx.get(f"{base}/ping", timeout=2.0).status_code
        assert time.monotonic() - t < 2.0
        if status == 200:
            return time.monotonic() - start
        assert status == 503  # still loading
        time.sleep(0.05)
    pytest.fail(f"/ping did not answer 200 within {timeout} s")


@needs_serve
def test_entrypoint_serves_what_sagemaker_checks(model_dir):
    import httpx

    from llmscratch.deploy.sagemaker import sse_data, stream_texts

    port = free_port()
    proc = subprocess.Popen(["sh", str(entrypoint_script()), "serve"], env=entrypoint_env(model_dir, port),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        opened = wait_for_port(port, proc, timeout=120)
        base = f"http://127.0.0.1:{port}"
        ready = wait_for_ping(base, proc, timeout=120)
        answer = httpx.post(f"{base}/invocations", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
                            timeout=60)
        assert answer.status_code == 200
        generated = answer.json()
        assert isinstance(generated, list) and isinstance(generated[0]["generated_text"], str)
        with httpx.stream("POST", f"{base}/invocations", timeout=60,
                          json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            pieces = list(stream_texts(sse_data(r.iter_bytes())))
        assert len(pieces) >= 1 and "".join(pieces) == generated[0]["generated_text"]  # greedy: the same text
        print(f"tiny model: port open {opened:.2f} s after start, /ping 200 {ready:.2f} s later")
        proc.send_signal(signal.SIGTERM)  # what `docker stop` and SageMaker send (SIGKILL 30 s later)
        assert proc.wait(timeout=25) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
