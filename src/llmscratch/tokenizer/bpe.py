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
import json
import operator
import os
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import regex

from llmscratch.tokenizer.byte_level import texts_to_tokens, token_to_text
from llmscratch.tokenizer.pretokenize import IGNORE_MERGES_BY_DEFAULT, PreTokenizer, get_pre_tokenizer
from llmscratch.utils import UserError, atomic_write_text


class DisallowedSpecialToken(ValueError):
    """Text holds a special token that encode() was not allowed to encode as one (`token`)."""

    def __init__(self, token: str):
        super().__init__(f"text contains the special token {token!r}, which is not allowed. To encode it as the "
                         f"special token, pass allowed_special={{{token!r}}} or allowed_special='all'; to encode it "
                         "as ordinary text, pass disallowed_special=().")
        self.token = token

MergeRule = Literal["merges", "tokens"]
FORMAT = "llmscratch-bpe"  # our tokenizer file (see `tokenizer_to_dict`)
VERSION = 1
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

    Build one with `train(...)`, `Tokenizer.load(path)`, `Tokenizer.from_vocab_and_merges(...)`, or
    `load_tokenizer(spec)` (GPT-2's files, Hugging Face tokenizer.json, our files).
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

        vocab = {int(i): tok if type(tok) is bytes else bytes(tok) for i, tok in vocab.items()}
        ids = [*vocab, *self.special_tokens.values()]
        if ids and min(ids) < 0:
            raise ValueError("token ids must be >= 0")
        self.vocab_size = max(ids) + 1 if ids else 0
        table: list[bytes | None] = [None] * self.vocab_size
        for i, tok in vocab.items():
            table[i] = tok
        # The first id wins when a vocabulary lists the same bytes twice (later ones are overwritten here).
        self._bytes_to_id: dict[bytes, int] = {tok: i for i, tok in reversed(vocab.items())}
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
            special, merges = self._special_ids, self.merges
            # bytes of the ordinary tokens by id, None for special ones and ids without a token
            names = [None if i in special else t for i, t in enumerate(self._id_to_bytes)]
            n, lookup = len(names), self._bytes_to_id
            ids = list(chain.from_iterable(merges))  # every id of every merge, for one min and one max
            if min(ids, default=0) < 0 or max(ids, default=0) >= n:
                merged = [None if not (0 <= a < n and 0 <= b < n) else 0 for a, b in merges]  # the first bad one
            else:
                merged = [lookup.get(names[a] + names[b]) if names[a] is not None and names[b] is not None else None
                          for a, b in merges]
            if None in merged:
                rank = merged.index(None)
                a, b = merges[rank]
                raise ValueError(
                    f"merge #{rank} ({a}, {b}) does not join two ordinary tokens into a vocabulary token"
                )
            # The first of repeated merges wins: later ranks are written first and overwritten.
            table = {pair: (rank, m) for rank, (pair, m) in reversed(list(enumerate(zip(merges, merged))))}
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
            for i in [i for i, kind in enumerate(token_types) if kind in (GGUF_CONTROL, GGUF_USER_DEFINED)]:
                if i in by_id:
                    specials.setdefault(by_id[i], i)
        special_ids = set(specials.values())
        ordinary = [(t, i) for t, i in items if i not in special_ids] if special_ids else items
        id_bytes = dict(zip([i for _, i in ordinary], texts_to_tokens([t for t, _ in ordinary])))
        lookup = {t: i for t, i in items}
        lookup.update(specials)
        sides = [m.split(" ") if isinstance(m, str) else m for m in merges]
        try:
            pairs = [(lookup[left], lookup[right]) for left, right in sides]
        except (KeyError, ValueError):  # a side missing from the vocabulary, or a merge that is not two sides
            for n, m in enumerate(sides):
                if len(m) != 2 or m[0] not in lookup or m[1] not in lookup:
                    raise ValueError(f"merge #{n} {' '.join(map(repr, m))} names a token missing from the "
                                     "vocabulary") from None
            raise
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
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """A tokenizer saved by `save`."""
        return tokenizer_from_dict(read_json(path, "tokenizer file"), source=str(path))

    def save(self, path: str | os.PathLike, vocab_view: bool = True) -> None:
        """Write this tokenizer to `path` (versioned JSON) and, with `vocab_view`, a readable `.vocab` beside it."""
        atomic_write_text(path, json.dumps(tokenizer_to_dict(self), ensure_ascii=False, indent=1) + "\n")
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
        ids: list[int] = []
        for part, special in split_special(text, self.special_tokens, allowed_special, disallowed_special,
                                           self._special_regex_cache):
            if special is None:
                ids.extend(self.encode_ordinary(part))
            else:
                ids.append(special)
        return ids

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
                ids = tuple(merge_heap(parts, self._pairs))
            else:
                ids = tuple(merge_scan(parts, self._pairs))
        return ids

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


def split_special(
    text: str,
    special_tokens: Mapping[str, int],
    allowed_special: Literal["all"] | Iterable[str],
    disallowed_special: Literal["all"] | Iterable[str],
    patterns: dict[frozenset[str], regex.Pattern],
) -> Iterator[tuple[str, int | None]]:
    """`text` cut at the allowed special tokens: (ordinary text, None) and (token text, its id) in order.

    ValueError when the text holds a disallowed special token (see `Tokenizer.encode`). Names in
    `allowed_special` that are not special tokens are ignored. `patterns` caches the compiled regexes.
    """
    allowed = set(special_tokens)
    if allowed_special != "all":
        allowed.intersection_update(_as_set(allowed_special))
    if disallowed_special == "all":
        disallowed = set(special_tokens) - allowed
    else:
        disallowed = _as_set(disallowed_special) & set(special_tokens)
    if disallowed:
        m = _special_regex(frozenset(disallowed), patterns).search(text)
        if m:
            raise DisallowedSpecialToken(m.group())
    if not allowed:
        yield text, None
        return
    pos = 0
    for m in _special_regex(frozenset(allowed), patterns).finditer(text):
        yield text[pos : m.start()], None
        yield m.group(), special_tokens[m.group()]
        pos = m.end()
    yield text[pos:], None


def _special_regex(tokens: frozenset[str], patterns: dict[frozenset[str], regex.Pattern]) -> regex.Pattern:
    """A pattern matching any of `tokens`, longest first at each position (cached in `patterns`)."""
    pattern = patterns.get(tokens)
    if pattern is None:
        ordered = sorted(tokens, key=lambda t: (-len(t), t))
        pattern = regex.compile("|".join(regex.escape(t) for t in ordered))
        patterns[tokens] = pattern
    return pattern


def vocab_view_path(path: str | os.PathLike) -> str:
    """Where the readable `.vocab` view of a tokenizer file goes: its name with the suffix `.vocab`."""
    root, ext = os.path.splitext(os.fspath(path))
    return (root if ext else os.fspath(path)) + ".vocab"


def merge_scan(ids: list[int], pairs: Mapping[tuple[int, int], tuple[int, int]]) -> list[int]:
    """BPE merges on a short list of ids: keep the priority of every adjacent pair, merge the best.

    `pairs`: (left id, right id) -> (priority, merged id); the lowest priority merges first, leftmost on ties.
    """
    get = pairs.get
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

def merge_heap(ids: list[int], pairs: Mapping[tuple[int, int], tuple[int, int]]) -> list[int]:
    """BPE merges on a long list of ids in O(n log n): a heap of candidate pairs over a linked list.

    Heap entries are (priority, start position, left id, right id); the start position breaks ties
    leftmost first, exactly like `merge_scan`. Entries made stale by earlier merges are skipped.
    """
    get = pairs.get
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


# ---------------------------------------------------------------------- our file format


def tokenizer_to_dict(tok: Tokenizer) -> dict:
    """The JSON-ready content of our tokenizer file."""
    specials = set(tok.special_tokens.values())
    vocab = {str(i): token_to_text(tok.token_bytes(i)) for i in tok.token_ids() if i not in specials}
    texts = list(vocab.values())
    if len(set(texts)) == len(texts):
        merges: list = [f"{vocab[str(a)]} {vocab[str(b)]}" for a, b in tok.merges]
    else:  # the same bytes under two ids: names would be ambiguous, keep the ids
        merges = [[a, b] for a, b in tok.merges]
    return {
        "format": FORMAT,
        "version": VERSION,
        "pre_tokenizer": tok.pre_tokenizer.to_dict(),
        "merge_rule": tok.merge_rule,
        "ignore_merges": tok.ignore_merges,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "special_tokens": dict(tok.special_tokens),
        "vocab": vocab,
        "merges": merges,
    }


def tokenizer_from_dict(d: dict, source: str = "tokenizer file") -> Tokenizer:
    """A tokenizer from the content of our tokenizer file."""
    if d.get("format") != FORMAT:
        raise UserError(f"{source} is not an {FORMAT} file (its format is {d.get('format')!r})")
    if d.get("version") != VERSION:
        raise UserError(f"{source} has version {d.get('version')!r}; this llmscratch reads version {VERSION}")
    try:
        vocab = dict(zip(map(int, d["vocab"]), texts_to_tokens(list(d["vocab"].values()))))
        by_text = {}
        for i, t in sorted((int(i), t) for i, t in d["vocab"].items()):
            by_text.setdefault(t, i)
        merges = []
        for m in d["merges"]:
            if isinstance(m, str):
                left, right = m.split(" ")
                merges.append((by_text[left], by_text[right]))
            else:
                merges.append((int(m[0]), int(m[1])))
        return Tokenizer(
            vocab,
            merges,
            {str(t): int(i) for t, i in d["special_tokens"].items()},
            pre_tokenizer=PreTokenizer.from_dict(d["pre_tokenizer"]),
            merge_rule=d.get("merge_rule", "merges"),
            ignore_merges=bool(d.get("ignore_merges", False)),
            bos_id=d.get("bos_id"),
            eos_id=d.get("eos_id"),
            pad_id=d.get("pad_id"),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{source} is damaged: {type(e).__name__}: {e}") from None


def render_token(data: bytes) -> str:
    """A token's bytes for people: UTF-8 text, invalid bytes as \\xNN, control characters as \\uXXXX."""
    text = data.decode("utf-8", errors="backslashreplace")
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c)[0] == "C" else c for c in text)


def write_vocab_view(tok: Tokenizer, path: str | os.PathLike) -> None:
    """A readable list of the vocabulary (minbpe's .vocab): id, [token], and what it was merged from."""
    made_from: dict[int, tuple[int, int]] = {}
    for a, b in tok.merges:
        merged = tok._bytes_to_id.get(tok.token_bytes(a) + tok.token_bytes(b))
        if merged is not None:
            made_from.setdefault(merged, (a, b))
    lines = [
        f"# {tok!r}",
        "# One token a line: id [token] and, for merged tokens, <- [left][right]. Only for reading:",
        "# load the tokenizer file instead. Control characters are written \\uXXXX, bytes of incomplete",
        "# UTF-8 characters \\xNN.",
    ]
    for i in tok.token_ids():
        line = f"{i} [{render_token(tok.token_bytes(i))}]"
        if tok.is_special(i):
            line += " special"
        elif i in made_from:
            a, b = made_from[i]
            line += f" <- [{render_token(tok.token_bytes(a))}][{render_token(tok.token_bytes(b))}]"
        lines.append(line)
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None
