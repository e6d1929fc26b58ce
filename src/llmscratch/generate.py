"""Text generation for every model family: one loop (prefill, then one decode step per token), sampling,
stop conditions and streaming.

The loop knows nothing of GPT or Llama: it only calls `model(ids, cache, positions, pad_mask)` and
`model.new_cache(batch, max_len)`. Prompts of different lengths are left-padded and masked.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llmscratch.utils import UserError


@dataclass
class SamplingConfig:
    """How to pick each new token and when to stop. temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = field(default_factory=tuple)

    def validate(self) -> None:
        """Raise UserError for a setting that makes no sense, before any work starts."""
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop_strings):
            raise UserError("stop strings must not be empty")


@dataclass
class GenerationStats:
    """Filled in by a generation when passed as `stats`: counts and wall-clock times."""

    prompt_tokens: int = 0  # longest prompt (with padding, every row has this many slots)
    new_tokens: int = 0  # tokens produced, all rows together (rows stopped early still count until the end)
    seconds: float = 0.0  # from the start to the last token produced
    first_token_seconds: float = 0.0  # the prefill: time to the first new token

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from logits (B, vocab): greedy, or sampled with temperature, top-k and top-p."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= cfg.top_p  # mass before this token already reaches p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def check_fits(model, prompt_len: int, max_new_tokens: int) -> None:
    """Refuse, before any work, a request that would run past the model's context length."""
    ctx = model.config.context_length
    if prompt_len + max_new_tokens > ctx:
        raise UserError(
            f"the prompt ({prompt_len} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context length of {ctx} tokens; shorten the prompt or ask for fewer new tokens"
        )


@torch.inference_mode()
def generate_steps(
    model,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    use_cache: bool = True,
    stats: GenerationStats | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, (B,) per step, until max_new_tokens or every row has stopped.

    Rows that stopped (a stop id) keep being fed, but callers ignore what follows their stop.
    """
    cfg.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token (an empty prompt has nothing to continue)")
    vocab = model.config.vocab_size
    bad = [t for p in prompts for t in p if not 0 <= t < vocab]
    if bad:
        raise UserError(f"prompt token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1})")
    B, L = len(prompts), max(len(p) for p in prompts)
    check_fits(model, L, cfg.max_new_tokens)
    started = time.perf_counter()
    if stats is not None:
        stats.prompt_tokens = L
    if cfg.max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    total = L + cfg.max_new_tokens
    ids = torch.zeros(B, total, dtype=torch.long, device=device)
    pad_mask = torch.zeros(B, total, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):  # left padding
        ids[i, L - len(p) : L] = torch.tensor(list(p), dtype=torch.long)
        pad_mask[i, L - len(p) :] = True
    mask = pad_mask if not bool(pad_mask[:, :L].all()) else None
    slots = torch.arange(total, device=device)  # positions are views of this: no allocation per step
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    stop_ids = torch.tensor(list(cfg.stop_ids), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()  # no dropout while generating; the mode is restored afterwards
    try:
        cache = model.new_cache(B, total) if use_cache else None
        n = L
        for step in range(cfg.max_new_tokens):
            if cache is None:  # the whole sequence again, every step
                logits = _last_logits(model, ids[:, :n], None, None, None if mask is None else mask[:, :n])
            elif step == 0:  # prefill: the prompt fills slots 0..L-1 of the cache
                logits = _last_logits(model, ids[:, :L], cache, slots[:L], None if mask is None else mask[:, :L])
            else:  # decode: one token at slot n-1
                pm = None if mask is None else mask[:, :n]
                logits = _last_logits(model, ids[:, n - 1 : n], cache, slots[n - 1 : n], pm)
            nxt = sample_next(logits, cfg, generator)  # (B,)
            ids[:, n] = nxt
            n += 1
            if stats is not None:
                stats.new_tokens += B
                stats.seconds = time.perf_counter() - started
                if step == 0:
                    stats.first_token_seconds = stats.seconds
            yield nxt
            if len(stop_ids):
                done |= torch.isin(nxt, stop_ids)
                if bool(done.all()):
                    return
    finally:
        model.train(was_training)


def _last_logits(model, ids, cache, positions, pad_mask) -> torch.Tensor:
    """Logits of the last position only, (B, vocab): the output head runs on one row per sequence."""
    h = model.hidden_states(ids, cache, positions, pad_mask)  # (B, T, emb)
    return model.head(h[:, -1])  # (B, vocab)


def _stop_index(text: str, stop_strings: Sequence[str]) -> int:
    """Index of the first stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(hits) if hits else -1


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    use_cache: bool = True,
    tokenizer=None,
    stats: GenerationStats | None = None,
) -> list[list[int]]:
    """New token ids for each prompt (batch), each cut at its first stop id (excluded) or stop string.

    Stop strings need `tokenizer` (to see text); the ids returned stop before the token that completed one.
    """
    return [kept for kept, _ in _generate_rows(model, prompts, cfg, use_cache, tokenizer, stats)]


def _generate_rows(
    model, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, use_cache: bool, tokenizer, stats=None
) -> list[tuple[list[int], list[int]]]:
    """For each prompt: (ids kept, [the token that completed a stop string] or [])."""
    if cfg.stop_strings and tokenizer is None:
        raise UserError("stop strings need a tokenizer")
    out: list[list[int]] = [[] for _ in prompts]
    completing: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    stop_ids = set(cfg.stop_ids)
    for nxt in generate_steps(model, prompts, cfg, use_cache, stats):
        for i, t in enumerate(nxt.tolist()):
            if stopped[i]:
                continue
            if t in stop_ids:
                stopped[i] = True
                continue
            out[i].append(t)
            if cfg.stop_strings and _stop_index(_tail_text(tokenizer, out[i], cfg.stop_strings), cfg.stop_strings) >= 0:
                stopped[i] = True
                completing[i].append(out[i].pop())
        if all(stopped):
            break
    return list(zip(out, completing))


def _tail_text(tokenizer, ids: list[int], stop_strings: Sequence[str]) -> str:
    """The text of the last tokens, enough of them to contain any stop string."""
    n = 4 * max(len(s) for s in stop_strings) + 4
    return tokenizer.decode(ids[-n:])


def stream_text(
    model,
    tokenizer,
    prompt_ids: Sequence[int],
    cfg: SamplingConfig,
    use_cache: bool = True,
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """Yield text increments of one generation. Never splits a multi-byte character; stops before a stop string
    and at the tokenizer's EOS."""
    cfg = _with_eos(cfg, tokenizer)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stop_ids = set(cfg.stop_ids)
    pending = ""  # text held back: it may be the start of a stop string
    hold = max((len(s) for s in cfg.stop_strings), default=1) - 1
    for nxt in generate_steps(model, [prompt_ids], cfg, use_cache, stats):
        t = int(nxt[0])
        if t in stop_ids:
            break
        pending += decoder.decode(tokenizer.token_bytes(t))
        if cfg.stop_strings:
            cut = _stop_index(pending, cfg.stop_strings)
            if cut >= 0:
                if pending[:cut]:
                    yield pending[:cut]
                return
            keep = _held_suffix(pending, cfg.stop_strings, hold)
            emit, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
        else:
            emit, pending = pending, ""
        if emit:
            yield emit
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def _held_suffix(text: str, stop_strings: Sequence[str], hold: int) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    for k in range(min(hold, len(text)), 0, -1):
        suffix = text[-k:]
        if any(s.startswith(suffix) for s in stop_strings):
            return k
    return 0


def generate_text(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    cfg: SamplingConfig,
    use_cache: bool = True,
    stats: GenerationStats | None = None,
) -> list[str]:
    """Generated text (without the prompt) for each prompt string; stops at the tokenizer's EOS by default."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if any(not p for p in prompts):
        raise UserError("the prompt is empty; give some text to continue")
    encoded = [tokenizer.encode(p, allowed_special="all") for p in prompts]
    rows = _generate_rows(model, encoded, _with_eos(cfg, tokenizer), use_cache, tokenizer, stats)
    texts = [tokenizer.decode(kept + completing) for kept, completing in rows]
    if cfg.stop_strings:  # the text ends where the stop string starts, inside a token or not
        texts = [t[:i] if (i := _stop_index(t, cfg.stop_strings)) >= 0 else t for t in texts]
    return texts


def _with_eos(cfg: SamplingConfig, tokenizer) -> SamplingConfig:
    """`cfg` with the tokenizer's end-of-sequence id added to its stop ids (when it has one)."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None or eos in cfg.stop_ids:
        return cfg
    return dataclasses.replace(cfg, stop_ids=(*cfg.stop_ids, eos))
