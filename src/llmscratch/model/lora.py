"""Low-rank adaptation (LoRA): a frozen linear layer plus a trainable low-rank update `(alpha / rank) * x @ A @ B`.

`apply_lora` wraps chosen linear layers of a model (by name pattern) in `LoRALinear`. A wrapped layer keeps its
`weight` and `bias` under the same names, so the model's state dict still matches the base model's, with the
adapter added as `<layer>.lora_A` (in, rank) and `<layer>.lora_B` (rank, out). B starts at zero: right after
wrapping the model computes exactly what it computed before. `merge_lora` folds the update into the weights
(W + (alpha / rank) * (A @ B)^T) for inference without extra cost; `unmerge_lora` takes it out again.
`lora_state_dict` gives the adapter (plus chosen modules such as a classifier head); weights/lora.py saves
and loads it as a safetensors file. `adapters_off(model)` runs the base model (every update skipped) inside a
`with` block, e.g. as the frozen reference of preference tuning.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.model.base import tied_names
from llmscratch.utils import UserError

# Every linear layer inside the transformer blocks: the attention and feed-forward projections of any family.
DEFAULT_TARGETS: tuple[str, ...] = ("blocks.*",)


class LoRALinear(nn.Module):
    """A frozen linear layer (`weight` (out, in), `bias`) plus the trainable update `scale * x @ A @ B`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = rank, float(alpha)
        self.scale = self.alpha / rank
        self.weight = base.weight  # the same Parameter objects: nothing is copied
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(self.in_features, rank, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(rank, self.out_features, device=dev, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as the book (and nn.Linear) do
        self.merged = False
        self.enabled = True  # False: the layer computes its base linear only (see `adapters_off`)

    def delta_weight(self) -> torch.Tensor:
        """The update in the layout of `weight`: scale * (A @ B)^T, (out, in)."""
        return self.scale * (self.lora_A @ self.lora_B).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged or not self.enabled:
            return y
        return y + self.scale * ((x @ self.lora_A) @ self.lora_B)  # (..., in) -> (..., rank) -> (..., out)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"
        )


# A fused layer also answers to the names of the layers it replaced, so older targets keep working: "ffn.gate"
# or "ffn.up" selects Llama's and Gemma's ffn.gate_up (the whole layer: gate and up rows both).
FUSED_ALIASES: dict[str, tuple[str, ...]] = {"gate_up": ("gate", "up")}


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether module `name` matches a pattern: the whole dotted name or a dotted suffix of it (glob syntax).

    "qkv" matches "blocks.3.attn.qkv"; "attn.*" matches every attention linear; "blocks.11.*" one block;
    "ffn.gate" matches "blocks.3.ffn.gate_up" (`FUSED_ALIASES`).
    """
    parent, _, last = name.rpartition(".")
    names = [name, *(f"{parent}.{alias}" if parent else alias for alias in FUSED_ALIASES.get(last, ()))]
    return any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n, "*." + p) for n in names for p in patterns)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(
    model: nn.Module, rank: int, alpha: float, targets: Sequence[str] = DEFAULT_TARGETS
) -> list[str]:
    """Wrap every nn.Linear whose name matches `targets` (see `name_matches`) in a `LoRALinear`, in place.

    The wrapped weights are frozen; other parameters keep their `requires_grad`. Returns the wrapped names.
    Raises UserError when nothing matches, or a match is a tied weight (merging would change its twin too).
    """
    if rank < 1:
        raise UserError(f"LoRA rank must be >= 1, got {rank}")
    if alpha <= 0:
        raise UserError(f"LoRA alpha must be > 0, got {alpha}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise UserError("this model already has LoRA layers")
    chosen = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and name_matches(n, targets)]
    if not chosen:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise UserError(
            f"no linear layer matches the LoRA targets {list(targets)}; linear layers look like: "
            + ", ".join(linears[:6])
        )
    shared = {id(model.get_parameter(name)) for name in tied_names(model).values()}
    tied = [n for n in chosen if id(model.get_submodule(n).weight) in shared]
    if tied:
        raise UserError(f"cannot put LoRA on tied weights: {', '.join(tied)} (untie or leave them out)")
    for name in chosen:
        _set_submodule(model, name, LoRALinear(model.get_submodule(name), rank, alpha))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight: W <- W + (alpha / rank) * (A @ B)^T (idempotent)."""
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora`: W <- W - (alpha / rank) * (A @ B)^T (idempotent)."""
    for m in lora_layers(model).values():
        m.unmerge()


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model` computes its base model: every LoRA update is skipped (nothing is copied).

    Raises UserError for merged adapters (their update is inside the weights) and for a model without adapters.
    """
    layers = list(lora_layers(model).values())
    if not layers:
        raise UserError("the model has no LoRA layers to switch off")
    if any(m.merged for m in layers):
        raise UserError("unmerge the LoRA layers (unmerge_lora) before switching them off")
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(layers, before):
            m.enabled = was


def lora_config(model: nn.Module) -> dict:
    """{"rank", "alpha", "layers"} of the model's adapters (one rank and alpha for all, as `apply_lora` makes)."""
    layers = lora_layers(model)
    if not layers:
        raise UserError("the model has no LoRA layers")
    first = next(iter(layers.values()))
    return {"rank": first.rank, "alpha": first.alpha, "layers": list(layers)}


def lora_state_dict(model: nn.Module, include: Sequence[str] = ("head",)) -> dict[str, torch.Tensor]:
    """The adapter tensors (`*.lora_A`, `*.lora_B`) plus every parameter of the modules named in `include`.

    Tensors are detached contiguous CPU copies, ready for safetensors.
    """
    layers = lora_layers(model)
    if any(m.merged for m in layers.values()):
        raise UserError("unmerge the LoRA layers (unmerge_lora) before taking their state")
    out = {}
    for name, p in model.named_parameters():
        if name.endswith((".lora_A", ".lora_B")) or any(name == i or name.startswith(i + ".") for i in include):
            out[name] = p.detach().to("cpu").contiguous().clone()
    return out


def count_lora_params(model: nn.Module) -> int:
    """Number of adapter parameters (A and B of every LoRA layer)."""
    return sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_layers(model).values())
