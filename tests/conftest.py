"""Shared test settings: few threads, the data mirror, and skips with a reason when data is absent."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

_DEFAULT_MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not os.environ.get("LLMSCRATCH_DATA_MIRROR") and (_DEFAULT_MIRROR / "README.md").exists():
    os.environ["LLMSCRATCH_DATA_MIRROR"] = str(_DEFAULT_MIRROR)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test downloads into a private temporary cache, never into ~/.cache."""
    if "LLMSCRATCH_TEST_CACHE" not in os.environ:
        monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def mirror_file(name: str) -> Path:
    """A file of the data mirror, or skip the test with a clear reason."""
    mirror = os.environ.get("LLMSCRATCH_DATA_MIRROR")
    if not mirror:
        pytest.skip("data mirror not set (LLMSCRATCH_DATA_MIRROR) and ../shared/data absent")
    path = Path(mirror) / name
    if not path.exists():
        pytest.skip(f"{name} not in the data mirror {mirror}")
    return path


class ByteTokenizer:
    """A tokenizer for tiny test models: ids are the UTF-8 bytes, 256 is <|endoftext|> (no pad id)."""

    vocab_size = 257
    eos_id = 256
    pad_id = None
    spec = "bytes"

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """<|endoftext|> in the text is the end token, or its bytes with disallowed_special=() (as our tokenizers,
        but for the error that encode raises there when it is neither allowed nor passed as text)."""
        if disallowed_special == () and allowed_special != "all" and "<|endoftext|>" not in allowed_special:
            return list(text.encode("utf-8"))
        out = []
        for i, part in enumerate(text.split("<|endoftext|>")):
            if i:
                out.append(self.eos_id)
            out.extend(part.encode("utf-8"))
        return out


# A tiny GPT-2 for the byte tokenizers: emb 32, 2 layers, 4 heads, vocab 257 (bytes + end of text), context 64.
def byte_gpt_config():
    from llmscratch.model import GPTConfig

    return GPTConfig(vocab_size=257, context_length=64, emb_dim=32, n_layers=2, n_heads=4)


def byte_gpt(seed: int = 0):
    """A randomly initialised `byte_gpt_config()` model (torch's generator seeded with `seed`)."""
    from llmscratch.model import build_model

    torch.manual_seed(seed)
    return build_model(byte_gpt_config())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder with a small text (corpus.txt) and a BPE tokenizer trained on it (tok.json): no network, no mirror."""
    from llmscratch.tokenizer import train as train_bpe

    folder = tmp_path_factory.mktemp("corpus")
    r = random.Random(0)
    words = "the cat sat on a mat and dog ran to big red house while small bird sang in tree".split()
    text = " ".join(r.choice(words) for _ in range(2500))
    (folder / "corpus.txt").write_text(text)
    train_bpe(text, 300, special_tokens=["<|endoftext|>"]).save(folder / "tok.json")
    return folder


def varied_tiny_model(family: str = "gpt2", seed: int = 0):
    """A tiny GPT-2, Llama or Gemma 3 (eval mode) with large random weights, so its greedy tokens vary (the default
    init repeats one token): for tests that compare generated tokens."""
    from llmscratch.model import build_model, get_config

    torch.manual_seed(seed)
    preset = {"gpt2": "gpt2-tiny", "llama": "llama-tiny", "gemma3": "gemma3-tiny"}[family]
    model = build_model(get_config(preset)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if family == "gemma3" and name == "tok_emb.weight":  # scaled by sqrt(width) and tied: a large table
                p.normal_(0.0, 0.02)  # would make every token repeat itself
            elif p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


KILL_SCRIPT = '''"""The llmscratch command, SIGKILLed at the end of step N: `python kill_after.py N pretrain ...`."""
import dataclasses
import os
import signal
import sys

from llmscratch.cli import main
from llmscratch.train.callbacks import Callback
from llmscratch.train.trainer import Trainer

STEP = int(sys.argv[1])


class SigkillAfter(Callback):
    def on_step_end(self, trainer):
        if trainer.state.step == STEP:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


_defaults = Trainer.default_callbacks
Trainer.default_callbacks = lambda self: [*_defaults(self), SigkillAfter()]
main(sys.argv[2:])
'''


@pytest.fixture
def kill_script(tmp_path) -> Path:
    """A script that runs the llmscratch command and SIGKILLs itself after a step (a crash, as a test injects it)."""
    path = tmp_path / "kill_after.py"
    path.write_text(KILL_SCRIPT)
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    """A tiny random Llama GGUF (the writer of test_gguf.py), its weights mostly Q8_0, with a ChatML
    template."""
    import numpy as np
    from test_gguf import CONFIG, random_hf_weights, write_gguf

    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    rng = np.random.default_rng(0)
    cfg = dataclasses.replace(CONFIG, context_length=128)
    write_gguf(path, random_hf_weights(cfg, rng), {"token_embd.weight": gguf.GGMLQuantizationType.Q8_0}, cfg=cfg,
               rng=rng)
    return path
