"""Training a byte-level BPE vocabulary from text.

The text is pre-tokenized (special tokens are cut out first and never learned), and each distinct chunk is
kept once with its count. Every chunk starts as its UTF-8 bytes (ids 0..255 = byte values). Then, until
the vocabulary is full, the most frequent adjacent pair of tokens (counted over all chunks, weighted by
chunk count) becomes a new token and every occurrence is replaced, left to right.

Tie rule: among pairs with the same count, the pair with the smaller left id wins, then the smaller right
id. Byte tokens have the byte's value as id and merged tokens get ids in creation order, so ties go to
the pair made of lower bytes / older tokens. The result does not depend on hash order or on the order of
the text's chunks.

Counting is incremental: a pair -> chunks index finds the chunks a merge touches, only their pair counts
change, and a heap with lazy deletion yields the next best pair (entries whose count changed are skipped).
A pair of equal tokens counts every position ("aaa" has two (a, a) pairs) while merging replaces them
left to right, as in minbpe and Hugging Face tokenizers.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex
from tqdm import tqdm

from llmscratch.tokenizer.bpe import Tokenizer
from llmscratch.tokenizer.pretokenize import PreTokenizer, get_pre_tokenizer


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    """`word` with every (a, b) pair, left to right, replaced by `new`."""
    out = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def count_chunks(text: str, pre_tokenizer: PreTokenizer, special_tokens: Iterable[str] = ()) -> Counter:
    """How often each pre-tokenized chunk occurs in `text`, special tokens left out."""
    specials = sorted(set(special_tokens), key=lambda t: (-len(t), t))
    pieces = regex.split("|".join(map(regex.escape, specials)), text) if specials else [text]
    counts: Counter = Counter()
    for piece in pieces:
        counts.update(pre_tokenizer.split(piece))
    return counts


def train(
    text: str,
    vocab_size: int,
    special_tokens: Iterable[str] = (),
    pre: str | PreTokenizer = "gpt2",
    min_frequency: int = 1,
    progress: bool = False,
) -> Tokenizer:
    """A byte-level BPE tokenizer with `vocab_size` tokens learned from `text`.

    The vocabulary is the 256 byte tokens, the learned merges, then `special_tokens` (in the given order,
    ids after the merges; "<|endoftext|>" becomes `eos_id`). Merging stops early when no pair occurs at
    least `min_frequency` times; the tokenizer is then smaller than asked (see its `vocab_size`).
    """
    specials = list(dict.fromkeys(special_tokens))
    if any(not t for t in specials):
        raise ValueError("a special token must not be empty: the empty string would match between every two "
                         "characters")
    n_regular = vocab_size - len(specials)
    if n_regular < 256:
        raise ValueError(
            f"vocab size {vocab_size} is too small: it needs 256 byte tokens + {len(specials)} special "
            f"token(s) = at least {256 + len(specials)}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, not {min_frequency}")
    pre_tok = pre if isinstance(pre, PreTokenizer) else get_pre_tokenizer(pre)

    counts = count_chunks(text, pre_tok, specials)
    words: list[list[int]] = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs: list[int] = list(counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    bytes_to_id = {tok: i for i, tok in enumerate(vocab)}
    merges: list[tuple[int, int]] = []
    bar = tqdm(total=n_regular - 256, desc="BPE merges", unit="merge", disable=not progress)
    while len(vocab) < n_regular and heap:
        neg, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg:
            continue  # stale entry: the count changed after it was pushed
        if count < min_frequency:
            break
        merged_bytes = vocab[a] + vocab[b]
        new = bytes_to_id.get(merged_bytes)
        if new is None:  # the same bytes may already be a token, made from another pair
            new = len(vocab)
            vocab.append(merged_bytes)
            bytes_to_id[merged_bytes] = new
            bar.update(1)
        merges.append((a, b))

        changed: set[tuple[int, int]] = set()
        for wi in where.pop((a, b), ()):
            word = words[wi]
            merged = _merge_word(word, a, b, new)
            if len(merged) == len(word):
                continue  # stale index entry: this chunk no longer holds the pair
            f = freqs[wi]
            for pair in zip(word, word[1:]):
                pair_counts[pair] -= f
                changed.add(pair)
            for pair in zip(merged, merged[1:]):
                pair_counts[pair] += f
                where[pair].add(wi)
                changed.add(pair)
            words[wi] = merged
        pair_counts.pop((a, b), None)
        changed.discard((a, b))
        for pair in changed:
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, pair[0], pair[1]))
            else:
                del pair_counts[pair]
    bar.close()

    special_ids = {t: len(vocab) + k for k, t in enumerate(specials)}
    return Tokenizer(
        dict(enumerate(vocab)),
        merges,
        special_ids,
        pre_tokenizer=pre_tok,
        merge_rule="merges",
        eos_id=special_ids.get("<|endoftext|>"),
    )
