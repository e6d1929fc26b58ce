"""Text generation for every model family: one loop (prefill, then one decode step per token), sampling,
stop conditions and streaming.

The loop knows nothing of GPT or Llama: it only calls `model(ids, cache, positions, pad_mask, last_only=True)`
and `model.new_cache(batch, max_len)`. Its step machinery (`DecodeBatch`) keeps rows of one batch at their
own positions: requests join between decode steps and leave as soon as they finish, each with its own
sampling settings, seed and stop ids; `generate` and the serving engine both run on it.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llmscratch.tokenizer import encode_prompt
from llmscratch.utils import UserError, derived_seed, plural

MIN_TEMPERATURE = 1e-6  # smallest temperature above 0: logits / it stay finite in float32


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
    repetition_penalty: float = 1.0  # > 1: tokens already in the prompt or the answer are less likely (CTRL's)

    def validate(self) -> None:
        """Raise UserError for a setting that makes no sense (out of range, NaN, infinite), before any work."""
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}", params="max_new_tokens")
        if not (math.isfinite(self.temperature) and (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE)):
            raise UserError(f"temperature must be >= 0 (0 means greedy), finite, and not between 0 and "
                            f"{MIN_TEMPERATURE:g} (logits divided by it overflow), got {self.temperature}",
                            params="temperature")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k must be >= 1, got {self.top_k}", params="top_k")
        if self.top_p is not None and not 0 < self.top_p <= 1:  # False for NaN too
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}", params="top_p")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch's generators take
            raise UserError(f"seed must be in -2**63..2**64-1, got {self.seed}", params="seed")
        if any(not s for s in self.stop_strings):
            raise UserError("stop strings must not be empty")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise UserError(f"repetition_penalty must be > 0 and finite (1: none), got {self.repetition_penalty}",
                            params="repetition_penalty")


@dataclass
class GenerationStats:
    """Filled in by a generation when passed as `stats`: counts and wall-clock times."""

    prompt_tokens: int = 0  # longest prompt
    new_tokens: int = 0  # tokens produced, all rows together (rows stopped early still count until the end)
    seconds: float = 0.0  # from the start to the last token produced
    first_token_seconds: float = 0.0  # the prefill: time to the first new token

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from logits (B, vocab): greedy, or sampled with temperature, top-k and top-p.

    Top-k and top-p look only at the most likely tokens (a top-k, not a sort of the whole vocabulary; for top-p
    alone `_nucleus`), and the draw is one uniform number per row through the cumulative probabilities (`_draw`).
    On SmolLM2's 49,152 tokens (2 threads) a sampled token costs about 0.2 ms, where torch.multinomial took
    1.1-1.4 ms and the whole-vocabulary sort of top-p 3-5 ms.
    """
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / cfg.temperature
    vocab = logits.shape[-1]
    top_k = vocab if cfg.top_k is None else min(cfg.top_k, vocab)
    top_p = 1.0 if cfg.top_p is None else cfg.top_p
    if top_k < vocab:
        values, ids = torch.topk(logits, top_k, dim=-1)  # (B, k) each, most likely first
        probs = values.softmax(dim=-1)  # renormalized over the top-k
    elif top_p < 1:
        probs, ids = _nucleus(logits.softmax(dim=-1), top_p)  # (B, m) each, most likely first
    else:
        return _draw(logits.softmax(dim=-1), generator)  # (B,)
    if top_p < 1:
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches top_p
        drop[:, 0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32)
        probs = probs.masked_fill(drop, 0.0)
    return ids.gather(-1, _draw(probs, generator)[:, None])[:, 0]  # (B,)


def penalize_repetition(logits: torch.Tensor, seen: Sequence[int], penalty: float) -> torch.Tensor:
    """logits (vocab,) with every token id in `seen` made less likely by `penalty` (Keskar et al. 2019, as
    transformers' repetition_penalty): a positive logit divided by it, a negative one multiplied. A new tensor."""
    ids = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)  # (n,)
    picked = logits[ids]
    out = logits.clone()
    out[ids] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens of each row of probs (B, vocab), most likely first, as many as top-p needs:
    (their probabilities, their ids), each (B, m). The top 64, then 8x more until they hold top_p of every row's
    mass: a token after them has at least that much mass before it, so top-p drops it."""
    vocab = probs.shape[-1]
    m = min(64, vocab)
    while True:
        top, ids = torch.topk(probs, m, dim=-1)
        if m == vocab or bool((top.sum(dim=-1) >= top_p).all()):
            return top, ids
        m = vocab if m * 8 >= vocab // 4 else m * 8  # a top-k of a quarter or more costs a whole sort anyway


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of probs (B, n) (rows need not sum to 1), drawn by inverse transform: a uniform u per
    row, the first index whose cumulative probability exceeds u times the row's total. Zero-probability entries
    are never drawn."""
    wide = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS has no float64
    cum = probs.to(wide).cumsum(dim=-1)  # (B, n); float64: the sum of 49k float32 terms keeps its tail
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=wide, device=probs.device)
    picked = torch.searchsorted(cum, u * cum[:, -1:], right=True)  # (B, 1)
    return picked[:, 0].clamp(max=probs.shape[-1] - 1)  # (B,)


def check_fits(model, prompt_len: int, max_new_tokens: int, limit: int | None = None,
               name: str = "max_new_tokens") -> None:
    """Refuse, before any work, a request that would run past the model's context length (or `limit` slots);
    `name`: what the caller calls max_new_tokens (a server's request field)."""
    ctx = model.config.context_length
    room, what = (ctx, "the model's context length") if limit is None or limit >= ctx else (limit, "the cache length")
    if prompt_len + max_new_tokens > room:
        raise UserError(
            f"the prompt ({plural(prompt_len, 'token')}) plus {name} ({max_new_tokens}) "
            f"exceeds {what} of {room} tokens; shorten the prompt or ask for fewer new tokens", params=(name,)
        )


def check_prompts(model, prompts: Sequence[Sequence[int]]) -> None:
    """Refuse empty prompts and token ids outside the model's vocabulary."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token (an empty prompt has nothing to continue)")
    vocab = model.config.vocab_size
    bad = [t for p in prompts for t in p if not 0 <= t < vocab]
    if bad:
        raise UserError(f"prompt token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1})")


@dataclass(eq=False)
class Request:
    """One sequence of a running batch: its prompt, settings, random generator and the tokens it produced."""

    prompt: list[int]
    cfg: SamplingConfig
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)  # produced so far (a final stop id included)
    finish: str | None = None  # once finished: "stop" (a stop id), "length" (max_new_tokens), "cancelled", "error"
    row: int = -1  # its cache row while in the batch

    @property
    def length(self) -> int:
        """Slots this sequence fills once its last token is fed: prompt + produced tokens."""
        return len(self.prompt) + len(self.tokens)


def decode_step(model, ids: torch.Tensor, cache, positions: torch.Tensor) -> torch.Tensor:
    """One decode step: the last logits (B, vocab) of tokens ids (B, 1) fed at slots positions (B, 1) of `cache`."""
    return model(ids, cache, positions, last_only=True)


def compile_decoding(model, enabled: bool = True):
    """Decode steps of `model` through torch.compile from now on (`enabled=False`: eager again); returns the model.

    The compiled step (`decode_step` under inductor, on a CPU its C++ backend) reads the whole cache with a mask
    (`LanguageModel._prepare_whole_cache`), so one graph serves every position. The first step compiles (about
    2 minutes for SmolLM2 on a busy 2-core machine) and each later one saves the per-op overhead (see
    docs/engine.md, "Per-step overhead"). Used by `DecodeBatch` for steps over all its rows (a batch of another
    size would compile again); the serving engine stays eager.
    """
    if not enabled:
        model.__dict__.pop("_compiled_decode_step", None)
    elif "_compiled_decode_step" not in model.__dict__:
        from llmscratch.model.quant_compile import use_compiled_ops

        use_compiled_ops(model)  # quantized layers: our kernel as custom ops, inside the compiled graph
        model.__dict__["_compiled_decode_step"] = torch.compile(decode_step, dynamic=False)
    return model


def compiled_decode_step(model):
    """The compiled `decode_step` of `model` (turning `compile_decoding` on if it is not)."""
    return compile_decoding(model).__dict__["_compiled_decode_step"]


class DecodeBatch:
    """The step machinery of the one generation loop, rows at their own positions.

    A request joins between steps (`join`): its prompt is prefilled into a free cache row (together with the
    requests joining at the same time with prompts of its length) and its first token sampled. Each `step`
    feeds every active row its last token at its own slot and samples the next one with the row's own
    settings and generator. A request that finishes (a stop id, max_new_tokens) or is cancelled (`leave`)
    frees its row at once. Active rows are kept in cache rows 0..n-1, so a step runs on exactly n rows.
    Without a cache (`use_cache=False`) each step runs the whole sequences again.
    """

    def __init__(self, model, max_batch: int, max_len: int, use_cache: bool = True):
        self.model, self.max_batch, self.max_len = model, max_batch, max_len
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(max_batch, max_len) if use_cache else None  # allocated once
        self.slots = torch.arange(max_len, device=self.device)  # prefill positions are views of this
        self.active: list[Request] = []  # active[i] lives in cache row i
        self._views: dict[int, object] = {}

    @property
    def free(self) -> int:
        return self.max_batch - len(self.active)

    def join(self, prompt: Sequence[int], cfg: SamplingConfig) -> Request:
        """Prefill `prompt` into a free row and sample its first token; returns the request (maybe finished)."""
        return self.join_many([prompt], [cfg])[0]

    def join_many(self, prompts: Sequence[Sequence[int]], cfgs: Sequence[SamplingConfig]) -> list[Request]:
        """Join several requests at once. Each prompt is prefilled on its own, with the call it would get alone:
        prefilling prompts of one length together was one call, but its products of more rows take other code
        paths (PyTorch's ops and matrix products instead of our row-by-row ones) whose last-bit differences,
        through int8 activations, changed quantized models' greedy answers (batched must equal solo)."""
        for prompt, cfg in zip(prompts, cfgs, strict=True):
            cfg.validate()
            check_prompts(self.model, [prompt])
            check_fits(self.model, len(prompt), cfg.max_new_tokens, self.max_len)
        if len(prompts) > self.free:
            raise RuntimeError(f"{len(prompts)} requests to join, {self.free} of the {self.max_batch} rows are free")
        reqs = [Request(list(p), c, self._generator(c.seed)) for p, c in zip(prompts, cfgs)]
        for req in reqs:
            if req.cfg.max_new_tokens == 0:
                req.finish = "length"
                continue
            ids = torch.tensor([req.prompt], dtype=torch.long, device=self.device)  # (1, L)
            row, L = len(self.active), len(req.prompt)
            if self.cache is None:
                logits = self.model(ids, last_only=True)  # (1, vocab)
            else:
                logits = self.model(ids, self.cache.rows(row, row + 1), self.slots[:L], last_only=True)
            req.row = row
            self.active.append(req)
            self._accept(req, self._sample([req], logits)[0])
        return reqs

    def _generator(self, seed: int | None) -> torch.Generator | None:
        return None if seed is None else torch.Generator(device=self.device).manual_seed(seed)

    def step(self) -> list[Request]:
        """One decode step: a new token for every active request (in `.tokens[-1]`); returns those requests.

        Those that finished have left the batch when this returns.
        """
        reqs = list(self.active)
        if not reqs:
            return []
        if self.cache is None:
            ids, pad_mask = self._whole_sequences(reqs)
            logits = self.model(ids, None, None, pad_mask, last_only=True)  # (n, vocab)
        else:
            ids = torch.tensor([[r.tokens[-1]] for r in reqs], dtype=torch.long)  # (n, 1)
            pos = torch.tensor([[r.length - 1] for r in reqs], dtype=torch.long)  # (n, 1) each row's own slot
            whole = len(reqs) == self.max_batch  # the compiled step (if any) is made for the whole cache
            step = self.model.__dict__.get("_compiled_decode_step", decode_step) if whole else decode_step
            logits = step(self.model, ids.to(self.device), self._rows(len(reqs)), pos.to(self.device))
        for req, t in zip(reqs, self._sample(reqs, logits)):
            self._accept(req, t)
        return reqs

    def leave(self, req: Request, reason: str = "cancelled") -> None:
        """Take `req` out of the batch now (its row is free for the next join); `reason` if not finished yet."""
        req.finish = req.finish or reason
        if req.row < 0:
            return
        i, last = req.row, len(self.active) - 1
        moved = self.active[last]  # the last row fills the gap: active rows stay 0..n-1
        if self.cache is not None and i != last:
            self.cache.move_row(last, i, moved.length)
        self.active[i], moved.row = moved, i
        self.active.pop()
        req.row = -1

    def _accept(self, req: Request, token: int) -> None:
        req.tokens.append(token)
        if token in req.cfg.stop_ids:
            self.leave(req, "stop")
        elif len(req.tokens) >= req.cfg.max_new_tokens:
            self.leave(req, "length")

    def _rows(self, n: int):
        """A cache view over rows 0..n-1 (made once per n)."""
        if n == self.max_batch:
            return self.cache
        if n not in self._views:
            self._views[n] = self.cache.rows(0, n)
        return self._views[n]

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> list[int]:
        """Next token of each request from its logits row (n, vocab), with its own settings and generator."""
        if any(r.cfg.repetition_penalty != 1 for r in reqs):
            logits = torch.stack([row if r.cfg.repetition_penalty == 1 else
                                  penalize_repetition(row, r.prompt + r.tokens, r.cfg.repetition_penalty)
                                  for row, r in zip(logits, reqs)])  # (n, vocab)
        greedy = logits.argmax(dim=-1).tolist() if any(r.cfg.temperature == 0 for r in reqs) else None
        return [
            greedy[i] if r.cfg.temperature == 0 else int(sample_next(logits[i : i + 1], r.cfg, r.generator)[0])
            for i, r in enumerate(reqs)
        ]

    def _whole_sequences(self, reqs: list[Request]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every request's prompt + tokens, left-padded: ids (n, W) and pad mask (n, W) (None without padding)."""
        rows = [r.prompt + r.tokens for r in reqs]
        W = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), W, dtype=torch.long)
        pad_mask = torch.zeros(len(rows), W, dtype=torch.bool)
        for i, r in enumerate(rows):  # left padding
            ids[i, W - len(r) :] = torch.tensor(r, dtype=torch.long)
            pad_mask[i, W - len(r) :] = True
        pad_mask = None if bool(pad_mask.all()) else pad_mask.to(self.device)
        return ids.to(self.device), pad_mask


@torch.inference_mode()
def generate_steps(
    model,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    use_cache: bool = True,
    stats: GenerationStats | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, (B,) per step, until max_new_tokens or every row has stopped.

    Each prompt joins one `DecodeBatch` (row i samples with seed `row_seed(cfg.seed, i)`); a row that stopped (a
    stop id) leaves the batch and repeats its stop id in what is yielded, which callers ignore.
    """
    cfg.validate()
    check_prompts(model, prompts)
    B, L = len(prompts), max(len(p) for p in prompts)
    check_fits(model, L, cfg.max_new_tokens)
    started = time.perf_counter()
    if stats is not None:
        stats.prompt_tokens = L
    if cfg.max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()  # no dropout while generating; the mode is restored afterwards
    try:
        batch = DecodeBatch(model, B, L + cfg.max_new_tokens, use_cache)
        reqs = batch.join_many(prompts, [_row_config(cfg, i) for i in range(B)])
        for step in range(cfg.max_new_tokens):
            if step:
                batch.step()
            nxt = torch.tensor([r.tokens[-1] for r in reqs], dtype=torch.long)  # (B,)
            if stats is not None:
                stats.new_tokens += B
                stats.seconds = time.perf_counter() - started
                if step == 0:
                    stats.first_token_seconds = stats.seconds
            yield nxt
            if not batch.active:
                return
    finally:
        model.train(was_training)


def row_seed(seed: int, i: int) -> int:
    """The seed of row (or choice) i of a request seeded `seed`: `seed` itself for row 0, for the others one derived
    from both (`utils.derived_seed`), so that no row repeats row 0 of a request seeded seed + i."""
    return seed if i == 0 else derived_seed(seed, f"row {i}")


def _row_config(cfg: SamplingConfig, i: int) -> SamplingConfig:
    """The settings of row i of a batch: its own seed (`row_seed`), so rows draw different samples."""
    return cfg if cfg.seed is None or i == 0 else dataclasses.replace(cfg, seed=row_seed(cfg.seed, i))


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
    cfg = with_eos(cfg, tokenizer)
    text = TextStream(tokenizer, cfg.stop_strings)
    stop_ids = set(cfg.stop_ids)
    for nxt in generate_steps(model, [prompt_ids], cfg, use_cache, stats):
        t = int(nxt[0])
        if t in stop_ids:
            break
        piece = text.feed(t)
        if piece:
            yield piece
        if text.stopped:
            return
    rest = text.finish()
    if rest:
        yield rest


class TextStream:
    """Text of one generated sequence, token by token: `feed(id)` returns the text that is safe to show now.

    Increments never split a multi-byte character. Text that may be the start of a stop string is held back;
    once a stop string appears, `stopped` is True and the text ends where it starts. `finish()` returns what is
    still held back when generation ends. (What `stream_text` and the server's streams are built on.)
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # text held back: it may be the start of a stop string
        self.hold = max((len(s) for s in self.stop_strings), default=1) - 1
        self.stopped = False

    def feed(self, token_id: int) -> str:
        """The text that `token_id` makes safe to show ("" once a stop string was hit)."""
        if self.stopped:
            return ""
        self.pending += self.decoder.decode(self.tokenizer.token_bytes(token_id))
        if not self.stop_strings:
            emit, self.pending = self.pending, ""
            return emit
        cut = _stop_index(self.pending, self.stop_strings)
        if cut >= 0:
            self.stopped = True
            emit, self.pending = self.pending[:cut], ""
            return emit
        keep = _held_suffix(self.pending, self.stop_strings, self.hold)
        emit, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return emit

    def finish(self) -> str:
        """The text still held back, at the end of generation ("" after a stop string)."""
        if self.stopped:
            return ""
        rest = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        return rest


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
    encoded = [encode_prompt(tokenizer, p) for p in prompts]  # BOS first for models that expect it (Gemma)
    rows = _generate_rows(model, encoded, with_eos(cfg, tokenizer), use_cache, tokenizer, stats)
    texts = [tokenizer.decode(kept + completing) for kept, completing in rows]
    if cfg.stop_strings:  # the text ends where the stop string starts, inside a token or not
        texts = [t[:i] if (i := _stop_index(t, cfg.stop_strings)) >= 0 else t for t in texts]
    return texts


def with_eos(cfg: SamplingConfig, tokenizer) -> SamplingConfig:
    """`cfg` with the tokenizer's end-of-sequence id added to its stop ids (when it has one)."""
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None or eos in cfg.stop_ids:
        return cfg
    return dataclasses.replace(cfg, stop_ids=(*cfg.stop_ids, eos))
