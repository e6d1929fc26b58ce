"""Hugging Face model folders and Hub repositories, for every family: import (config.json + safetensors +
tokenizer files -> our model) and export (our model -> a folder `transformers` loads).

Each family maps names and layouts in its own module (hf_gpt2.py, hf_llama.py, hf_gemma.py) through four
functions, listed here by Hugging Face `model_type` (import) and by our config `family` (export):

    config_from_hf(hf_config: dict) -> our config          state_dict_from_hf(tensors, config, source) -> dict
    config_to_hf(config) -> dict                            state_dict_to_hf(model) -> {hf name: tensor}

Weights are read from safetensors only (model.safetensors, or shards listed in model.safetensors.index.json):
a pickled pytorch_model.bin is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from llmscratch.tokenizer import load_tokenizer
from llmscratch.tokenizer.files import read_gpt2_files
from llmscratch.tokenizer.hf_json import write_hf_tokenizer
from llmscratch.utils import LICENSE_FILES, UserError, atomic_folder, atomic_write_text
from llmscratch.weights import hf_gemma, hf_gpt2, hf_llama
from llmscratch.weights.shapes import checked_config


class Importer(NamedTuple):
    config_from_hf: Callable[[dict], Any]
    state_dict_from_hf: Callable[..., dict]


class Exporter(NamedTuple):
    config_to_hf: Callable[[Any], dict]
    state_dict_to_hf: Callable[[Any], dict]


# Hugging Face model_type -> importer.
IMPORTERS: dict[str, Importer] = {
    "gpt2": Importer(hf_gpt2.config_from_hf, hf_gpt2.state_dict_from_hf),
    "llama": Importer(hf_llama.config_from_hf, hf_llama.state_dict_from_hf),
    "gemma3_text": Importer(hf_gemma.config_from_hf, hf_gemma.state_dict_from_hf),
}
# Our config family -> exporter.
EXPORTERS: dict[str, Exporter] = {
    "gpt2": Exporter(hf_gpt2.config_to_hf, hf_gpt2.state_dict_to_hf),
    "llama": Exporter(hf_llama.config_to_hf, hf_llama.state_dict_to_hf),
    "gemma3": Exporter(hf_gemma.config_to_hf, hf_gemma.state_dict_to_hf),
}

# Files taken from a Hub repository: config, tokenizer, and safetensors weights only.
HUB_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja",
    *LICENSE_FILES,  # the model's terms travel with it (`export` copies them)
)


def is_hf_folder(folder: str | os.PathLike) -> bool:
    """True for a folder whose config.json names a Hugging Face `model_type`."""
    path = Path(folder) / "config.json"
    try:
        return path.is_file() and "model_type" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------- the Hub


def hub_download(repo_id: str, revision: str | None = None) -> Path:
    """A local snapshot of Hub repository `repo_id` (config, tokenizer, safetensors), through
    huggingface_hub's cache: a snapshot fetched before is used without network, and HF_HUB_OFFLINE=1 is
    honoured. UserError when it cannot be had."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("downloading from the Hugging Face Hub needs the huggingface_hub package") from None
    try:  # the cache first: no network at all when it is there
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES),
                                      local_files_only=True))
    except Exception:
        path = None
    if path is None or not list(path.glob("*.safetensors")):
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise UserError(f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
        try:
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES)))
        except Exception as e:  # network errors, unknown repository, gated repository
            first = (str(e).strip().splitlines() or ["no details"])[0][:200]
            raise UserError(
                f"{repo_id} is not a local file or folder, and it could not be downloaded as a Hugging Face Hub "
                f"id ({type(e).__name__}: {first}); check the path, or pass a local model folder"
            ) from None
    if not list(path.glob("*.safetensors")):
        raise UserError(f"Hub repository {repo_id} has no safetensors weights (pickled .bin files are not loaded)")
    return path


# ---------------------------------------------------------------------------------------------- import


def read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{path} is not a Hugging Face model config (no model_type)")
    return config


def read_hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors weights (one file, or the shards of an index)."""
    from llmscratch.weights.ours import read_weights

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise UserError(f"{index} is damaged: {e}") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = f" ({', '.join(pickled)} is pickled: convert it to safetensors first)" if pickled else ""
        raise UserError(f"{folder} has no safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(read_weights(folder / name))
    return tensors


def load_hf_tokenizer(folder: Path):
    """The folder's tokenizer: tokenizer.json, else GPT-2-style vocab.json + merges.txt; None when absent."""
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return read_gpt2_files(folder / "vocab.json", folder / "merges.txt")  # same formats as encoder.json/vocab.bpe
    return None


def read_chat_template(folder: Path) -> str | None:
    """chat_template.jinja, else tokenizer_config.json's "chat_template" (the default one of a list)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text()).get("chat_template")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def load_hf_folder(folder: str | os.PathLike, device=None, dtype=None):
    """A Hugging Face model folder -> (model in eval mode, tokenizer or None, chat template or None)."""
    from llmscratch.weights.ours import model_from_state_dict

    folder = Path(folder)
    hf_config = read_hf_config(folder)
    kind = hf_config["model_type"]
    if kind not in IMPORTERS:
        supported = ", ".join(IMPORTERS)
        raise UserError(f"{folder}: Hugging Face model_type {kind!r} is not supported (supported: {supported})")
    importer = IMPORTERS[kind]
    config = checked_config(lambda: importer.config_from_hf(hf_config), str(folder / "config.json"))
    state = importer.state_dict_from_hf(read_hf_tensors(folder), config, str(folder))
    model = model_from_state_dict(config, state, str(folder), device, dtype)
    return model, load_hf_tokenizer(folder), read_chat_template(folder)


# ---------------------------------------------------------------------------------------------- export


def export_hf(
    model, tokenizer, folder: str | os.PathLike, chat_template: str | None = None, overwrite: bool = False
) -> Path:
    """Write `model` (+ tokenizer files) as a Hugging Face folder that `transformers` loads with
    from_pretrained, atomically. An existing `folder` is replaced only when it is one of our outputs, or with
    `overwrite` (`llmscratch.utils.atomic_folder`). Returns the folder."""
    from safetensors.torch import save_file

    family = model.config.family
    if family not in EXPORTERS:
        raise UserError(f"exporting a {family!r} model to Hugging Face format is not supported")
    quantized = getattr(model, "quantization", None)
    if quantized:
        raise UserError(f"this model holds {quantized['format']} weights; the Hugging Face export writes float "
                        "weights: export the float model it was quantized from, or keep it in ours (format=ours)",
                        params="format")
    exporter = EXPORTERS[family]
    hf_config = exporter.config_to_hf(model.config)
    tensors = exporter.state_dict_to_hf(model)
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    hf_config["torch_dtype"] = str(floats[0] if floats else torch.float32).removeprefix("torch.")
    folder = Path(folder)
    with atomic_folder(folder, overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            for key in ("bos", "eos", "pad"):
                if getattr(tokenizer, f"{key}_id", None) is not None:
                    hf_config[f"{key}_token_id"] = getattr(tokenizer, f"{key}_id")
            write_hf_tokenizer(tokenizer, tmp, model.config.context_length, chat_template)
        atomic_write_text(tmp / "config.json", json.dumps(hf_config, indent=2) + "\n")
        generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id") if hf_config.get(k) is not None}
        atomic_write_text(tmp / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    return folder


def tensors_for_transformers(model) -> tuple[dict, Mapping[str, torch.Tensor]]:
    """(Hugging Face config dict, tensors) for `model`, for building a transformers model in memory."""
    exporter = EXPORTERS[model.config.family]
    return exporter.config_to_hf(model.config), exporter.state_dict_to_hf(model)
