"""Our own model folders: weights, config and tokenizer, never pickled.

    FOLDER/model.safetensors       every weight; a tied tensor stored once, its other names in the metadata
                                   ("aliases": {"head.weight": "tok_emb.weight"})
    FOLDER/config.json             our config dict (with "family"), see llmscratch.model.config_to_dict
    FOLDER/tokenizer.json          the tokenizer in our file format (Tokenizer.save), or
    FOLDER/tokenizer.ref.json      {"tokenizer": "gpt2"}: a tokenizer named, not stored
    FOLDER/chat_template.jinja     optional

The training loop writes the same layout for its final and best models. A folder is written beside its final
name and renamed into place, so a reader never sees half a folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from llmscratch.model import config_from_dict, config_to_dict
from llmscratch.model.base import LanguageModel, empty_model, tied_names
from llmscratch.tokenizer import load_tokenizer
from llmscratch.utils import UserError, atomic_folder, atomic_write_text
from llmscratch.weights.shapes import check_config, check_tensors, checked_config

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_REF = "tokenizer.ref.json"
CHAT_TEMPLATE = "chat_template.jinja"


def is_checkpoint(folder: str | os.PathLike) -> bool:
    """True for a folder holding our config.json (one with "family") and model.safetensors."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        return False
    try:
        return "family" in json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------- weights


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each shared tensor kept once: (tensors on CPU, contiguous; {alias: stored name})."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():  # a view into more memory (weights moved
            t = t.clone()  # to 2 MB pages): its own copy, as safetensors files hold no shared memory
        tensors[name] = t
    return tensors, aliases


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """All weights of `model` to one safetensors file (tied tensors once, their aliases in the metadata)."""
    from safetensors.torch import save_file

    tensors, aliases = model_tensors(model)
    save_file(tensors, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases)})


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, aliases (from our metadata) included; UserError if unreadable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: damaged 'aliases' metadata") from None
    for alias, stored in aliases.items():
        if stored not in tensors:
            raise UserError(f"{path}: alias {alias} points to a missing tensor {stored}")
        tensors[alias] = tensors[stored]
    return tensors


# Layers that older checkpoints stored apart and models now hold fused: fused name -> the parts, in row order.
FUSED_LAYERS = {"ffn.gate_up": ("ffn.gate", "ffn.up")}  # Llama's and Gemma's gate and up (before 2026-12)


def upgrade_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` in today's layout: the tensors of layers an older layout stored apart (`FUSED_LAYERS`, e.g.
    blocks.0.ffn.gate.weight and blocks.0.ffn.up.weight) concatenated row-wise under the fused name
    (blocks.0.ffn.gate_up.weight). Works for float weights and quantized buffers (qweight, scales, mins: one row
    per output); other tensors pass unchanged."""
    out = dict(state)
    for name in state:
        for fused, parts in FUSED_LAYERS.items():
            prefix, marker, suffix = name.rpartition(f".{parts[0]}.")
            if not marker or suffix.startswith("lora_"):
                continue
            names = [f"{prefix}.{part}.{suffix}" for part in parts]
            if all(n in out for n in names):
                out[f"{prefix}.{fused}.{suffix}"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def upgrade_layer_names(layers: list[str]) -> list[str]:
    """Layer names (a saved quantization's list) in today's layout: the parts of a fused layer become its name."""
    have, out = set(layers), []
    for name in layers:
        for fused, parts in FUSED_LAYERS.items():
            part = next((p for p in parts if name.endswith("." + p)), None)
            prefix = name[: -len(part) - 1] if part else ""
            if part and all(f"{prefix}.{p}" in have for p in parts):
                name = f"{prefix}.{fused}" if part == parts[0] else ""  # the other parts fold into the first
        if name:
            out.append(name)
    return out


def model_from_state_dict(
    config,
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LanguageModel:
    """A model of `config` holding `state` (our parameter names), in eval mode, float32 unless `dtype`.

    The one way weights enter a model (our folders, Hugging Face folders, GGUF files): an `empty_model` (no
    random init) filled from `state`. Every tensor is checked: a missing, misshapen or unexpected one is a
    UserError naming it. The tied head may be absent from `state`.
    """
    check_config(config, source)
    state = upgrade_state_dict(state)
    model = empty_model(config)
    tied = tied_names(model)
    expected = model.state_dict()
    check_tensors(state, {n: tuple(t.shape) for n, t in expected.items()}, source, config.family, may_lack=tied)
    full = {name: state.get(name, state.get(tied.get(name, ""))) for name in expected}
    with torch.no_grad():
        for name, p in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]:
            if full.get(name) is not None:
                p.copy_(full[name])
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    return model.eval()


def quantized_from_state_dict(config, spec, state: Mapping[str, torch.Tensor], source: str, device=None):
    """A model saved quantized (config.json's "quantization" entry `spec`, see model/quant.py) holding `state`;
    UserError for an unknown format or a missing, misshapen or unexpected tensor. Float parts stay float32."""
    from llmscratch.model.quant import FORMATS, quantized_skeleton

    known = (*FORMATS, "gguf")
    layers = spec.get("layers") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or spec.get("format") not in known or not isinstance(layers, (list, dict)):
        fmt = spec.get("format") if isinstance(spec, dict) else spec
        raise UserError(f"{source}: unknown quantization {fmt!r} (known: {', '.join(known)})")
    check_config(config, source)
    if isinstance(layers, list):  # format "gguf" lists each layer's own format under today's names already
        spec = {**spec, "layers": upgrade_layer_names(layers)}
    state = upgrade_state_dict(state)
    model = quantized_skeleton(empty_model(config), spec)
    tied = tied_names(model)
    expected = model.state_dict()
    check_tensors(state, {n: tuple(t.shape) for n, t in expected.items()}, source, config.family, may_lack=tied)
    with torch.no_grad():
        for name, t in expected.items():
            got = state.get(name, state.get(tied.get(name, "")))
            if got is not None and got.dtype != t.dtype and not (got.is_floating_point() and t.is_floating_point()):
                raise UserError(f"{source}: tensor {name} is {got.dtype}, expected {t.dtype}")
            if got is not None:
                t.copy_(got)
    return model.to(device=device or "cpu").eval()


# ---------------------------------------------------------------------------------------------- folders


def save_pretrained(
    model: LanguageModel, tokenizer_or_spec=None, folder: str | os.PathLike = "model", chat_template: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (+ its tokenizer: a Tokenizer object, or a spec such as "gpt2" stored as a reference) to
    `folder`, atomically. An existing `folder` is replaced only when it is one of our outputs, or with `overwrite`
    (`llmscratch.utils.atomic_folder`). Returns the folder."""
    folder = Path(folder)
    with atomic_folder(folder, overwrite) as tmp:
        save_weights(model, tmp / WEIGHTS)
        config = config_to_dict(model.config)
        if getattr(model, "quantization", None):
            config["quantization"] = model.quantization  # how to rebuild its QuantLinear layers (model/quant.py)
        atomic_write_text(tmp / CONFIG, json.dumps(config, indent=2) + "\n")
        write_tokenizer(tmp, tokenizer_or_spec)
        if chat_template:
            atomic_write_text(tmp / CHAT_TEMPLATE, chat_template)
    return folder


def write_tokenizer(folder: Path, tokenizer_or_spec=None) -> None:
    """The tokenizer beside the weights: a Tokenizer object as tokenizer.json; a spec ("gpt2", a path), None, or
    an object that cannot be saved as tokenizer.ref.json holding the reference (or null)."""
    if not hasattr(tokenizer_or_spec, "save"):
        ref = os.fspath(tokenizer_or_spec) if isinstance(tokenizer_or_spec, (str, os.PathLike)) else None
        atomic_write_text(folder / TOKENIZER_REF, json.dumps({"tokenizer": ref}) + "\n")
    else:
        tokenizer_or_spec.save(folder / TOKENIZER, vocab_view=False)


def load_tokenizer_of(folder: Path):
    """The tokenizer stored in (or named by) one of our folders, or None when it has none."""
    if (folder / TOKENIZER).is_file():
        return load_tokenizer(folder / TOKENIZER)
    if (folder / TOKENIZER_REF).is_file():
        try:
            ref = json.loads((folder / TOKENIZER_REF).read_text()).get("tokenizer")
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{folder / TOKENIZER_REF} is damaged") from None
        if ref is None:
            return None
        if not Path(ref).is_absolute() and (folder / ref).exists():  # a path relative to the folder
            ref = str(folder / ref)
        return load_tokenizer(ref)
    return None


def load_checkpoint(folder: str | os.PathLike, device=None, dtype=None):
    """One of our model folders -> (model, tokenizer or None, chat template or None)."""
    folder = Path(folder)
    data = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    quantization = data.pop("quantization", None) if isinstance(data, dict) else None
    config = checked_config(lambda: config_from_dict(data), str(folder / CONFIG))
    if quantization is not None:
        if dtype not in (None, torch.float32):
            raise UserError(f"{folder} holds {quantization.get('format', 'quantized')} weights, which run with "
                            "float32 activations: use dtype=float32, the default", params="dtype")
        model = quantized_from_state_dict(config, quantization, read_weights(folder / WEIGHTS),
                                          str(folder / WEIGHTS), device)
    else:
        model = model_from_state_dict(config, read_weights(folder / WEIGHTS), str(folder / WEIGHTS), device, dtype)
    template = (folder / CHAT_TEMPLATE).read_text() if (folder / CHAT_TEMPLATE).is_file() else None
    return model, load_tokenizer_of(folder), template
