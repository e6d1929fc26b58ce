"""What every model family shares: the forward contract, the cache factory and parameter counting."""

from __future__ import annotations

import itertools
import mmap
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from llmscratch.model.attention import StepContext, attention_mask, position_ids
from llmscratch.model.kv_cache import KVCache

_versions = itertools.count(1)
_tree_version = 0


def _changed(*_) -> None:
    global _tree_version
    _tree_version = next(_versions)  # a number never given before, also when threads race


for _register in (nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook,
                  nn.modules.module.register_module_module_registration_hook):
    _register(_changed)


def tree_version() -> int:
    """A number that changes whenever any module of this process registers or replaces a parameter, a buffer or a
    submodule (assignments included): what a model derived from its modules is still valid while it stays."""
    return _tree_version


class LanguageModel(nn.Module):
    """Base of every family: `model(ids, cache=None, positions=None, pad_mask=None, last_only=False) -> logits`.

    - ids (B, T) token ids.
    - positions: the slots these tokens occupy, (T,) for every row (default 0..T-1) or (B, T) per row (rows of
      one batch at different positions; needs a cache). Required with a cache.
    - pad_mask (B, S) bool, True for real tokens, over slots 0..S-1 with S >= the last position + 1 (left padding).
    - last_only: logits of the last position only, (B, vocab), instead of (B, T, vocab).
    - select (B, T) bool: logits of the selected positions only, (N, vocab) in row-major order (a loss over some
      tokens, e.g. the answers, skips the vocabulary head elsewhere: for a 262k-token vocabulary that is most of
      the work).
    Subclasses implement `hidden_states` (final-normed activations, (B, T, emb_dim)) with the `StepContext` of
    `_prepare`, and own `self.head`.
    """

    config: object
    head: nn.Linear

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
        last_only: bool = False,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.hidden_states(ids, cache, positions, pad_mask)  # (B, T, emb)
        if select is not None:
            return self.head(h[select])  # (N, vocab)
        return self.head(h[:, -1] if last_only else h)  # (B, vocab) or (B, T, vocab)

    def hidden_states(self, ids, cache=None, positions=None, pad_mask=None) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `max_len` tokens (default: the context length)."""
        c = self.config
        max_len = max_len or c.context_length
        if max_len > c.context_length:
            raise ValueError(f"max_len {max_len} exceeds the model's context length {c.context_length}")
        p = next(self.parameters())
        return KVCache(c.n_layers, batch, c.n_kv_heads, max_len, c.head_dim, dtype=p.dtype, device=p.device)

    def _prepare(
        self,
        ids: torch.Tensor,
        cache: KVCache | None,
        positions: torch.Tensor | None,
        pad_mask: torch.Tensor | None,
    ) -> StepContext:
        """Check the arguments; return the step's context for the blocks (rotary tables left to the family)."""
        T = ids.shape[1]
        if cache is not None and positions is not None and torch.compiler.is_compiling():
            return self._prepare_whole_cache(positions, cache, pad_mask)
        if positions is None:
            if cache is not None:
                raise ValueError("positions are required with a cache: the slots to write these tokens at")
            positions = torch.arange(T, device=ids.device)
            end = T  # known without reading the tensor (no device sync, no torch.compile graph break)
        else:
            if positions.dim() == 2 and positions.shape[0] == 1:
                positions = positions[0]  # one row: the same as shared positions
            if positions.dim() == 2 and (cache is None or positions.shape != ids.shape):
                shape = tuple(positions.shape)
                raise ValueError(f"per-row positions {shape} need a cache and the shape of ids {tuple(ids.shape)}")
            end = int(positions[..., -1].max()) + 1
        limit = cache.max_len if cache is not None else self.config.context_length
        if end > limit:
            raise ValueError(
                f"position {end - 1} is past the {'cache' if cache is not None else 'context'} length {limit}"
            )
        if cache is None and end != T:
            raise ValueError("without a cache, positions must be 0..T-1")
        mask, is_causal = attention_mask(positions, end, pad_mask)
        ctx = StepContext(positions, end, mask, is_causal, pad_mask, cache, position_ids(positions, pad_mask))
        if T == 1 and cache is not None and pad_mask is None and not self.training:  # a decode step
            ctx.row_slots = positions.reshape(-1).expand(ids.shape[0]).long().contiguous()  # (B,)
        return ctx

    def _prepare_whole_cache(self, positions: torch.Tensor, cache: KVCache, pad_mask) -> StepContext:
        """The step's context under torch.compile (gpt-fast's way): read every slot of the cache, masking those
        past each query, so that no length depends on the positions' values (no host read, no graph break, one
        graph for every step). The caller has checked the positions."""
        if positions.dim() == 2 and positions.shape[0] == 1:
            positions = positions[0]
        end = cache.max_len
        mask, _ = attention_mask(positions, end, pad_mask, shortcuts=False)
        ids_pos = position_ids(positions, pad_mask)
        return StepContext(positions, end, mask, False, pad_mask, cache, ids_pos, whole_cache=True)

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (shared tensors counted once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total


def tied_names(model: nn.Module) -> dict[str, str]:
    """{alias: first name} for parameters reachable under two names (a tied head)."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


class _SkipInPlace(TorchFunctionMode):
    """Turns in-place tensor calls (normal_, uniform_, zero_, fill_...) into no-ops: random init is skipped."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("_"):
            for a in (*args, *kwargs.values()):
                if isinstance(a, torch.Tensor):
                    return a
        return func(*args, **kwargs)


def meta_model(config) -> LanguageModel:
    """The model of `config` on the meta device: shapes only, no memory, no random init (fast for any size).

    For counting parameters and shapes; `empty_model` turns it into a skeleton to load weights into. Buffers
    that a model computes at init (rotary tables) are not computed.
    """
    from llmscratch.model import build_model

    with torch.device("meta"), _SkipInPlace():
        return build_model(config)


def empty_model(config, device: torch.device | str | None = None) -> LanguageModel:
    """The model of `config` with parameters allocated on `device` but not initialised: the one skeleton that
    weights are loaded into (`weights.ours.model_from_state_dict`). No random init, so fast for any size.

    Tied weights are tied again after allocation; buffers a model computes at init are recomputed by every
    submodule that has a `reset_tables()` method (rotary tables).
    """
    model = meta_model(config)
    tied = tied_names(model)
    model = model.to_empty(device=device or "cpu")
    for alias, first in tied.items():  # to_empty made two parameters of a tied one: tie them again
        owner, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(first))
    for m in model.modules():
        if callable(getattr(m, "reset_tables", None)):
            m.reset_tables()
    return model


@dataclass
class ModelSize:
    """What a model costs in memory, from its config."""

    params: int  # distinct parameters (a tied head counted once)
    params_read_per_token: int  # read to generate one token at batch 1 (embedding tables: one row each)
    kv_values_per_token: int  # keys + values stored per token per sequence (all layers)
    context_length: int
    window: int | None = None  # sliding-window layers attend to at most this many slots
    kv_values_per_token_local: int = 0  # the part of kv_values_per_token that belongs to sliding-window layers

    def weight_bytes(self, bytes_per_value: int) -> int:
        return self.params * bytes_per_value

    def bytes_read_per_token(self, bytes_per_value: int) -> int:
        return self.params_read_per_token * bytes_per_value

    def kv_cache_bytes(self, bytes_per_value: int, tokens: int | None = None, batch: int = 1) -> int:
        """KV cache size for `batch` sequences of `tokens` (default: the full context)."""
        return self.kv_values_per_token * (tokens or self.context_length) * batch * bytes_per_value

    def kv_cache_bytes_windowed(self, bytes_per_value: int, tokens: int | None = None, batch: int = 1) -> int:
        """KV cache size if sliding-window layers kept only their last `window` slots (a ring buffer)."""
        tokens = tokens or self.context_length
        local = self.kv_values_per_token_local
        kept = (self.kv_values_per_token - local) * tokens + local * min(tokens, self.window or tokens)
        return kept * batch * bytes_per_value


def model_size(model_or_config) -> ModelSize:
    """Sizes of a model (or of the model a config describes, built on the meta device)."""
    model = model_or_config if isinstance(model_or_config, nn.Module) else meta_model(model_or_config)
    c = model.config
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    read, seen = 0, set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        only_looked_up = id(p) in lookups and id(p) not in linear
        read += p.shape[-1] if only_looked_up else p.numel()
    per_layer = 2 * c.n_kv_heads * c.head_dim
    window = getattr(c, "sliding_window", None)
    n_local = sum(not c.is_global(i) for i in range(c.n_layers)) if window else 0
    return ModelSize(
        params=model.num_params(),
        params_read_per_token=read,
        kv_values_per_token=per_layer * c.n_layers,
        context_length=c.context_length,
        window=window,
        kv_values_per_token_local=per_layer * n_local,
    )


def set_weight_layout(model: nn.Module, transposed: bool = True) -> nn.Module:
    """Store every Linear weight in memory as (in, out) rows (`transposed`), or as torch's usual (out, in) rows.

    Names, shapes, values and tied weights stay the same: only the memory order changes (each parameter's
    `.data` is swapped in place). A batch-1 decode step multiplies one vector by every weight matrix, and on
    some CPUs (MKL on AMD EPYC, measured by `llmscratch bench generate`) that product streams an (in, out)
    matrix faster. For inference: training keeps the usual layout (gradient buckets expect it).
    """
    seen: set[int] = set()
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.Linear) or id(m.weight) in seen:
                continue
            seen.add(id(m.weight))
            w = m.weight
            if transposed and w.is_contiguous():
                w.data = w.data.t().contiguous().t()  # (out, in) shape, strides (1, out)
            elif not transposed and not w.is_contiguous():
                w.data = w.data.contiguous()
    return model


HUGE_PAGE = 2 << 20
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool:
    """True on Linux when a process may ask for transparent huge pages (the setting is "always" or "madvise")."""
    try:
        return sys.platform.startswith("linux") and "[never]" not in _THP_SETTING.read_text()
    except OSError:
        return False


def _dense(t: torch.Tensor) -> bool:
    """True when `t` covers its memory without gaps or overlaps in some order of its dimensions (contiguous, or
    transposed as `set_weight_layout` stores weights)."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return t.permute(order).is_contiguous()


def move_to_huge_pages(model: nn.Module, min_bytes: int = 1 << 16) -> int:
    """Copy the model's dense CPU parameters and buffers of `min_bytes` or more, in module order, into one memory
    region that Linux backs with 2 MB pages (transparent huge pages, asked for with madvise); returns the bytes
    moved (0 where huge pages are not available, or the region could not be made).

    A decode step reads every weight once, from memory: on 4 KB pages it needs a TLB entry (a page-table walk) per
    4 KB, and the CPU's prefetchers stop at each page's end. Measured on SmolLM2 (this project's 2-core AMD EPYC,
    two copies of one model alternating in one process): int8 steps 1.08-1.17x faster, float32 1.05x. Names,
    values, memory order and tied weights stay the same: each tensor's `.data` is swapped in place, as
    `set_weight_layout` does (tensors that are the same view of one memory stay one).
    """
    if not huge_pages_available():
        return 0
    groups: dict[tuple, list[torch.Tensor]] = {}  # one copy per distinct view (tied weights share it)
    for m in model.modules():
        for t in itertools.chain(m._parameters.values(), m._buffers.values()):
            if (t is not None and t.device.type == "cpu" and t.numel() * t.element_size() >= min_bytes
                    and _dense(t)):
                same = groups.setdefault((t.data_ptr(), t.dtype, tuple(t.shape), t.stride()), [])
                if all(u is not t for u in same):
                    same.append(t)
    sizes = [(ts[0].numel() * ts[0].element_size() + 63) // 64 * 64 for ts in groups.values()]  # 64-byte aligned
    total = sum(sizes)
    if total == 0:
        return 0
    try:
        region = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive as long as any view of it
        start = -whole.data_ptr() % HUGE_PAGE  # the first 2 MB boundary
        region.madvise(mmap.MADV_HUGEPAGE, start, total)  # before the first write: pages are made on first touch
    except (OSError, ValueError):  # no memory to map, or a system that refuses the advice: stay as we are
        return 0
    offset = start
    with torch.no_grad():
        for ts, size in zip(groups.values(), sizes):
            t = ts[0]
            flat = whole[offset : offset + t.numel() * t.element_size()].view(t.dtype)
            new = flat.as_strided(t.shape, t.stride())  # the same memory order as before
            new.copy_(t)
            for u in ts:
                u.data = new
            offset += size
    return total


def _packed_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The Linear's own forward, with a prepacked weight for 2..`rows` input rows (see `pack_linear_weights`)."""
    n = x.numel() // x.shape[-1]
    if not 1 < n <= self._packed_rows or x.dtype != self._packed_weight.dtype or torch.is_grad_enabled():
        return type(self).forward(self, x)  # one row: our float32 kernel (model.quant_kernel.Linear)
    return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight, self.bias, "none", [], "")


def can_pack_linear_weights(model: nn.Module) -> bool:
    """Whether `pack_linear_weights` applies: a CPU model and a torch built with oneDNN."""
    p = next(model.parameters(), None)
    return (
        p is not None and p.device.type == "cpu" and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def pack_linear_weights(model: nn.Module, rows: int = 8, packed: bool = True) -> nn.Module:
    """For batched inference on a CPU: every Linear also keeps its weight in oneDNN's blocked layout and
    multiplies inputs of 2..`rows` rows (a batched decode step) with it; one row and larger inputs (a
    prefill) still go through the Linear's own forward (one row: our float32 kernel, 2.2x faster than the
    packed product here; at 8 rows the packed one is 1.5x faster than ours). Parameters, names and state
    dicts are unchanged; `packed=False` undoes it.

    A decode step of 8 rows of gpt2-124m took 1.8x less time this way on this machine (MKL's matrix product
    is slow at 8 rows); one more copy of every Linear weight is held, and oneDNN keeps a kernel per input
    size (hence the bound on rows: its memory stays bounded). For weights that no longer change (serving):
    the packed copy does not follow later updates.
    """
    seen: set[int] = set()
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.Linear) or id(m) in seen:
                continue
            seen.add(id(m))
            if not packed:
                m.__dict__.pop("forward", None)
                m.__dict__.pop("_packed_weight", None)
                m.__dict__.pop("_packed_rows", None)
                continue
            m._packed_weight = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach().contiguous(), rows)
            m._packed_rows = rows
            m.forward = types.MethodType(_packed_linear_forward, m)
    return model
