"""SentencePiece-style BPE (Gemma, Llama 2): our own code beside the byte-level tokenizer.

How it differs from byte-level BPE:
- Text is not cut by a regular expression and not turned into bytes first. A space becomes "▁" (U+2581)
  and every character is one starting symbol; a character that is not in the vocabulary falls back to one
  `<0xNN>` token per UTF-8 byte.
- Adjacent symbols merge into a vocabulary piece, the best piece first: by the piece's score (GGUF
  metadata, SentencePiece's rule) or by the position of the pair in a merge list (tokenizer.json). Ties go
  to the leftmost pair.
- Control tokens (`<bos>`, `<start_of_turn>`) are special tokens, used only when allowed (as with the
  byte-level tokenizer); user-defined tokens (Gemma's "\\n\\n", runs of spaces, HTML tags) are always cut
  out of the text whole, before any merging.

`encode` never adds BOS; `add_bos` says whether the model expects one before a prompt (see
`llmscratch.tokenizer.encode_prompt`).
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import regex

from llmscratch.tokenizer.bpe import CACHE_MAX, HEAP_THRESHOLD, merge_heap, merge_scan, split_special
from llmscratch.utils import UserError, atomic_write_text

SPACE = "\u2581"  # "▁", which stands for a space inside pieces
# Piece kinds (SentencePiece's, as GGUF's tokenizer.ggml.token_type stores them).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
FORMAT = "llmscratch-spm"
VERSION = 1
_BYTE_PIECE = regex.compile(r"<0x([0-9A-Fa-f]{2})>")


class SentencePieceTokenizer:
    """A SentencePiece-style BPE tokenizer: same interface as the byte-level `Tokenizer` (encode with
    allowed_special, decode, token_bytes for streaming, bos/eos/pad ids)."""

    def __init__(
        self,
        pieces: Sequence[str],
        kinds: Sequence[int],
        scores: Sequence[float] | None = None,
        merges: Sequence[tuple[int, int]] | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        add_bos: bool = False,
    ) -> None:
        """`pieces[i]`, `kinds[i]`: the text and kind of token i (normal pieces spell spaces "▁", byte
        pieces are "<0xNN>", user-defined and control pieces are literal text). Merge priority: `merges`,
        (left id, right id) pairs best first, when given; else every split of a normal piece into two
        normal pieces, ranked by the piece's score (higher first; `scores` required)."""
        if len(kinds) != len(pieces):
            raise ValueError(f"{len(kinds)} kinds for {len(pieces)} pieces")
        if merges is None and (scores is None or len(scores) != len(pieces)):
            raise ValueError("give either merges or one score per piece")
        self.pieces = [str(p) for p in pieces]
        self.kinds = [int(k) for k in kinds]
        self.scores = None if scores is None else [float(s) for s in scores]
        self.vocab_size = len(self.pieces)
        self.add_bos = bool(add_bos)
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id), ("unk_id", unk_id)):
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary (size {self.vocab_size})")
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.special_tokens = {p: i for i, (p, k) in enumerate(zip(self.pieces, self.kinds)) if k == CONTROL}
        self._special_ids = frozenset(self.special_tokens.values())
        self._user_defined = {p: i for i, (p, k) in enumerate(zip(self.pieces, self.kinds)) if k == USER_DEFINED}
        self._user_regex = _alternation(self._user_defined)
        self._normal = {}
        for i, (p, k) in enumerate(zip(self.pieces, self.kinds)):
            if k == NORMAL:
                self._normal.setdefault(p, i)
        self._byte_ids = self._find_byte_pieces()
        self._id_to_bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]
        self.merges = [(int(a), int(b)) for a, b in merges] if merges is not None else None
        self._pairs = self._pairs_from_merges() if self.merges is not None else self._pairs_from_scores()
        self._word_start = self._word_boundaries()
        self._cache: dict[str, tuple[int, ...]] = {}
        self._special_regex_cache: dict = {}

    # ------------------------------------------------------------------ construction helpers

    def _find_byte_pieces(self) -> list[int]:
        ids = [-1] * 256
        for i, (p, k) in enumerate(zip(self.pieces, self.kinds)):
            m = _BYTE_PIECE.fullmatch(p)
            if k == BYTE and m:
                ids[int(m.group(1), 16)] = i
        return ids

    def _piece_bytes(self, i: int) -> bytes:
        kind, piece = self.kinds[i], self.pieces[i]
        if kind == BYTE:
            m = _BYTE_PIECE.fullmatch(piece)
            if m:
                return bytes([int(m.group(1), 16)])
        if kind == NORMAL:
            return piece.replace(SPACE, " ").encode("utf-8")
        return piece.encode("utf-8")

    def _pairs_from_merges(self) -> dict[tuple[int, int], tuple[int, int]]:
        table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            merged = self._normal.get(self.pieces[a] + self.pieces[b])
            if merged is None:
                raise ValueError(f"merge #{rank} ({a}, {b}) does not join two pieces into a vocabulary piece")
            table.setdefault((a, b), (rank, merged))
        return table

    def _pairs_from_scores(self) -> dict[tuple[int, int], tuple[int, int]]:
        order = sorted(self._normal.values(), key=lambda i: (-self.scores[i], i))
        table: dict[tuple[int, int], tuple[int, int]] = {}
        get = self._normal.get
        for rank, i in enumerate(order):
            piece = self.pieces[i]
            for cut in range(1, len(piece)):
                a, b = get(piece[:cut]), get(piece[cut:])
                if a is not None and b is not None:
                    table.setdefault((a, b), (rank, i))
        return table

    def _word_boundaries(self) -> regex.Pattern:
        """Where text may be cut into words that merge alone: before each "▁", except after text that a
        piece with a "▁" past its start (Gemma's ">▁</") could join across it."""
        lefts = {
            piece[:k]
            for piece in {self.pieces[m] for _, m in self._pairs.values() if SPACE in self.pieces[m][1:]}
            for k in range(1, len(piece))
            if piece[k] == SPACE
        }
        if not lefts:
            return regex.compile(f"(?={SPACE})")
        after = "|".join(regex.escape(t) for t in sorted(lefts, key=lambda t: (-len(t), t)))
        return regex.compile(f"(?<!{after})(?={SPACE})")

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | Iterable[str] = frozenset(),
        disallowed_special: Literal["all"] | Iterable[str] = "all",
    ) -> list[int]:
        """Token ids of `text` (no BOS added). Special tokens as in the byte-level `Tokenizer.encode`."""
        ids: list[int] = []
        for part, special in split_special(
            text, self.special_tokens, allowed_special, disallowed_special, self._special_regex_cache
        ):
            if special is None:
                ids.extend(self.encode_ordinary(part))
            else:
                ids.append(special)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, control-token strings taken as ordinary text."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: U+FFFD, like the byte-level tokenizer
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids: list[int] = []
        pos = 0
        if self._user_regex is not None:
            for m in self._user_regex.finditer(text):
                ids.extend(self._encode_fragment(text[pos : m.start()]))
                ids.append(self._user_defined[m.group()])
                pos = m.end()
        ids.extend(self._encode_fragment(text[pos:]))
        return ids

    def _encode_fragment(self, text: str) -> list[int]:
        """Ids of text that holds no user-defined token."""
        if not text:
            return []
        text = text.replace(" ", SPACE)
        words = [w for w in self._word_start.split(text) if w]
        cache = self._cache
        if len(cache) > CACHE_MAX:
            cache.clear()
        ids: list[int] = []
        for w in words:
            got = cache.get(w)
            if got is None:
                got = cache[w] = self._encode_word(w)
            ids.extend(got)
        return ids

    def _encode_word(self, word: str) -> tuple[int, ...]:
        symbols: list[int] = []
        for ch in word:
            i = self._normal.get(ch)
            if i is not None:
                symbols.append(i)
                continue
            fallback = [self._byte_ids[b] for b in ch.encode("utf-8")]
            if -1 not in fallback:
                symbols.extend(fallback)
            elif self.unk_id is not None:
                symbols.append(self.unk_id)
            else:
                raise ValueError(f"character {ch!r} has no piece, no byte pieces and there is no unknown token")
        merge = merge_heap if len(symbols) > HEAP_THRESHOLD else merge_scan
        return tuple(merge(symbols, self._pairs))

    def merge_list(self) -> list[tuple[int, int]]:
        """Every (left id, right id) pair that may merge, best first (the given merges, or those the scores imply)."""
        if self.merges is not None:
            return list(self.merges)
        return [pair for pair, _ in sorted(self._pairs.items(), key=lambda kv: (kv[1][0], kv[0]))]

    def clear_cache(self) -> None:
        """Forget cached word encodings (for fair benchmarks)."""
        self._cache.clear()

    # ------------------------------------------------------------------ decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that `ids` stand for (control tokens give their text)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text that `ids` stand for (invalid UTF-8 becomes U+FFFD with errors="replace")."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token ("▁" as a space, a byte piece as its byte)."""
        try:
            token_id = operator.index(token_id)
        except TypeError:
            raise ValueError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is not in the vocabulary (ids 0..{self.vocab_size - 1})")
        return self._id_to_bytes[token_id]

    # ------------------------------------------------------------------ inspection

    def token_ids(self) -> list[int]:
        """Every id, in increasing order."""
        return list(range(self.vocab_size))

    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is a control token."""
        return token_id in self._special_ids

    def __repr__(self) -> str:
        rule = "merges" if self.merges is not None else "scores"
        return (
            f"SentencePieceTokenizer(vocab_size={self.vocab_size}, special_tokens={len(self.special_tokens)}, "
            f"user_defined={len(self._user_defined)}, merge_rule={rule!r}, add_bos={self.add_bos})"
        )

    # ------------------------------------------------------------------ our file format

    def to_dict(self) -> dict:
        """The JSON-ready content of our file (format "llmscratch-spm")."""
        return {
            "format": FORMAT, "version": VERSION, "add_bos": self.add_bos,
            "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "unk_id": self.unk_id,
            "pieces": self.pieces, "kinds": self.kinds, "scores": self.scores,
            "merges": None if self.merges is None else [list(m) for m in self.merges],
        }

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "tokenizer file") -> SentencePieceTokenizer:
        """A tokenizer from `to_dict`'s content; UserError when it is not one."""
        if d.get("format") != FORMAT:
            raise UserError(f"{source} is not an {FORMAT} file (its format is {d.get('format')!r})")
        if d.get("version") != VERSION:
            raise UserError(f"{source} has version {d.get('version')!r}; this llmscratch reads version {VERSION}")
        try:
            merges = d.get("merges")
            return cls(
                d["pieces"], d["kinds"], d.get("scores"), None if merges is None else [tuple(m) for m in merges],
                bos_id=d.get("bos_id"), eos_id=d.get("eos_id"), pad_id=d.get("pad_id"), unk_id=d.get("unk_id"),
                add_bos=bool(d.get("add_bos", False)),
            )
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise UserError(f"{source} is damaged: {type(e).__name__}: {e}") from None

    def save(self, path: str | os.PathLike, vocab_view: bool = False) -> None:
        """Write this tokenizer to `path` (JSON, atomically). `vocab_view` is accepted for interface parity:
        the file itself lists every piece."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")


def _alternation(strings: Iterable[str]) -> regex.Pattern | None:
    """A pattern matching any of `strings`, longest first; None for none."""
    ordered = sorted(set(strings), key=lambda t: (-len(t), t))
    return regex.compile("|".join(regex.escape(t) for t in ordered)) if ordered else None


def from_gguf_vocab(
    tokens: Sequence[str],
    scores: Sequence[float],
    token_types: Sequence[int],
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    unk_id: int | None = None,
    add_bos: bool = True,
    add_space_prefix: bool = False,
) -> SentencePieceTokenizer:
    """The tokenizer of GGUF metadata with `tokenizer.ggml.model == "llama"` (merges by score)."""
    if add_space_prefix:
        raise UserError(
            "this GGUF's SentencePiece tokenizer puts a space before the text (tokenizer.ggml.add_space_prefix); "
            "only tokenizers without one (Gemma's) are supported"
        )
    return SentencePieceTokenizer(
        tokens, token_types, scores, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, unk_id=unk_id, add_bos=add_bos
    )
