"""Classifier folders (written by `llmscratch finetune classify`, read by `llmscratch classify`).

    FOLDER/classifier.json         format, version, base model reference, labels, max length, what was trained
                                   (a TrainableSpec), a fingerprint of the base weights, pad id, dtype
    FOLDER/classifier.safetensors  only the tensors that differ from the base model (the trainable ones)

Loading rebuilds the base model through `llmscratch.weights.load_model`, adds the head and the trainable set,
checks that the frozen weights are the ones trained on (the fingerprint), then puts the trained tensors in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmscratch.model.heads import TrainableSpec, add_classifier_head, set_trainable
from llmscratch.model.lora import DEFAULT_TARGETS, merge_lora
from llmscratch.utils import UserError, atomic_path, atomic_write_text, pick_device
from llmscratch.weights import load_model
from llmscratch.weights.ours import FUSED_LAYERS, upgrade_state_dict

CLASSIFIER_FORMAT = "llmscratch-classifier"
CLASSIFIER_VERSION = 1
CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.safetensors"


@dataclass
class ClassifierInfo:
    """What `classifier.json` records: enough to rebuild the classifier from its base model."""

    base_model: str  # load_model spec: registry name, preset, or absolute path
    label_names: list[str]
    max_length: int
    trainable: dict  # TrainableSpec.to_dict()
    base_fingerprint: str
    pad_id: int
    tokenizer: str  # where the tokenizer comes from (the base model's)
    dtype: str = "float32"
    format: str = CLASSIFIER_FORMAT
    version: int = CLASSIFIER_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def spec(self) -> TrainableSpec:
        d = dict(self.trainable)
        d["lora_targets"] = tuple(d.get("lora_targets", DEFAULT_TARGETS))
        return TrainableSpec(**d)


@dataclass
class LoadedClassifier:
    """A classifier ready to predict (eval mode, LoRA merged): its model, tokenizer and info."""

    model: Any
    tokenizer: Any
    info: ClassifierInfo


def base_fingerprint(model: nn.Module, exclude: Sequence[str]) -> str:
    """A sha256 over names, shapes and an evenly spaced sample of the values of every parameter not in `exclude`.

    Cheap (a few thousand values per tensor) and enough to tell one base model's weights from another's.
    """
    skip = set(exclude)
    kept = [(n, p) for n, p in model.named_parameters() if n not in skip and not n.endswith((".lora_A", ".lora_B"))]
    h = hashlib.sha256()
    for name, p in sorted(stored_apart(kept), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].to("cpu", torch.float32)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def stored_apart(named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """Fused layers' tensors split back into the parts they were before fusing (blocks.0.ffn.gate_up.weight ->
    blocks.0.ffn.gate.weight, blocks.0.ffn.up.weight), so that a fingerprint stays what it was then."""
    out = []
    for name, p in named:
        fused = next((f for f in FUSED_LAYERS if f".{f}." in name), None)
        if fused is None:
            out.append((name, p))
            continue
        parts = FUSED_LAYERS[fused]
        out += [(name.replace(f".{fused}.", f".{part}."), t) for part, t in zip(parts, p.chunk(len(parts)))]
    return out


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that fine-tuning changes (those with requires_grad), as contiguous CPU tensors."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def write_classifier_info(folder: str | Path, info: ClassifierInfo) -> None:
    """`classifier.json` of `folder`, atomically."""
    atomic_write_text(Path(folder) / CONFIG_FILE, json.dumps(asdict(info), indent=2) + "\n")


def save_classifier(model: nn.Module, folder: str | Path, info: ClassifierInfo) -> Path:
    """Write `classifier.json` and `classifier.safetensors` (the trainable tensors) into `folder`, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(trained_state(model), str(tmp), metadata={"format": CLASSIFIER_FORMAT})
    write_classifier_info(folder, info)
    return folder


def read_classifier_info(folder: str | Path) -> ClassifierInfo:
    """The `classifier.json` of a classifier folder (UserError when absent or not ours)."""
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).exists():
        raise UserError(f"classifier folder not found: {folder}")
    if not path.is_file():
        raise UserError(f"{folder} is not a classifier folder: no {CONFIG_FILE} (train one with llmscratch finetune "
                        "classify)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != CLASSIFIER_FORMAT:
        raise UserError(f"{path} is not an llmscratch classifier (no format {CLASSIFIER_FORMAT!r})")
    if d.get("version") != CLASSIFIER_VERSION:
        raise UserError(f"{path} has classifier format version {d.get('version')}, this llmscratch reads "
                        f"{CLASSIFIER_VERSION}")
    try:
        info = ClassifierInfo(**d)
        info.spec  # noqa: B018 (checks the "trainable" entry)
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # a field of the wrong shape
        raise UserError(f"{path} is damaged: {e}") from None
    if not isinstance(getattr(torch, str(info.dtype), None), torch.dtype):
        raise UserError(f"{path}: unknown dtype {info.dtype!r}")
    return info


def restore_trained(model: nn.Module, folder: str | Path, info: ClassifierInfo) -> None:
    """Put the tensors of `classifier.safetensors` into a model built as `info` says (head + trainable set)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}: its run stopped before the end; the "
                        "same `llmscratch finetune classify ... --resume` finishes it")
    tensors = upgrade_state_dict(load_file(str(path)))  # a classifier saved before gate and up were fused
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise UserError(f"{path} does not fit the classifier described by {CONFIG_FILE}: "
                        f"missing {missing[:4]}, unexpected {unknown[:4]}")
    with torch.no_grad():
        for name, t in tensors.items():
            if params[name].shape != t.shape:
                raise UserError(f"{path}: {name} has shape {tuple(t.shape)}, expected {tuple(params[name].shape)}")
            params[name].copy_(t)


def load_classifier(folder: str | Path, device=None, quantize: str | None = None) -> LoadedClassifier:
    """Rebuild a classifier saved by `save_classifier` (its base model is loaded through `load_model`);
    `quantize`: "int8" or "int4" weights afterwards, as `--quantize` does (model/quant.quantize_loaded: every
    block Linear with the trained ones, and the class head)."""
    info = read_classifier_info(folder)
    loaded = load_model(info.base_model, device=pick_device(device), dtype=getattr(torch, info.dtype))
    model = loaded.model
    add_classifier_head(model, info.num_classes)
    set_trainable(model, info.spec)
    fingerprint = base_fingerprint(model, exclude=[n for n, p in model.named_parameters() if p.requires_grad])
    if fingerprint != info.base_fingerprint:
        raise UserError(
            f"the base model {info.base_model!r} has other weights than the one this classifier was trained on "
            "(fingerprint mismatch); load the same base model (same file, same preset seed)"
        )
    restore_trained(model, folder, info)
    merge_lora(model)  # inference only: fold the adapters into the weights (no extra matmuls)
    if quantize:
        from llmscratch.model.quant import quantize_loaded

        quantize_loaded(model, quantize)
    return LoadedClassifier(model.eval(), loaded.tokenizer, info)
