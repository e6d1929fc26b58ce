"""Loading any model by one name: `load_model(spec) -> LoadedModel`.

`spec` may be, in this order:
- a path: one of our model folders (config.json with "family" + model.safetensors + tokenizer), a Hugging Face
  folder (config.json with "model_type" + safetensors + tokenizer files), or a .gguf file;
- a registered model name (weights/registry.py, e.g. "gpt2", "smollm2-135m-instruct"), fetched when needed;
- a model preset name (e.g. "gpt2-124m"): random weights from a fixed seed, for benchmarks and tests;
- a Hugging Face Hub id ("openai-community/gpt2-medium"), downloaded through huggingface_hub's cache.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmscratch.tokenizer import Tokenizer, load_tokenizer
from llmscratch.utils import UserError
from llmscratch.weights.shapes import checked_config

PRESET_SEED = 0


@dataclass
class LoadedModel:
    """A model ready to use (eval mode), with its tokenizer (None when it has none) and chat template."""

    model: Any  # llmscratch.model.LanguageModel
    tokenizer: Any  # llmscratch.tokenizer.Tokenizer | None
    name: str
    chat_template: str | None = None
    source: str = ""

    @property
    def random_weights(self) -> bool:
        """True for a preset: weights from a seed, not trained."""
        return self.source.startswith("preset:")


def load_model(
    spec: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    progress: bool = True, quantize: str | None = None,
) -> LoadedModel:
    """Load the model `spec` names (see the module docstring) onto `device` (default CPU), float32 unless `dtype`;
    `progress`: bars while fetching and dequantizing; `quantize`: "int8" or "int4" weights for every block
    Linear and the head (model/quant.py; a folder saved quantized loads as it was saved), or "gguf": a GGUF
    file's own quantized blocks kept as they are (weights/gguf_quant.py)."""
    if quantize in ("int8", "int4") and dtype not in (None, torch.float32):
        raise UserError(f"{quantize} weights run with float32 activations: use dtype=float32, the default (the "
                        "weights are what shrinks)", params="dtype")
    paused = gc.isenabled()
    gc.disable()  # loading makes ~10^5 small objects (a vocabulary, merges): each collection walked them all
    try:
        loaded = _load_model(spec, device, dtype, progress, quantize == "gguf")
        if quantize:
            from llmscratch.model.quant import quantize_loaded

            quantize_loaded(loaded.model, quantize)
    finally:
        if paused:
            gc.enable()
    return loaded


def _load_model(spec, device, dtype, progress: bool, gguf_blocks: bool = False) -> LoadedModel:
    from llmscratch.model import PRESETS
    from llmscratch.weights.registry import MODELS, fetch

    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        return load_path(path, path.resolve().name, device, dtype, progress=progress, gguf_blocks=gguf_blocks)
    if text in MODELS:
        return load_path(fetch(text, progress=progress), text, device, dtype, f"registry:{text}", progress,
                         gguf_blocks)
    if text in PRESETS:
        return load_preset(text, device, dtype)
    if _looks_like_hub_id(text):
        from llmscratch.weights.hf import hub_download

        return load_path(hub_download(text), text, device, dtype, f"hub:{text}", progress)
    check_model_name(text)
    raise AssertionError("unreachable")


def check_model_name(spec: str | os.PathLike) -> None:
    """A UserError unless `spec` names a model `load_model` can look for: an existing file or folder, a registered
    model, a preset or a Hugging Face Hub id (checked without loading or downloading anything)."""
    from llmscratch.model import PRESETS
    from llmscratch.weights.registry import MODELS

    text = os.fspath(spec)
    if Path(text).expanduser().exists() or text in MODELS or text in PRESETS or _looks_like_hub_id(text):
        return
    if _hub_id_shaped(text):  # and ./owner is a folder here
        owner = text.split("/")[0]
        raise UserError(f"no file or folder {text!r} (./{owner} is a folder here, so {text!r} is read as a path, "
                        "not as a Hugging Face Hub id: run from another folder to download that id)")
    raise UserError(
        f"unknown model {text!r}: not a file or folder, not a registered model ({', '.join(MODELS)}), not a "
        f"preset ({', '.join(PRESETS)}), not a Hugging Face Hub id (owner/name)"
    )


def load_path(
    path: str | os.PathLike, name: str, device=None, dtype=None, source: str | None = None, progress: bool = True,
    gguf_blocks: bool = False,
) -> LoadedModel:
    """A model from a local folder (ours or Hugging Face) or .gguf file (`gguf_blocks`: its quantized blocks kept)."""
    from llmscratch.weights.hf import is_hf_folder, load_hf_folder
    from llmscratch.weights.ours import is_checkpoint, load_checkpoint

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from llmscratch.weights.gguf import load_gguf

        g = load_gguf(path, device, dtype, progress=progress, keep_quantized=gguf_blocks)
        # a registered name or Hub id as the user gave it; a file by the name it carries
        return LoadedModel(g.model, g.tokenizer, name if source else g.name, g.chat_template, source or f"gguf:{path}")
    if path.is_dir() and is_checkpoint(path):
        model, tok, template = load_checkpoint(path, device, dtype)
        return LoadedModel(model, tok, name, template, source or f"ours:{path}")
    if path.is_dir() and is_hf_folder(path):
        model, tok, template = load_hf_folder(path, device, dtype)
        return LoadedModel(model, tok, name, template, source or f"hf:{path}")
    raise UserError(local_model_problem(path))


def local_model_problem(path: str | os.PathLike) -> str | None:
    """Why the file or folder `path` is not a model `load_path` can read, or None (checked without loading)."""
    from llmscratch.weights.hf import is_hf_folder
    from llmscratch.weights.ours import is_checkpoint

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf" or path.is_dir() and (is_checkpoint(path) or is_hf_folder(path)):
        return None
    if path.is_dir() and (path / "classifier.json").is_file():
        return (f"{path} is a classifier (classifier.json), not a language model: `llmscratch classify --model "
                f"{path}` uses it")
    if path.is_dir() and (path / "final").is_dir() and (path / "train_config.json").is_file():
        return f"{path} is a training run, not a model folder: its model is {path / 'final'}"
    if path.is_dir():
        return (f"{path} is not a model folder: it needs config.json (with 'family', ours; or 'model_type', Hugging "
                "Face) and safetensors weights")
    return f"{path} is not a model: give a model folder or a .gguf file"


def load_preset(
    name: str, device=None, dtype=None, seed: int = PRESET_SEED, with_tokenizer: bool = True
) -> LoadedModel:
    """A preset with random weights from `seed`, with a tokenizer (unless not `with_tokenizer`: benchmarks need
    none): GPT-2's for GPT-2's vocabulary, else one token per byte (`Tokenizer.bytes_only`)."""
    from llmscratch.model import build_model, get_config

    config = get_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
    tokenizer = None
    if with_tokenizer and config.family == "gpt2" and config.vocab_size == 50257:
        tokenizer = load_tokenizer("gpt2")
    elif with_tokenizer and config.vocab_size >= 257:
        tokenizer = Tokenizer.bytes_only(config.vocab_size)
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
    return LoadedModel(model, tokenizer, name, None, f"preset:{name}")


def model_config(spec: str | os.PathLike):
    """The config of a preset, a registered model, a model folder or a .gguf file, read without loading weights."""
    import json

    from llmscratch.model import PRESETS, config_from_dict, get_config
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if text in PRESETS and not path.exists():
        return get_config(text)
    if path.is_file() and path.suffix == ".gguf":
        from llmscratch.weights.gguf import config_from_gguf, open_gguf

        return checked_config(lambda: config_from_gguf(open_gguf(path)), str(path))
    if path.is_dir() and (path / "config.json").is_file():
        try:
            data = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path / 'config.json'} is not valid JSON: {e}") from None
        if isinstance(data, dict) and "family" in data:
            data = {k: v for k, v in data.items() if k != "quantization"}
            return checked_config(lambda: config_from_dict(data), str(path / "config.json"))
        from llmscratch.weights.hf import IMPORTERS, read_hf_config

        hf = read_hf_config(path)
        if hf["model_type"] not in IMPORTERS:
            raise UserError(f"{path}: Hugging Face model_type {hf['model_type']!r} is not supported")
        return checked_config(lambda: IMPORTERS[hf["model_type"]].config_from_hf(hf), str(path / "config.json"))
    if path.exists():
        raise UserError(local_model_problem(path) or f"{text!r} is not a model folder (config.json + weights) or a "
                        ".gguf file")
    return registered_config(text)


def registered_config(name: str):
    """The config of registered model `name` (fetched first when no copy is cached; no weights are loaded)."""
    from llmscratch.model import PRESETS
    from llmscratch.weights.registry import MODELS, fetch

    if name not in MODELS:
        raise UserError(f"{name!r} is neither a preset ({', '.join(PRESETS)}), a registered model "
                        f"({', '.join(MODELS)}), nor a model folder or .gguf file")
    return model_config(fetch(name))


def _hub_id_shaped(text: str) -> bool:
    """Written as a Hugging Face Hub id: owner/name."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _looks_like_hub_id(text: str) -> bool:
    """owner/name, where no local folder is called owner (then it is a mistyped path, not a download)."""
    return _hub_id_shaped(text) and not Path(text.split("/")[0]).is_dir()


__all__ = ["LoadedModel", "check_model_name", "load_model", "load_path", "load_preset", "model_config",
           "registered_config"]
