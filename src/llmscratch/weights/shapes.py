"""Checking named tensors from a file against the names and shapes a model expects."""

from __future__ import annotations

from collections.abc import Collection, Mapping

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
