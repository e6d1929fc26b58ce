"""A tiny chat model for the server tests (random weights, byte tokenizer with ChatML specials) and a real
uvicorn server on a free loopback port, run on a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import torch

from llmscratch.model import build_model, get_config
from llmscratch.serve.config import ServeConfig
from llmscratch.serve.server import bound_socket, build_server
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.byte_level import bytes_to_unicode
from llmscratch.weights import LoadedModel

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}


def byte_tokenizer() -> Tokenizer:
    """One token per byte plus ChatML specials; EOS is <|im_end|>."""
    vocab = [bytes_to_unicode()[b] for b in range(256)] + list(SPECIALS)
    return Tokenizer.from_vocab_and_merges(vocab, [], SPECIALS, bos_id=257, eos_id=258)


def tiny_model(context_length: int = 256, seed: int = 0, endless: bool = False):
    """A 2-layer Llama with random weights over the byte tokenizer's 259 ids; `endless`: greedy decoding never
    picks a special token (their logits are 0, below the largest of 256 random ones), so it never stops."""
    config = get_config("llama-tiny", vocab_size=259, context_length=context_length, tie_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config).eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # sharper logits: greedy choices far from ties
        if endless:
            model.head.weight[256:].zero_()
    return model


class Slow(torch.nn.Module):
    """Wraps a model so that every forward step takes at least `delay` seconds (to catch a stream mid-way)."""

    def __init__(self, model, delay: float):
        super().__init__()
        self.inner, self.delay = model, delay
        self.config, self.head = model.config, model.head

    def hidden_states(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner.hidden_states(*args, **kwargs)

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner(*args, **kwargs)

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)


def loaded_tiny(model=None, template: str | None = CHATML, name: str = "tiny-chat") -> LoadedModel:
    return LoadedModel(model if model is not None else tiny_model(), byte_tokenizer(), name, template, "test")


@contextlib.contextmanager
def running_server(loaded: LoadedModel | None = None, loader=None, **config) -> Iterator[tuple[str, object]]:
    """A real server on 127.0.0.1:<free port>, on a thread: yields (base URL, the uvicorn server)."""
    cfg = ServeConfig(**{"model": "tiny-chat", "log_level": "warning", **config})
    errors: list[BaseException] = []
    server = build_server(cfg, loader or (lambda: loaded or loaded_tiny()), errors.append)
    sock = bound_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 30
        while not server.started and time.monotonic() < end and thread.is_alive():
            time.sleep(0.01)
        state = server.state
        if loader is None:
            while not state.ready and time.monotonic() < end and not errors:
                time.sleep(0.01)
        if errors:
            raise errors[0]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def busy(engine) -> int:
    """Requests the engine holds: generating or waiting."""
    s = engine.stats()
    return s.active + s.queued
