"""Heads and what fine-tuning trains: a class head in place of the vocabulary head, and the choice of trainable
parameters (the last N blocks, everything, or LoRA adapters), for any of our model families.

    add_classifier_head(model, num_classes)                       # classification
    apply_trainable(model, "lora", lora_rank=16, lora_alpha=16)   # any fine-tuning: freeze all but the choice
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from llmscratch.model.lora import DEFAULT_TARGETS, apply_lora, name_matches
from llmscratch.utils import UserError

TRAINABLE_HELP = "last-block | last-N (e.g. last-2) | all | lora"


@dataclass(frozen=True)
class TrainableSpec:
    """What fine-tuning updates. mode "blocks": the last `n_blocks` blocks + final norm + head; "all"; "lora":
    LoRA adapters (rank, alpha, on the linear layers matching `lora_targets`) + head."""

    mode: str = "blocks"
    n_blocks: int = 1
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS

    def to_dict(self) -> dict:
        return {**asdict(self), "lora_targets": list(self.lora_targets)}

    @property
    def label(self) -> str:
        if self.mode == "blocks":
            return "last-block" if self.n_blocks == 1 else f"last-{self.n_blocks}"
        return self.mode


def parse_trainable(
    text: str, lora_rank: int = 16, lora_alpha: float = 16.0, lora_targets: Sequence[str] | None = None
) -> TrainableSpec:
    """The spec of a trainable choice: "last-block", "last-N", "all" or "lora"."""
    text = text.strip().lower()
    targets = tuple(lora_targets) if lora_targets else DEFAULT_TARGETS
    if lora_rank < 1:
        raise UserError(f"lora_rank must be >= 1, got {lora_rank}", params="lora_rank")
    if not lora_alpha > 0:  # also refuses NaN
        raise UserError(f"lora_alpha must be > 0, got {lora_alpha}", params="lora_alpha")
    if text in ("last-block", "last-1"):
        return TrainableSpec("blocks", 1)
    if text == "all":
        return TrainableSpec("all", 0)
    if text == "lora":
        return TrainableSpec("lora", 0, lora_rank, float(lora_alpha), targets)
    m = re.fullmatch(r"last-(\d+)", text)
    if m and int(m.group(1)) >= 1:
        return TrainableSpec("blocks", int(m.group(1)))
    raise UserError(f"trainable must be {TRAINABLE_HELP}, got {text!r}", params="trainable")


def add_classifier_head(model: nn.Module, num_classes: int, seed: int | None = None) -> nn.Module:
    """Replace `model.head` (emb_dim -> vocab) by a fresh nn.Linear(emb_dim, num_classes) with bias, in place.

    The new head is untied from the token embedding; it sits on the model's device and dtype.
    """
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    old = model.head
    if seed is not None:
        torch.manual_seed(seed)
    model.head = nn.Linear(old.in_features, num_classes, bias=True).to(old.weight.device, old.weight.dtype)
    return model


def set_trainable(model: nn.Module, spec: TrainableSpec, train_head: bool = True) -> dict:
    """Freeze the model, then unfreeze what `spec` names (applying LoRA for mode "lora"), and the head when
    `train_head`. Returns {"trainable": label, "trainable_params", "total_params", "lora_layers"}."""
    blocks = model.blocks
    model.requires_grad_(spec.mode == "all")
    wrapped: list[str] = []
    if spec.mode == "blocks":
        if spec.n_blocks > len(blocks):
            raise UserError(f"trainable last-{spec.n_blocks}: the model has only {len(blocks)} blocks")
        for block in list(blocks)[-spec.n_blocks :]:
            block.requires_grad_(True)
        model.final_norm.requires_grad_(True)
    elif spec.mode == "lora":
        if train_head and name_matches("head", spec.lora_targets):
            raise UserError("the head is trained in full; leave it out of lora_targets", params="lora_targets")
        wrapped = apply_lora(model, spec.lora_rank, spec.lora_alpha, list(spec.lora_targets))
    elif spec.mode != "all":
        raise UserError(f"unknown trainable mode {spec.mode!r}")
    if train_head:
        model.head.requires_grad_(True)
    return {
        "trainable": spec.label,
        "trainable_params": model.num_params(trainable_only=True),
        "total_params": model.num_params(),
        "lora_layers": len(wrapped),
    }


def apply_trainable(
    model: nn.Module,
    trainable: str | TrainableSpec,
    lora_rank: int = 16,
    lora_alpha: float = 16.0,
    lora_targets: Sequence[str] | None = None,
    train_head: bool = True,
) -> dict:
    """Freeze all of `model` but `trainable` ("all", "lora", "last-block", "last-N" or a TrainableSpec) and, when
    `train_head`, its head; LoRA adapters are added for "lora". Returns the parameter summary of `set_trainable`."""
    spec = trainable if isinstance(trainable, TrainableSpec) else parse_trainable(trainable, lora_rank, lora_alpha,
                                                                                  lora_targets)
    return set_trainable(model, spec, train_head)
