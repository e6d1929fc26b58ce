"""Models: one file per architecture family, each with its config dataclass; presets looked up by exact name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from llmscratch.model.base import LanguageModel
from llmscratch.model.gemma import GEMMA_PRESETS, Gemma, GemmaConfig
from llmscratch.model.gpt import GPT, GPT_PRESETS, GPTConfig
from llmscratch.model.kv_cache import KVCache
from llmscratch.model.llama import LLAMA_PRESETS, Llama, LlamaConfig

FAMILIES: dict[str, tuple[type, type]] = {
    "gpt2": (GPTConfig, GPT), "llama": (LlamaConfig, Llama), "gemma3": (GemmaConfig, Gemma),
}
PRESETS: dict[str, object] = {**GPT_PRESETS, **LLAMA_PRESETS, **GEMMA_PRESETS}


def get_config(name: str, **overrides):
    """The config of preset `name` (exact name), with fields replaced by `overrides`."""
    from llmscratch.utils import UserError

    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], **overrides)


def build_model(config) -> LanguageModel:
    """A freshly initialised model of the family that `config` belongs to."""
    return FAMILIES[config.family][1](config)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict):
    """Rebuild a config saved by `config_to_dict` (unknown keys are an error naming them)."""
    family = d.get("family", "gpt2")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    cls = FAMILIES[family][0]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {family} config fields: {', '.join(sorted(unknown))}")
    return cls(**d)


def save_config(config, path: str | Path) -> None:
    from llmscratch.utils import atomic_write_text

    atomic_write_text(path, json.dumps(config_to_dict(config), indent=2) + "\n")


def load_config(path: str | Path):
    return config_from_dict(json.loads(Path(path).read_text()))


__all__ = [
    "FAMILIES", "GPT", "GPTConfig", "Gemma", "GemmaConfig", "KVCache", "LanguageModel", "Llama", "LlamaConfig",
    "PRESETS",
    "build_model", "config_from_dict", "config_to_dict", "get_config", "load_config", "save_config",
]
