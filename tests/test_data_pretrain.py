"""Pretraining data: windows, split, resumable sampler, token files streamed from a corpus."""

from __future__ import annotations

import json
import pickle
import zlib

import numpy as np
import pytest
import regex
import torch
from conftest import ByteTokenizer, mirror_file
from hypothesis import given, settings
from hypothesis import strategies as st

from llmscratch.data.pretrain import (
    EpochSampler,
    TokenFile,
    WindowDataset,
    _safe_cut,
    header_path,
    num_windows,
    split_train_val,
    tokenize_corpus,
)
from llmscratch.tokenizer import fingerprint
from llmscratch.train.tasks.pretrain import PretrainTask
from llmscratch.utils import UserError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class PieceTokenizer:
    """One id per pre-tokenizer piece (a crc32 of it), so ids change whenever pieces change: encoding a text
    in two halves gives other ids than encoding it whole unless the cut is safe."""

    eos_id = 0
    spec = "pieces"

    def __init__(self, pattern: str, vocab_size: int = 60_000):
        self.pattern = regex.compile(pattern)
        self.vocab_size = vocab_size

    def encode(self, text, allowed_special=frozenset()):
        return [zlib.crc32(m.group().encode()) % (self.vocab_size - 1) + 1 for m in self.pattern.finditer(text)]


def reference_windows(ids, max_length, stride):
    """The book's GPTDatasetV1 loop."""
    out = []
    for i in range(0, len(ids) - max_length, stride):
        out.append((ids[i : i + max_length], ids[i + 1 : i + max_length + 1]))
    return out


# ----------------------------------------------------------------------------------------------- windows


def test_windows_drop_last_partial_window():
    ds = WindowDataset(list(range(10)), max_length=4, stride=4)
    assert len(ds) == 2  # windows at 0 and 4; tokens 9.. would need a partial window: dropped
    x, y = ds[1]
    assert x.tolist() == [4, 5, 6, 7] and y.tolist() == [5, 6, 7, 8]
    assert x.dtype == torch.long
    with pytest.raises(IndexError):
        ds[2]
    assert ds[-1][0].tolist() == [4, 5, 6, 7]


def test_window_exact_fit_and_too_short():
    assert len(WindowDataset(list(range(5)), max_length=4, stride=1)) == 1
    with pytest.raises(UserError, match="4 tokens, but one window of max_length=4 needs at least 5 tokens"):
        WindowDataset(list(range(4)), max_length=4, stride=1)


def test_stride_larger_than_max_length_skips_tokens():
    ds = WindowDataset(torch.arange(20), max_length=3, stride=5)
    starts = [int(ds[i][0][0]) for i in range(len(ds))]
    assert starts == [0, 5, 10, 15]
    seen = {int(t) for i in range(len(ds)) for t in ds[i][0]}
    assert 3 not in seen and 4 not in seen  # skipped between windows


@pytest.mark.parametrize("bad", [0, -1, 2.5, None])
def test_bad_window_parameters(bad):
    with pytest.raises(UserError, match="positive integer"):
        WindowDataset(list(range(10)), max_length=bad, stride=1)
    with pytest.raises(UserError, match="positive integer"):
        WindowDataset(list(range(10)), max_length=2, stride=bad)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), max_length=st.integers(1, 12), stride=st.integers(1, 15))
def test_windows_match_book_loop(n, max_length, stride):
    ids = list(range(100, 100 + n))
    expected = reference_windows(ids, max_length, stride)
    assert num_windows(n, max_length, stride) == len(expected)
    if not expected:
        with pytest.raises(UserError):
            WindowDataset(ids, max_length, stride)
        return
    ds = WindowDataset(np.asarray(ids, dtype=np.uint16), max_length, stride)
    assert [(x.tolist(), y.tolist()) for x, y in (ds[i] for i in range(len(ds)))] == expected


def test_split_train_val():
    text = "x" * 101
    train, val = split_train_val(text, 0.9)
    assert len(train) == 90 and len(val) == 11  # int(0.9 * 101)
    t_train, t_val = split_train_val(torch.arange(10), 0.7)
    assert t_train.tolist() == list(range(7)) and t_val.tolist() == [7, 8, 9]
    assert split_train_val([1, 2, 3], 1.0) == ([1, 2, 3], [])
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UserError, match="train_ratio"):
            split_train_val(text, bad)


# ----------------------------------------------------------------------------------------------- sampler


def test_order_is_a_pure_function_of_seed_and_epoch():
    a, b = EpochSampler(50, seed=7), EpochSampler(50, seed=7)
    assert a.order(3) == b.order(3)
    assert sorted(a.order(3)) == list(range(50))
    assert a.order(3) != a.order(4)
    assert a.order(0) != EpochSampler(50, seed=8).order(0)
    # no seed + epoch collisions: (seed 1, epoch 0) differs from (seed 0, epoch 1)
    assert EpochSampler(50, seed=1).order(0) != EpochSampler(50, seed=0).order(1)
    assert EpochSampler(6, shuffle=False).order(5) == list(range(6))


def test_sampler_advances_epoch_after_full_iteration():
    s = EpochSampler(20, seed=1)
    first, second = list(s), list(s)
    assert first == s.order(0) and second == s.order(1)
    s.set_epoch(0)
    assert list(s) == first


def _batches(batches):
    return [x.tolist() for x, _ in batches]


def test_training_resumes_exactly_mid_epoch():
    ids = torch.arange(1000)
    task = PretrainTask(WindowDataset(ids, 8, 8), seed=5)
    epochs = [_batches(task.train_batches(e, 3)) for e in range(3)]  # one uninterrupted run: epochs 0, 1, 2
    assert len(task.train) == 124 and len(epochs[0]) == task.num_train_batches(3) == 124 // 3
    assert epochs[0] != epochs[1]
    assert _batches(task.train_batches(1, 3, start=17)) == epochs[1][17:]  # a resume at batch 17 of epoch 1


def test_rank_sharding_partitions_each_epoch():
    world = 3
    samplers = [EpochSampler(10, seed=2, rank=r, world_size=world) for r in range(world)]
    orders = [s.order(4) for s in samplers]
    assert [len(o) for o in orders] == [4, 4, 4]  # padded to 12 by repeating the first indices
    flat = [i for o in orders for i in o]
    assert set(flat) == set(range(10)) and len(flat) == 12
    full = EpochSampler(10, seed=2).order(4)
    assert orders[1] == (full + full[:2])[1::3]

    dropped = [EpochSampler(10, seed=2, rank=r, world_size=world, drop_last=True).order(4) for r in range(world)]
    assert [len(o) for o in dropped] == [3, 3, 3]
    assert len({i for o in dropped for i in o}) == 9
    with pytest.raises(UserError, match="rank"):
        EpochSampler(10, rank=3, world_size=3)


def test_batch_shapes_and_unshuffled_validation_order():
    windows = WindowDataset(list(range(41)), 4, 4)
    task = PretrainTask(windows, windows, shuffle=False)
    batches = list(task.val_batches(4))
    assert len(batches) == 3  # 10 windows: 4 + 4 + 2 (validation keeps the incomplete batch)
    x, y = batches[0]
    assert x.shape == (4, 4) and y.shape == (4, 4)
    assert x[1].tolist() == [4, 5, 6, 7] and y[1].tolist() == [5, 6, 7, 8]
    assert batches[-1][0].shape == (2, 4)
    assert len(list(task.train_batches(0, 4))) == task.num_train_batches(4) == 2  # training drops it


# ----------------------------------------------------------------------------------------------- token files

TRICKY = (
    "Hello  world,\r\nit's   done.\n\n\nNew para\tgraph: 12345 apples; naïve café — ok?\r\n"
    "  indented line<|endoftext|>Next doc's start  \n\t\n end. Ünïcödé wörds 日本語 text 😀 emoji x\r"
)


def test_piece_tokenizer_is_chunk_sensitive():
    """The check below means something: cutting at arbitrary points changes this tokenizer's ids."""
    tok = PieceTokenizer(GPT2_PATTERN)
    whole = tok.encode(TRICKY)
    assert any(tok.encode(TRICKY[:k]) + tok.encode(TRICKY[k:]) != whole for k in range(1, len(TRICKY)))


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, LLAMA3_PATTERN], ids=["gpt2", "llama3"])
@pytest.mark.parametrize("chunk_chars", [2, 3, 7, 64, 1 << 20])
def test_tokenize_corpus_equals_in_memory_encode(tmp_path, pattern, chunk_chars):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes((TRICKY * 3).encode("utf-8"))
    tok = PieceTokenizer(pattern)
    out = tmp_path / "tokens.bin"
    header = tokenize_corpus(corpus, out, tok, chunk_chars=chunk_chars, progress=False)
    expected = tok.encode(corpus.read_bytes().decode("utf-8"))  # the text as it is: CRLF and lone CR kept
    tf = TokenFile(out)
    assert len(tf) == header.count == len(expected)
    assert tf[:].tolist() == expected
    assert header.dtype == "uint16"


@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet=" \n\r\tab'Z1.é,😀", max_size=60), chunk=st.integers(2, 9))
def test_tokenize_corpus_random_texts(tmp_path_factory, text, chunk):
    d = tmp_path_factory.mktemp("rand")
    (d / "c.txt").write_bytes(text.encode("utf-8"))
    for tok in (PieceTokenizer(GPT2_PATTERN), PieceTokenizer(LLAMA3_PATTERN)):
        tokenize_corpus(d / "c.txt", d / "t.bin", tok, chunk_chars=chunk, progress=False)
        assert TokenFile(d / "t.bin")[:].tolist() == tok.encode((d / "c.txt").read_bytes().decode("utf-8"))


def test_safe_cut_rule():
    assert _safe_cut("one two") == 3
    assert _safe_cut("one  two") == 0  # before a second space: unsafe (whitespace runs)
    assert _safe_cut("one\ntwo") == 0
    assert _safe_cut("one 2") == 0
    assert _safe_cut("a, b c") == 4
    assert _safe_cut("a, b c", lo=5) == 0


def test_token_file_header_and_windows(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world<|endoftext|>and more text " * 20, encoding="utf-8")
    out = tmp_path / "tokens.bin"
    tok = ByteTokenizer()
    tokenize_corpus(corpus, out, tok, chunk_chars=16, progress=False)
    header = json.loads(header_path(out).read_text())
    assert header["format"] == "llmscratch-tokens" and header["version"] == 1
    assert header["dtype"] == "uint16" and header["count"] == out.stat().st_size // 2
    assert header["tokenizer"] == {"spec": "bytes", "vocab_size": 257, "eos_id": 256, "fingerprint": None}
    assert header["source"]["bytes"] == corpus.stat().st_size

    ids = tok.encode(corpus.read_text(encoding="utf-8"))
    assert 256 in ids
    tf = TokenFile(out)
    assert isinstance(tf[:], np.memmap)  # read through the memory map, not loaded
    on_disk, in_memory = tf.windows(16, 5), WindowDataset(ids, 16, 5)
    assert len(on_disk) == len(in_memory)
    for i in (0, 7, len(in_memory) - 1):
        assert all(torch.equal(a, b) for a, b in zip(on_disk[i], in_memory[i]))

    train, val = split_train_val(tf, 0.9)
    assert isinstance(train, TokenFile) and len(train) + len(val) == len(tf)
    assert val[:].tolist() == ids[len(train):]

    clone = pickle.loads(pickle.dumps(val))  # DataLoader workers: the memmap is reopened, not copied
    assert clone[:5].tolist() == val[:5].tolist()
    assert len(pickle.dumps(tf)) < 1000


def test_token_file_uint32_for_large_vocab(tmp_path):
    (tmp_path / "c.txt").write_text("some words here and there", encoding="utf-8")
    tok = PieceTokenizer(GPT2_PATTERN, vocab_size=100_000)
    header = tokenize_corpus(tmp_path / "c.txt", tmp_path / "t.bin", tok, progress=False)
    assert header.dtype == "uint32"
    assert TokenFile(tmp_path / "t.bin")[:].tolist() == tok.encode("some words here and there")


def test_token_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        tokenize_corpus(tmp_path / "missing.txt", tmp_path / "t.bin", ByteTokenizer(), progress=False)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        tokenize_corpus(tmp_path / "latin1.txt", tmp_path / "t.bin", ByteTokenizer(), progress=False)
    assert not (tmp_path / "t.bin").exists()  # nothing partial left

    (tmp_path / "ok.txt").write_text("ok text", encoding="utf-8")
    tokenize_corpus(tmp_path / "ok.txt", tmp_path / "t.bin", ByteTokenizer(), progress=False)
    with open(tmp_path / "t.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="tokenize the corpus again"):
        TokenFile(tmp_path / "t.bin")
    header_path(tmp_path / "t.bin").unlink()
    with pytest.raises(UserError, match="is missing"):
        TokenFile(tmp_path / "t.bin")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    header = tokenize_corpus(tmp_path / "empty.txt", tmp_path / "t.bin", ByteTokenizer(), progress=False)
    assert header.count == 0 and len(TokenFile(tmp_path / "t.bin")) == 0
    with pytest.raises(UserError, match="0 tokens"):
        TokenFile(tmp_path / "t.bin").windows(4, 4)


def _real_gpt2():
    tokenizer = pytest.importorskip("llmscratch.tokenizer")
    if not hasattr(tokenizer, "load_tokenizer"):
        pytest.skip("llmscratch.tokenizer.load_tokenizer not available yet")
    mirror_file("gpt2/encoder.json")
    return tokenizer.load_tokenizer("gpt2")


def test_real_tokenizer_the_verdict_book_loaders(tmp_path):
    tok = _real_gpt2()
    text = mirror_file("the-verdict.txt").read_text(encoding="utf-8")
    ids = tok.encode(text, allowed_special="all")
    assert len(ids) == 5145  # the book's count

    out = tmp_path / "verdict.bin"
    header = tokenize_corpus(mirror_file("the-verdict.txt"), out, tok, spec="gpt2", chunk_chars=1000, progress=False)
    assert TokenFile(out)[:].tolist() == ids
    assert header.tokenizer == {"spec": "gpt2", "vocab_size": 50257, "eos_id": 50256,
                                "fingerprint": fingerprint(tok)}

    # Book ch05: 90/10 split of the characters, context 256, stride 256, batch 2.
    train_text, val_text = split_train_val(text, 0.9)
    task = PretrainTask(WindowDataset(tok.encode(train_text), 256, 256), WindowDataset(tok.encode(val_text), 256, 256))
    train, val = list(task.train_batches(0, 2)), list(task.val_batches(2))
    assert len(train) == 9 and len(val) == 1  # book: 9 train batches (4,608 tokens), 1 validation batch
    assert all(x.shape == (2, 256) for x, _ in train)
