"""LoRA adapter files: the adapter tensors (and chosen modules, e.g. a classifier head) in one safetensors file,
with the rank, alpha and wrapped layers in its metadata (key "llmscratch.lora")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llmscratch.model.lora import apply_lora, lora_config, lora_layers, lora_state_dict
from llmscratch.utils import UserError, atomic_path, check_input_file

_META_KEY = "llmscratch.lora"


def save_lora(model: nn.Module, path: str | Path, include: Sequence[str] = ("head",)) -> Path:
    """Write `lora_state_dict(model, include)` to a safetensors file (atomically), with rank/alpha/layers."""
    path = Path(path)
    meta = {_META_KEY: json.dumps(lora_config(model))}
    with atomic_path(path) as tmp:
        save_file(lora_state_dict(model, include), str(tmp), metadata=meta)
    return path


def load_lora(model: nn.Module, path: str | Path) -> list[str]:
    """Load an adapter file written by `save_lora` into `model`, applying LoRA first when it has none.

    Every tensor of the file must exist in the model with the same shape, and every adapter of the model must
    be in the file; otherwise a UserError names the difference. Returns the loaded names.
    """
    path = check_input_file(path, "LoRA adapter")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if _META_KEY not in meta:
        raise UserError(f"{path} is not a LoRA adapter file written by llmscratch (no {_META_KEY} metadata)")
    cfg = json.loads(meta[_META_KEY])
    if any(".ffn.gate.lora_" in n or ".ffn.up.lora_" in n for n in tensors):
        raise UserError(f"{path} holds adapters of separate ffn.gate and ffn.up layers, written before they were "
                        "fused into ffn.gate_up; train the adapter again (or merge it with the llmscratch that "
                        "wrote it)")
    if not lora_layers(model):
        apply_lora(model, cfg["rank"], cfg["alpha"], targets=[_glob_escape(n) for n in cfg["layers"]])
    params = dict(model.named_parameters())
    missing = [n for n in params if n.endswith((".lora_A", ".lora_B")) and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise UserError(
            f"{path} does not fit this model: "
            + (f"missing adapters {missing[:4]} " if missing else "")
            + (f"unknown tensors {unknown[:4]}" if unknown else "")
        )
    for name, t in tensors.items():
        if params[name].shape != t.shape:
            raise UserError(f"{path}: {name} has shape {tuple(t.shape)}, the model expects {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return list(tensors)


def _glob_escape(name: str) -> str:
    """A glob pattern matching exactly `name` (escapes glob metacharacters)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


