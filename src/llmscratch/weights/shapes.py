"""Checking what a file says about a model: named tensors against the names and shapes a model expects, and
the values of a model config."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch

from llmscratch.utils import UserError


def check_tensors(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    family: str,
    may_lack: Collection[str] = (),
    may_add: Mapping[str, tuple[int, ...]] | None = None,
    ignored_suffixes: tuple[str, ...] = (),
) -> None:
    """Raise UserError naming the first missing, misshapen or unexpected tensor of `tensors`.

    `may_lack`: expected names that may be absent (a tied copy). `may_add`: names not expected but tolerated
    with the given shape (a tied head stored anyway). Names ending in `ignored_suffixes` are skipped.
    """
    for name, shape in expected.items():
        if name not in tensors:
            if name in may_lack:
                continue
            raise UserError(f"{source}: tensor {name} is missing")
        if tuple(tensors[name].shape) != tuple(shape):
            raise UserError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")
    may_add = may_add or {}
    extra = sorted(n for n in tensors if n not in expected and n not in may_add and not n.endswith(ignored_suffixes))
    if extra:
        raise UserError(f"{source}: unexpected tensors for this {family} config: {', '.join(extra[:5])}")
    for name, shape in may_add.items():
        if name in tensors and tuple(tensors[name].shape) != tuple(shape):
            raise UserError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")


# Sizes every family has; each must be a whole number >= 1 (head_dim may be None: derived).
_SIZES = ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "head_dim")
MAX_CONTEXT = 1 << 21  # tokens: beyond any model we load (rotary tables of this length take gigabytes)


def checked_config(build: Callable[[], Any], source: str) -> Any:
    """The model config that `build()` makes from a file's values, checked (`check_config`): a value the config
    refuses (a type, a division by zero) is a UserError naming `source` too."""
    try:
        config = build()
    except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError) as e:
        if isinstance(e, UserError):
            if source in str(e):
                raise
            raise UserError(f"{source}: {e}") from None
        raise UserError(f"{source}: not a valid model config: {e}") from None
    check_config(config, source)
    return config


def check_config(config: Any, source: str) -> None:
    """Raise UserError for a model config value no model can have: sizes that are not whole numbers >= 1 (or a
    context beyond MAX_CONTEXT), numbers that are NaN, infinite or negative, a dropout of 1 or more, an epsilon or
    rotary base of 0, and a flag that is not true/false."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        bad = _bad_value(f.name, value, f.type)
        if bad:
            raise UserError(f"{source}: model config {f.name} = {value!r} is impossible: {bad}")
    if config.n_heads % config.n_kv_heads:
        raise UserError(f"{source}: model config n_heads ({config.n_heads}) must be a multiple of n_kv_heads "
                        f"({config.n_kv_heads})")


def _bad_value(name: str, value: Any, annotation: Any) -> str | None:
    """Why one config value is impossible, or None."""
    if isinstance(value, bool) or "bool" in str(annotation):
        return None if isinstance(value, bool) else "must be true or false"
    if name in _SIZES:
        if value is None and name == "head_dim":
            return None
        if not isinstance(value, int) or value < 1:
            return "must be a whole number >= 1"
        if name == "context_length" and value > MAX_CONTEXT:
            return f"beyond {MAX_CONTEXT:,} tokens"
        return None
    if isinstance(value, int):
        return None if value >= 0 else "must be >= 0"
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            return "must be a finite number >= 0"
        if "dropout" in name and value >= 1:
            return "must be below 1"
        if name.endswith(("eps", "theta")) and value == 0:
            return "must be above 0"
    return None
