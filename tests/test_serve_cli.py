"""`llmscratch serve` as a process: the port from $SAGEMAKER_BIND_TO_PORT, SIGTERM drains and exits 0, and a
mistake is one line on stderr with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from serve_helpers import CHATML, byte_tokenizer

from llmscratch.model import build_model, get_config
from llmscratch.weights.ours import save_pretrained


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A small chat model folder (ours): big enough that 1,500 tokens take a second or more (about 1.4 s on one
    2-core EPYC thread; 400 tokens of a 4-layer, 128-wide model once did, until decoding got 5x faster); never
    ends a turn."""
    config = get_config("llama-tiny", vocab_size=259, context_length=2048, emb_dim=256, n_layers=8, n_heads=4,
                        n_kv_heads=2, hidden_dim=1024, tie_embeddings=False)
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        model.head.weight.mul_(20.0)
        model.head.weight[256:].zero_()  # greedy never picks a special token: no end of turn
    return save_pretrained(model, byte_tokenizer(), tmp_path_factory.mktemp("m") / "model", chat_template=CHATML)


def serve(args: list[str], env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "llmscratch", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(url + "/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def test_sagemaker_port_and_sigterm_drains(model_folder):
    port = free_port()
    proc = serve(["--model", str(model_folder)], {"SAGEMAKER_BIND_TO_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            refused = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
            rest = [line for line in lines if line]
        assert refused.status_code == 503
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][6:])["usage"]["completion_tokens"] == 1500  # it finished, not cut
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mistakes_are_one_line_and_exit_2(model_folder, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        procs = [  # side by side: each process spends most of its time importing
            serve(["--model", str(tmp_path / "missing"), "--port", str(free_port())]),
            serve(["--model", str(model_folder), "--port", str(busy.getsockname()[1])]),
            serve(["--model", str(model_folder), "--max-batch", "0"]),
        ]
        errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2, 2]
    assert all("Traceback" not in e for e in errs), errs
    assert [len(e.strip().splitlines()) for e in errs] == [1, 1, 1]  # refused before the server starts
    assert errs[0].startswith("llmscratch: error: unknown model")  # a name that is nothing: before listening
    assert "cannot listen on 127.0.0.1" in errs[1]
    assert "--max-batch must be >= 1" in errs[2]
