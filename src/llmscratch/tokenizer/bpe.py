"""The byte-level BPE tokenizer: encode text to token ids and decode ids back to text.

Encoding runs in three steps:
1. Special tokens (like "<|endoftext|>") are cut out of the text when allowed; text that contains a
   special token that is not allowed is refused (as tiktoken does), so user text can never smuggle in
   a control token by accident.
2. The pre-tokenizer cuts the rest into chunks (words with their leading space, numbers, punctuation runs).
3. Inside each chunk, BPE starts from one token per byte and repeatedly merges the adjacent pair with the
   best (lowest) priority, leftmost first, until no adjacent pair can merge. Results are cached per chunk:
   real text repeats its words, so most chunks are looked up, not merged.

Which pairs may merge, and with which priority (`merge_rule`):
- "merges": exactly the listed merges, priority = position in the merge list (Hugging Face tokenizers,
  llama.cpp, our trainer).
- "tokens": any adjacent pair whose concatenation is a vocabulary token, priority = that token's id
  (tiktoken's rule, used for GPT-2's files so that our ids equal tiktoken's on every text).
"""

from __future__ import annotations

import heapq
import operator
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Literal

import regex

from llmscratch.tokenizer.byte_level import text_to_token
from llmscratch.tokenizer.pretokenize import IGNORE_MERGES_BY_DEFAULT, PreTokenizer, get_pre_tokenizer

MergeRule = Literal["merges", "tokens"]
_NO_MERGE = (sys.maxsize, -1)
# Chunks longer than this many bytes merge with a heap instead of rescanning all pairs per merge.
HEAP_THRESHOLD = 128
# The per-chunk cache is emptied when it grows past this many entries (bounded memory on huge corpora).
CACHE_MAX = 1 << 18
# GGUF token types (tokenizer.ggml.token_type) that are special tokens.
GGUF_CONTROL = 3
GGUF_USER_DEFINED = 4


class Tokenizer:
    """A byte-level BPE tokenizer.

    Build one with `train(...)`, `Tokenizer.load(path)`, `Tokenizer.from_gpt2_files(...)`,
    `Tokenizer.from_hf_json(...)`, `Tokenizer.from_vocab_and_merges(...)`, or `load_tokenizer(spec)`.
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[int, int]],
        special_tokens: Mapping[str, int] | None = None,
        pre_tokenizer: PreTokenizer | str = "gpt2",
        merge_rule: MergeRule = "merges",
        ignore_merges: bool = False,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        """`vocab`: id -> bytes of the ordinary tokens; `merges`: (left id, right id) pairs in priority
        order; `special_tokens`: text -> id, ids not in `vocab`."""
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        self.pre_tokenizer = (
            pre_tokenizer if isinstance(pre_tokenizer, PreTokenizer) else get_pre_tokenizer(pre_tokenizer)
        )
        if merge_rule not in ("merges", "tokens"):
            raise ValueError(f"merge_rule must be 'merges' or 'tokens', not {merge_rule!r}")
        self.merge_rule: MergeRule = merge_rule
        self.ignore_merges = bool(ignore_merges)
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]

        ids = list(vocab) + list(self.special_tokens.values())
        if any(i < 0 for i in ids):
            raise ValueError("token ids must be >= 0")
        self.vocab_size = max(ids) + 1 if ids else 0
        table: list[bytes | None] = [None] * self.vocab_size
        self._bytes_to_id: dict[bytes, int] = {}
        for i, tok in vocab.items():
            table[i] = bytes(tok)
            # The first id wins when a vocabulary lists the same bytes twice.
            self._bytes_to_id.setdefault(bytes(tok), i)
        for text, i in self.special_tokens.items():
            if i in vocab:
                raise ValueError(f"special token {text!r} reuses id {i} of an ordinary token")
            table[i] = text.encode("utf-8")
        self._id_to_bytes = table
        self._special_ids = frozenset(self.special_tokens.values())

        missing = [b for b in range(256) if bytes([b]) not in self._bytes_to_id]
        self._byte_ids: list[int] = [self._bytes_to_id.get(bytes([b]), -1) for b in range(256)]
        self._missing_bytes = frozenset(missing)
        self._pairs = self._build_pair_table()
        self._cache: dict[str, tuple[int, ...]] = {}
        self._special_regex_cache: dict[frozenset[str], regex.Pattern] = {}

        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary (size {self.vocab_size})")
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id

    # ------------------------------------------------------------------ construction helpers

    def _build_pair_table(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(left id, right id) -> (priority, merged id)."""
        table: dict[tuple[int, int], tuple[int, int]] = {}
        if self.merge_rule == "merges":
            n = self.vocab_size
            for rank, (a, b) in enumerate(self.merges):
                left = self._id_to_bytes[a] if 0 <= a < n and a not in self._special_ids else None
                right = self._id_to_bytes[b] if 0 <= b < n and b not in self._special_ids else None
                merged = self._bytes_to_id.get(left + right) if left is not None and right is not None else None
                if merged is None:
                    raise ValueError(
                        f"merge #{rank} ({a}, {b}) does not join two ordinary tokens into a vocabulary token"
                    )
                table.setdefault((a, b), (rank, merged))
        else:
            lookup = self._bytes_to_id
            for tok, i in lookup.items():
                for cut in range(1, len(tok)):
                    a, b = lookup.get(tok[:cut]), lookup.get(tok[cut:])
                    if a is not None and b is not None:
                        table[(a, b)] = (i, i)
        return table

    @classmethod
    def from_vocab_and_merges(
        cls,
        vocab: Mapping[str, int] | Sequence[str],
        merges: Sequence[str] | Sequence[tuple[str, str]],
        special_tokens: Mapping[str, int] | None = None,
        pre: str | PreTokenizer = "gpt2",
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        token_types: Sequence[int] | None = None,
        ignore_merges: bool | None = None,
        merge_rule: MergeRule = "merges",
    ) -> Tokenizer:
        """A tokenizer from vocabulary and merge lists in the byte-level text form ("Ġthe", merges "Ġ t").

        This is the shape of GGUF metadata (`tokenizer.ggml.tokens` as a list, `.merges`, `.token_type`,
        `.pre`) and of Hugging Face's tokenizer.json. Tokens named in `special_tokens`, or with a GGUF
        `token_types` entry CONTROL (3) or USER_DEFINED (4), are special: their text is taken literally and
        they are matched as whole strings when allowed. `pre` names the pre-tokenizer ("gpt2", "smollm",
        "llama-bpe"; GGUF spellings like "gpt-2" and "llama3" too). `ignore_merges` (default: on for
        "llama-bpe") emits a chunk that is itself a token as that token.
        """
        if isinstance(vocab, Mapping):
            items = [(str(t), int(i)) for t, i in vocab.items()]
        else:
            items = [(str(t), i) for i, t in enumerate(vocab)]
        specials = {str(t): int(i) for t, i in (special_tokens or {}).items()}
        if token_types is not None:
            if len(token_types) != len(items):
                raise ValueError(f"{len(token_types)} token types for {len(items)} tokens")
            by_id = {i: t for t, i in items}
            for i, kind in enumerate(token_types):
                if int(kind) in (GGUF_CONTROL, GGUF_USER_DEFINED) and i in by_id:
                    specials.setdefault(by_id[i], i)
        special_ids = set(specials.values())
        id_bytes = {i: text_to_token(t) for t, i in items if i not in special_ids}
        lookup = {t: i for t, i in items}
        lookup.update(specials)
        pairs: list[tuple[int, int]] = []
        for n, m in enumerate(merges):
            left, right = m.split(" ") if isinstance(m, str) else m
            if left not in lookup or right not in lookup:
                raise ValueError(f"merge #{n} {left!r} {right!r} names a token missing from the vocabulary")
            pairs.append((lookup[left], lookup[right]))
        pre_tok = pre if isinstance(pre, PreTokenizer) else get_pre_tokenizer(pre)
        if ignore_merges is None:
            ignore_merges = pre_tok.name in IGNORE_MERGES_BY_DEFAULT
        return cls(
            id_bytes,
            pairs,
            specials,
            pre_tokenizer=pre_tok,
            merge_rule=merge_rule,
            ignore_merges=ignore_merges,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
        )

    @classmethod
    def bytes_only(cls, vocab_size: int = 257, eos: str = "<|endoftext|>") -> Tokenizer:
        """A tokenizer without merges for a model of `vocab_size` (>= 257) tokens, e.g. a random-weight preset:
        text is encoded one token per byte (ids 0..255), `eos` is id 256, and the ids above (which encoding never
        produces) decode to placeholders `<|N|>`."""
        if vocab_size < 257:
            raise ValueError(f"vocab_size must be >= 257 (256 bytes + eos), got {vocab_size}")
        vocab = {i: bytes([i]) for i in range(256)} | {i: f"<|{i}|>".encode() for i in range(257, vocab_size)}
        return cls(vocab, [], {eos: 256}, "gpt2", eos_id=256)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> Tokenizer:
        """GPT-2's tokenizer from OpenAI's published `encoder.json` and `vocab.bpe`."""
        from llmscratch.tokenizer.files import read_gpt2_files

        return read_gpt2_files(encoder_json, vocab_bpe)

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike) -> Tokenizer:
        """A byte-level BPE tokenizer from a Hugging Face `tokenizer.json`."""
        from llmscratch.tokenizer.files import read_hf_tokenizer_json

        return read_hf_tokenizer_json(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """A tokenizer saved by `save`."""
        from llmscratch.tokenizer.files import read_tokenizer_file

        return read_tokenizer_file(path)

    def save(self, path: str | os.PathLike, vocab_view: bool = True) -> None:
        """Write this tokenizer to `path` (versioned JSON) and, with `vocab_view`, a readable `.vocab` beside it."""
        from llmscratch.tokenizer.files import write_tokenizer_file, write_vocab_view

        write_tokenizer_file(self, path)
        if vocab_view:
            write_vocab_view(self, vocab_view_path(path))

    # ------------------------------------------------------------------ encoding

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, with special-token strings treated as ordinary text."""
        try:
            chunks = self.pre_tokenizer.split(text)
            cache = self._cache
            parts = list(map(cache.get, chunks))
            if None in parts:  # merge each new distinct chunk once, then look everything up again
                distinct = set(chunks)
                new = [c for c in distinct if c not in cache]
                if len(cache) + len(new) > CACHE_MAX:
                    cache.clear()
                    new = list(distinct)
                for c in new:
                    cache[c] = self._encode_chunk(c)
                parts = list(map(cache.__getitem__, chunks))
        except UnicodeEncodeError:
            # Lone surrogates cannot be UTF-8 encoded; like tiktoken, replace them with U+FFFD.
            return self.encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        return list(chain.from_iterable(parts))

    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | Iterable[str] = frozenset(),
        disallowed_special: Literal["all"] | Iterable[str] = "all",
    ) -> list[int]:
        """Token ids of `text`.

        A special token in the text becomes its id only if it is in `allowed_special` ("all" for every
        one). If the text contains a token of `disallowed_special` ("all": every special token not
        allowed), a ValueError says which; pass `disallowed_special=()` to encode such text as ordinary
        text instead.
        """
        # Names in allowed_special that are not special tokens of this vocabulary are ignored.
        allowed = set(self.special_tokens)
        if allowed_special != "all":
            allowed.intersection_update(_as_set(allowed_special))
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = _as_set(disallowed_special) & set(self.special_tokens)
        if disallowed:
            m = self._special_regex(frozenset(disallowed)).search(text)
            if m:
                raise ValueError(
                    f"text contains the special token {m.group()!r}, which is not allowed. To encode it as "
                    f"the special token, pass allowed_special={{{m.group()!r}}} or allowed_special='all'; to "
                    "encode it as ordinary text, pass disallowed_special=()."
                )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        pos = 0
        for m in self._special_regex(frozenset(allowed)).finditer(text):
            ids.extend(self.encode_ordinary(text[pos : m.start()]))
            ids.append(self.special_tokens[m.group()])
            pos = m.end()
        ids.extend(self.encode_ordinary(text[pos:]))
        return ids

    def _special_regex(self, tokens: frozenset[str]) -> regex.Pattern:
        """A pattern matching any of `tokens`, longest first at each position."""
        pattern = self._special_regex_cache.get(tokens)
        if pattern is None:
            ordered = sorted(tokens, key=lambda t: (-len(t), t))
            pattern = regex.compile("|".join(regex.escape(t) for t in ordered))
            self._special_regex_cache[tokens] = pattern
        return pattern

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """The ids of one pre-tokenized chunk."""
        data = chunk.encode("utf-8")
        whole = self._bytes_to_id.get(data) if self.ignore_merges else None
        if whole is not None:
            ids: tuple[int, ...] = (whole,)
        else:
            if self._missing_bytes and not self._missing_bytes.isdisjoint(data):
                bad = sorted(self._missing_bytes.intersection(data))[0]
                raise ValueError(f"byte 0x{bad:02x} of {chunk!r} has no token in this vocabulary")
            parts = [self._byte_ids[b] for b in data]
            if len(parts) > HEAP_THRESHOLD:
                ids = tuple(self._merge_heap(parts))
            else:
                ids = tuple(self._merge_scan(parts))
        return ids

    def _merge_scan(self, ids: list[int]) -> list[int]:
        """BPE merges on a short list of ids: keep the priority of every adjacent pair, merge the best."""
        get = self._pairs.get
        ranks = [get(pair, _NO_MERGE)[0] for pair in zip(ids, ids[1:])]
        none = _NO_MERGE[0]
        while ranks:
            best = min(ranks)
            if best == none:
                break
            i = ranks.index(best)  # leftmost pair of the best priority
            merged = get((ids[i], ids[i + 1]))[1]
            ids[i] = merged
            del ids[i + 1]
            del ranks[i]
            if i > 0:
                ranks[i - 1] = get((ids[i - 1], merged), _NO_MERGE)[0]
            if i < len(ranks):
                ranks[i] = get((merged, ids[i + 1]), _NO_MERGE)[0]
        return ids

    def _merge_heap(self, ids: list[int]) -> list[int]:
        """BPE merges on a long list of ids in O(n log n): a heap of candidate pairs over a linked list.

        Heap entries are (priority, start position, left id, right id); the start position breaks ties
        leftmost first, exactly like `_merge_scan`. Entries made stale by earlier merges are skipped.
        """
        get = self._pairs.get
        n = len(ids)
        tok = list(ids)  # token at each start position; -1 once merged into its left neighbour
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            m = get((tok[i], tok[i + 1]))
            if m is not None:
                heap.append((m[0], i, tok[i], tok[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, i, a, b = heapq.heappop(heap)
            j = nxt[i]
            if tok[i] != a or j >= n or tok[j] != b:
                continue
            merged = get((a, b))[1]
            tok[i] = merged
            tok[j] = -1
            k = nxt[j]
            nxt[i] = k
            if k < n:
                prv[k] = i
                m = get((merged, tok[k]))
                if m is not None:
                    heapq.heappush(heap, (m[0], i, merged, tok[k]))
            p = prv[i]
            if p >= 0:
                m = get((tok[p], merged))
                if m is not None:
                    heapq.heappush(heap, (m[0], p, tok[p], merged))
        out = []
        i = 0
        while i < n:
            out.append(tok[i])
            i = nxt[i]
        return out

    def clear_cache(self) -> None:
        """Forget cached chunk encodings (for fair benchmarks)."""
        self._cache.clear()

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that `ids` stand for (special tokens give their UTF-8 text)."""
        if hasattr(ids, "tolist"):  # torch tensors and numpy arrays
            ids = ids.tolist()
        ids = list(ids)
        table = self._id_to_bytes
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            for i in ids:
                self.token_bytes(i)
            raise

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text that `ids` stand for. Byte sequences that are not valid UTF-8 become U+FFFD with
        errors="replace" (like tiktoken); errors="strict" raises UnicodeDecodeError instead."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        try:
            token_id = operator.index(token_id)
        except TypeError:
            raise ValueError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= token_id < self.vocab_size or self._id_to_bytes[token_id] is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary (ids 0..{self.vocab_size - 1})")
        return self._id_to_bytes[token_id]

    # ------------------------------------------------------------------ inspection

    def token_ids(self) -> list[int]:
        """Every id that names a token (ordinary or special), in increasing order."""
        return [i for i, b in enumerate(self._id_to_bytes) if b is not None]

    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is a special token."""
        return token_id in self._special_ids

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={len(self.special_tokens)}, pre={self.pre_tokenizer.name!r}, "
            f"merge_rule={self.merge_rule!r})"
        )


def _as_set(tokens: Iterable[str]) -> set[str]:
    """A set of token strings; a single string is one token, not a set of characters."""
    return {tokens} if isinstance(tokens, str) else set(tokens)


def vocab_view_path(path: str | os.PathLike) -> str:
    """Where the readable `.vocab` view of a tokenizer file goes: its name with the suffix `.vocab`."""
    root, ext = os.path.splitext(os.fspath(path))
    return (root if ext else os.fspath(path)) + ".vocab"
