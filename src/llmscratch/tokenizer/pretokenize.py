"""Pre-tokenization: how text is cut into chunks before BPE merges run inside each chunk.

Merges never cross a chunk boundary, so " the" and "the" can be different tokens but " the," is never one.
Each pre-tokenizer is one regular expression (the `regex` package, for Unicode classes like \\p{L}):

- "gpt2": GPT-2's pattern (contractions, optional space + letters, optional space + numbers, optional
  space + other symbols, whitespace runs that leave their last space to the next word).
- "smollm": every digit on its own, then GPT-2's pattern on the text between digits (Hugging Face's
  Sequence[Digits(individual_digits=True), ByteLevel], llama.cpp's "smollm"). Written as one equivalent
  pattern: digits are single matches, "optional space + numbers" is gone, and a whitespace run may end
  right before a digit.
- "llama-bpe": Llama-3's pattern (numbers in groups of at most three, case-insensitive contractions,
  a letter run may take one leading non-letter).

A pattern read from a Hugging Face Split pre-tokenizer that is none of these is kept as "custom": the text
between its matches becomes chunks too (Split's "Isolated" behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SMOLLM_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

KNOWN_PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "smollm": SMOLLM_PATTERN, "llama-bpe": LLAMA3_PATTERN}
# Other names for the same pre-tokenizers (llama.cpp's GGUF "tokenizer.ggml.pre" values and common spellings).
ALIASES: dict[str, str] = {"gpt-2": "gpt2", "llama3": "llama-bpe", "llama-v3": "llama-bpe"}
# Pre-tokenizers whose models were trained to emit a whole chunk as one token when it is in the vocabulary
# (Hugging Face's BPE "ignore_merges", set by llama.cpp for Llama-3).
IGNORE_MERGES_BY_DEFAULT = frozenset({"llama-bpe"})


@dataclass(frozen=True)
class PreTokenizer:
    """A named regular expression that cuts text into chunks.

    `keep_gaps`: also emit the text between matches (only needed for patterns that do not match every
    character; the known ones do). `add_prefix_space`: put a space before text that does not start with one
    (Hugging Face ByteLevel option, used by RoBERTa-style tokenizers).
    """

    name: str
    pattern: str
    keep_gaps: bool = False
    add_prefix_space: bool = False
    _compiled: regex.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = regex.compile(self.pattern)
        except regex.error as e:
            raise ValueError(f"pre-tokenizer {self.name!r}: invalid pattern {self.pattern!r}: {e}") from None
        object.__setattr__(self, "_compiled", compiled)

    def split(self, text: str) -> list[str]:
        """The chunks of `text`, in order; joined they give back `text` (plus the prefix space, if any)."""
        if self.add_prefix_space and text and not text.startswith(" "):
            text = " " + text
        if not self.keep_gaps:
            return self._compiled.findall(text)
        chunks: list[str] = []
        pos = 0
        for m in self._compiled.finditer(text):
            start, end = m.span()
            if start > pos:
                chunks.append(text[pos:start])
            if end > start:
                chunks.append(text[start:end])
            pos = end
        if pos < len(text):
            chunks.append(text[pos:])
        return chunks

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "pattern": self.pattern,
            "keep_gaps": self.keep_gaps,
            "add_prefix_space": self.add_prefix_space,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PreTokenizer:
        return cls(
            name=str(d["name"]),
            pattern=str(d["pattern"]),
            keep_gaps=bool(d.get("keep_gaps", False)),
            add_prefix_space=bool(d.get("add_prefix_space", False)),
        )


def canonical_name(name: str) -> str | None:
    """The known pre-tokenizer `name` refers to, or None."""
    name = ALIASES.get(name, name)
    return name if name in KNOWN_PATTERNS else None


def get_pre_tokenizer(name: str) -> PreTokenizer:
    """The pre-tokenizer called `name` ("gpt2", "smollm", "llama-bpe" or an alias such as "gpt-2")."""
    canon = canonical_name(name)
    if canon is None:
        known = ", ".join(sorted(KNOWN_PATTERNS))
        raise ValueError(f"unknown pre-tokenizer {name!r}; supported: {known}")
    return PreTokenizer(canon, KNOWN_PATTERNS[canon])


def from_pattern(pattern: str, add_prefix_space: bool = False) -> PreTokenizer:
    """A pre-tokenizer for a Split pattern: a known one when the pattern is known, else "custom"."""
    for name, known in KNOWN_PATTERNS.items():
        if pattern == known:
            return PreTokenizer(name, known, add_prefix_space=add_prefix_space)
    return PreTokenizer("custom", pattern, keep_gaps=True, add_prefix_space=add_prefix_space)
