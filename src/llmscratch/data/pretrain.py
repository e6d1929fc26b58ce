"""Pretraining data: sliding windows over token ids, train/validation split, resumable shuffled loaders,
and token files on disk for corpora larger than memory.

Window rule (the book's `GPTDatasetV1`): window k starts at token `k * stride`; its input is
`ids[s : s + max_length]` and its target the same span shifted by one, `ids[s + 1 : s + max_length + 1]`. A
window needs `max_length + 1` tokens, so there are `(n - max_length - 1) // stride + 1` windows for `n` tokens.
Tokens after the last full window are dropped (no partial, padded window). With `stride > max_length` the
tokens between two windows are never seen; with `stride < max_length` windows overlap.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import string
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from llmscratch.tokenizer import fingerprint
from llmscratch.utils import (
    UserError,
    atomic_path,
    atomic_write_text,
    check_not_input,
    check_output_file,
    derived_seed,
)

TOKEN_FILE_FORMAT = "llmscratch-tokens"
TOKEN_FILE_VERSION = 1


# ---------------------------------------------------------------------------------------------------------
# Token files on disk
# ---------------------------------------------------------------------------------------------------------


def header_path(path: str | os.PathLike) -> Path:
    """The JSON header beside a token file: `tokens.bin` -> `tokens.bin.json`."""
    return Path(f"{path}.json")


@dataclass(frozen=True)
class TokenFileHeader:
    """What `tokens.bin.json` records about `tokens.bin`: a flat array of `count` token ids of `dtype`."""

    dtype: str
    count: int
    tokenizer: dict[str, Any]  # {"spec": "gpt2" or a path, "vocab_size", "eos_id", "fingerprint"}
    source: dict[str, Any] = field(default_factory=dict)  # {"path", "bytes", "sha256"} of the input text
    format: str = TOKEN_FILE_FORMAT
    version: int = TOKEN_FILE_VERSION


class TokenFile:
    """Token ids stored by `tokenize_corpus`, read through `np.memmap` without loading the file.

    `TokenFile(path)` covers the whole file; `view(start, stop)` a range of it (used for train/validation
    splits). Indexing with a slice returns a (lazy) numpy array of the ids.
    """

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None):
        self.path = Path(path)
        hpath = header_path(self.path)
        if not self.path.is_file():
            raise UserError(f"token file {self.path} not found (write one with `llmscratch data tokenize`)")
        if not hpath.is_file():
            raise UserError(f"{hpath} is missing: token files are written with `llmscratch data tokenize`")
        try:
            raw = json.loads(hpath.read_text())
            self.header = TokenFileHeader(**raw)
        except (ValueError, TypeError) as e:
            raise UserError(f"{hpath} is not a token file header: {e}") from None
        if self.header.format != TOKEN_FILE_FORMAT or self.header.version != TOKEN_FILE_VERSION:
            raise UserError(
                f"{hpath}: format {self.header.format!r} version {self.header.version} is not supported "
                f"(expected {TOKEN_FILE_FORMAT!r} version {TOKEN_FILE_VERSION}); tokenize the corpus again"
            )
        if self.header.dtype not in ("uint16", "uint32"):
            raise UserError(f"{hpath}: unsupported dtype {self.header.dtype!r}")
        expected = self.header.count * np.dtype(self.header.dtype).itemsize
        if self.path.stat().st_size != expected:
            raise UserError(
                f"{self.path} holds {self.path.stat().st_size} bytes but its header says {self.header.count} "
                f"{self.header.dtype} tokens ({expected} bytes); tokenize the corpus again"
            )
        count = self.header.count
        self._start = start
        self._stop = count if stop is None else stop
        if not 0 <= self._start <= self._stop <= count:
            raise ValueError(f"view [{start}, {stop}) outside the {count} tokens of {self.path}")
        self._array: np.ndarray | None = None

    def _tokens(self) -> np.ndarray:
        if self._array is None:
            if self.header.count == 0:
                self._array = np.empty(0, dtype=self.header.dtype)
            else:
                self._array = np.memmap(self.path, dtype=self.header.dtype, mode="r", shape=(self.header.count,))
        return self._array[self._start : self._stop]

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, key: int | slice):
        return self._tokens()[key]

    def view(self, start: int = 0, stop: int | None = None) -> TokenFile:
        """The tokens `[start, stop)` of this file (or view), sharing the same file."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"view [{start}, {stop}) outside a token range of length {len(self)}")
        return TokenFile(self.path, self._start + start, self._start + stop)

    def windows(self, max_length: int, stride: int) -> WindowDataset:
        """The sliding windows over these tokens."""
        return WindowDataset(self, max_length, stride)

    def __getstate__(self):  # DataLoader workers reopen the memmap instead of receiving a copy of the data
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens [{self._start}, {self._stop}) of {self.header.count})"


Tokens = Sequence[int] | torch.Tensor | np.ndarray | TokenFile


# ---------------------------------------------------------------------------------------------------------
# Windows, split, loaders
# ---------------------------------------------------------------------------------------------------------


def encode_text(text: str, tokenizer, allowed_special: Any = "all") -> list[int]:
    """Token ids of `text` (special tokens such as <|endoftext|> in the text are encoded as such)."""
    return list(tokenizer.encode(text, allowed_special=allowed_special))


def num_windows(num_tokens: int, max_length: int, stride: int) -> int:
    """How many full windows `num_tokens` tokens give (0 when fewer than `max_length + 1`)."""
    if num_tokens < max_length + 1:
        return 0
    return (num_tokens - max_length - 1) // stride + 1


def _as_token_source(tokens: Tokens) -> torch.Tensor | TokenFile:
    if isinstance(tokens, TokenFile):
        return tokens
    if isinstance(tokens, torch.Tensor):
        t = tokens
    elif isinstance(tokens, np.ndarray):
        t = torch.from_numpy(tokens.astype(np.int64, copy=False))
    else:
        t = torch.tensor(list(tokens), dtype=torch.long)
    if t.dim() != 1:
        raise UserError(f"token ids must be a flat sequence, got shape {tuple(t.shape)}")
    if t.is_floating_point():
        raise UserError("token ids must be integers, got a floating point tensor")
    return t.long()


class WindowDataset(Dataset):
    """Sliding windows (input, target) of `max_length` tokens each over an in-memory sequence or a `TokenFile`.

    See the module docstring for the exact rule; `len(ds)` windows, item k = two LongTensors of shape (T,).
    """

    def __init__(self, tokens: Tokens, max_length: int, stride: int):
        for name, value in (("max_length", max_length), ("stride", stride)):
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        self.tokens = _as_token_source(tokens)
        self.max_length = max_length
        self.stride = stride
        n = len(self.tokens)
        self._count = num_windows(n, max_length, stride)
        if self._count == 0:
            raise UserError(
                f"text too short: {n} tokens, but one window of max_length={max_length} needs at least "
                f"{max_length + 1} tokens (inputs plus the target shifted by one); use more text or a "
                "smaller max_length / context length"
            )

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"window {index} out of range ({self._count} windows)")
        start = index * self.stride
        chunk = self.tokens[start : start + self.max_length + 1]
        if not isinstance(chunk, torch.Tensor):
            chunk = torch.from_numpy(np.asarray(chunk, dtype=np.int64))
        return chunk[:-1], chunk[1:]  # (T,), (T,)


def split_train_val(data, train_ratio: float = 0.9):
    """Split a text, id sequence or `TokenFile` into its first `train_ratio` and the rest (the book: 90/10 of
    the characters of the text, `int(train_ratio * len(data))`)."""
    if not 0.0 < train_ratio <= 1.0:
        raise UserError(f"train_ratio must be in (0, 1], got {train_ratio}")
    cut = int(train_ratio * len(data))
    if isinstance(data, TokenFile):
        return data.view(0, cut), data.view(cut, len(data))
    return data[:cut], data[cut:]


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a pure function of (seed, epoch), sharded over ranks, able to start mid-epoch.

    - `order(epoch)`: this rank's indices for that epoch (shuffled with a torch.Generator seeded from
      (seed, epoch) when `shuffle`, else 0..n-1). All ranks share one permutation; rank r takes positions
      r, r + world_size, ... (like DistributedSampler). Each rank gets the same count: the permutation is
      cut to a multiple of world_size when `drop_last`, else padded by repeating its first indices.
    - `set_epoch(epoch, start)`: the next iteration yields `order(epoch)[start:]`.
    - After an iteration runs to the end, the sampler moves on to the next epoch by itself (start 0), so a
      plain `for epoch ...: for batch in loader` loop sees a new order every epoch.
    """

    def __init__(
        self, num_items: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
        drop_last: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.num_items = num_items
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0

    @property
    def num_samples(self) -> int:
        """How many indices one full epoch gives this rank."""
        n, w = self.num_items, self.world_size
        return n // w if self.drop_last else math.ceil(n / w)

    def order(self, epoch: int) -> list[int]:
        n, w = self.num_items, self.world_size
        if self.shuffle:
            g = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g).tolist()
        else:
            perm = list(range(n))
        total = self.num_samples * w
        if total > n and n > 0:
            perm = (perm * math.ceil(total / n))[:total]
        return perm[:total][self.rank :: w]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside the {self.num_samples} samples of an epoch")
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        yield from self.order(self.epoch)[self.start :]
        self.epoch += 1
        self.start = 0

    def __len__(self) -> int:
        return self.num_samples - self.start


# ---------------------------------------------------------------------------------------------------------
# Streaming a corpus into a token file
# ---------------------------------------------------------------------------------------------------------

_CUT_BEFORE = set(string.punctuation)


def _safe_cut(text: str, lo: int = 0) -> int:
    """The largest p >= max(lo, 1) where encoding `text[:p]` and `text[p:]` separately gives the same ids as
    encoding `text` whole; 0 when there is none.

    A cut goes just before a single space that follows a letter, digit or ASCII punctuation mark and precedes
    a letter ("word| word"). No pre-tokenizer pattern in use (GPT-2's, Llama 3's, SmolLM's) forms a piece that
    crosses such a point: the left piece ends at the non-space character and " word" starts a new piece, and
    the end of the string changes no match, so both halves split into the same pieces as before.
    """
    p = len(text) - 1
    while True:
        p = text.rfind(" ", max(lo, 1), p)
        if p < 1:
            return 0
        prev, nxt = text[p - 1], text[p + 1]
        if nxt.isalpha() and (prev.isalnum() or prev in _CUT_BEFORE):
            return p


def tokenize_corpus(
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    tokenizer,
    *,
    spec: str | None = None,
    chunk_chars: int = 1 << 22,
    allowed_special: Any = "all",
    progress: bool = True,
) -> TokenFileHeader:
    """Encode a UTF-8 text file into a flat token file `out_path` (+ `out_path.json` header), streaming.

    The text is read in pieces of about `chunk_chars` bytes, decoded as UTF-8 with line ends as they are (CRLF
    stays CRLF), and cut only at points where encoding in pieces gives the same ids as encoding the whole text
    (see `_safe_cut`), so the file holds exactly `tokenizer.encode(the file's text, ...)`. The
    tokenizer must not add BOS/EOS or a leading space per call. A text without any cut point is held whole.
    Ids are stored as uint16 when the vocabulary has at most 65,536 entries, else uint32. Both files are
    written atomically. `spec` names the tokenizer in the header ("gpt2", a path; default: the tokenizer's
    `spec` or `name` attribute, else its class name).
    """
    from tqdm.auto import tqdm

    input_path, out_path = Path(input_path), Path(out_path)
    if not input_path.is_file():
        raise UserError(f"corpus file {input_path} not found")
    if not 2 <= chunk_chars <= 1 << 30:
        raise UserError(f"chunk_chars must be in 2..2**30, got {chunk_chars}", params="chunk_chars")
    check_not_input([out_path, header_path(out_path)], [input_path])
    check_output_file(out_path)
    tok = tokenizer
    spec = spec or getattr(tok, "spec", None) or getattr(tok, "name", None) or type(tok).__name__
    vocab_size = int(tok.vocab_size)
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    limit = np.iinfo(dtype).max

    count = 0
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()  # line ends as they are: CRLF is text to encode too
    total_bytes = input_path.stat().st_size
    with (
        atomic_path(out_path) as tmp,
        open(tmp, "wb") as out,
        open(input_path, "rb") as src,
        tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize {input_path.name}",
             disable=not progress) as bar,
    ):
        pending, scanned = "", 0
        while True:
            raw = src.read(chunk_chars)
            final = not raw
            digest.update(raw)
            try:
                pending += decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise UserError(f"{input_path} is not UTF-8 text (byte {e.start} of a chunk: {e.reason})") from None
            cut = len(pending) if final else _safe_cut(pending, lo=max(scanned - 1, 0))
            if cut == 0:
                scanned = len(pending)
            else:
                try:
                    ids = np.asarray(encode_text(pending[:cut], tok, allowed_special), dtype=np.int64)
                except ValueError as e:
                    raise UserError(f"cannot encode {input_path}: {e}") from None
                if ids.size and (ids.min() < 0 or ids.max() > limit):
                    raise UserError(f"tokenizer {spec} produced id {int(ids.max())}, beyond {dtype} storage")
                ids.astype(dtype).tofile(out)
                count += int(ids.size)
                pending, scanned = pending[cut:], 0
                bar.set_postfix(tokens=f"{count:,}", refresh=False)
            bar.update(len(raw))
            if final:
                break
    header = TokenFileHeader(
        dtype=dtype.name,
        count=count,
        tokenizer={"spec": spec, "vocab_size": vocab_size, "eos_id": getattr(tok, "eos_id", None),
                   "fingerprint": fingerprint(tok)},
        source={"path": str(input_path.resolve()), "bytes": total_bytes, "sha256": digest.hexdigest()},
    )
    atomic_write_text(header_path(out_path), json.dumps(asdict(header), indent=2) + "\n")
    return header
